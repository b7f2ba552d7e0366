"""Starvation: a writer behind overlapping readers, with bare flock(2) and with perflock's queue.

Three reader threads take the lock shared, hold it 20 ms and take it again at
once, offset so that one of them always holds it; a writer then asks for it
exclusively. With bare flock(2) Linux grants each new shared lock while only
shared locks are held, so the writer waits as long as the readers keep
overlapping (until a gap in Python's thread scheduling, or the cap, CAP_S).
With the queue, readers that arrive after the writer wait behind it.
"""

import fcntl
import os
import sys
import threading
import time

from benchlib import Setup

sys.path.insert(0, str(__import__("benchlib").REPO))
from holdingpen.lock.perflock import PerfLock  # noqa: E402

HOLD_S = 0.02
READERS = 3
CAP_S = 5.0


class BareFlock:
    def __init__(self, path, shared):
        self.path, self.op = path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        fcntl.flock(self.fd, self.op)

    def __exit__(self, *exc):
        os.close(self.fd)


def contest(make_lock):
    """(the writer's wait in s, reader acquisitions while it waited)."""
    stop = threading.Event()
    acquisitions = [0]

    def reader(offset_s):
        time.sleep(offset_s)
        while not stop.is_set():
            with make_lock(True):
                acquisitions[0] += 1
                time.sleep(HOLD_S)

    readers = [threading.Thread(target=reader, args=(i * HOLD_S / READERS,)) for i in range(READERS)]
    for r in readers:
        r.start()
    time.sleep(0.2)
    threading.Timer(CAP_S, stop.set).start()      # the cap: readers stop, the writer gets in
    before, start = acquisitions[0], time.monotonic()
    with make_lock(False):
        waited_s, during = time.monotonic() - start, acquisitions[0] - before
    stop.set()
    for r in readers:
        r.join()
    return waited_s, during


def main():
    with Setup() as s:
        bare = contest(lambda shared: BareFlock(str(s.lock), shared))
        queued = contest(lambda shared: PerfLock(shared, path=str(s.lock)))
    print(f"starvation: a writer behind {READERS} overlapping readers (each holds {HOLD_S * 1000:.0f} ms):")
    for name, (waited_s, during) in (("bare flock(2)", bare), ("perflock queue", queued)):
        capped = " (the cap: starved)" if waited_s >= CAP_S else ""
        print(f"  {name:<16} writer waited {waited_s * 1000:8.1f} ms{capped}, "
              f"{during} reader acquisitions meanwhile")


if __name__ == "__main__":
    main()
