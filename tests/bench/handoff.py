"""Hand-off: from one job's end to the next job's start, through perflock and through flock(1).

A queue of exclusive jobs forms behind a holder; each job stamps the time it
starts and ends (bash's $EPOCHREALTIME, no extra process). A hand-off is the
next job's start minus the previous job's end: the wrapper's exit, the wake-up
of the next waiter and its fork and exec. The same queue through plain
flock(1), whose exclusive waiters the kernel serves in order, is the baseline.
Goal: median at most 2 ms.
"""

import fcntl
import os
import subprocess
import sys

from benchlib import Setup, median, report

sys.path.insert(0, str(__import__("benchlib").REPO))
from holdingpen.lock import proclocks  # noqa: E402
from holdingpen.lock.perflock import PerfLock  # noqa: E402

JOBS = int(sys.argv[1]) if len(sys.argv) > 1 else 250


def blocked_count():
    return sum(1 for lk in proclocks.read() if lk.waiting)


def run_queue(s, wrapper, hold):
    log = s.dir / "log"
    log.unlink(missing_ok=True)
    job = ["bash", "--norc", "-c", f'echo "s $EPOCHREALTIME" >> {log}; echo "e $EPOCHREALTIME" >> {log}']
    with hold():
        procs = [subprocess.Popen([*wrapper, *job], env=s.env) for _ in range(JOBS)]
        while blocked_count() < JOBS:      # every job waits in flock(2) before we let go
            os.sched_yield()
    assert all(p.wait() == 0 for p in procs)
    stamps = [line.split() for line in log.read_text().splitlines()]
    assert [kind for kind, _ in stamps] == ["s", "e"] * JOBS, "two jobs overlapped"
    times = [float(t) for _, t in stamps]
    return [(times[i + 1] - times[i]) * 1000 for i in range(1, len(times) - 1, 2)]


class FlockHeld:
    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        self.fd = os.open(self.lock, os.O_RDWR | os.O_CLOEXEC)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        os.close(self.fd)


def main():
    with Setup() as s:
        flock = run_queue(s, ["flock", str(s.lock)], lambda: FlockHeld(s.lock))
        perflock = run_queue(s, [s.cmd("perflock"), "-q"], lambda: PerfLock(path=str(s.lock)))
    print(f"hand-off, {JOBS} exclusive jobs in a queue (end of one job -> start of the next):")
    report("flock LOCK bash -c ...", flock)
    report("perflock bash -c ...", perflock)
    print(f"  perflock's median hand-off is {median(perflock):.2f} ms (goal: at most 2 ms), "
          f"{median(perflock) / median(flock):.1f}x flock(1)'s")


if __name__ == "__main__":
    main()
