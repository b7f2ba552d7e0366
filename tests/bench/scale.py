"""Scale: 1,000 queued jobs run in arrival order, and wholock answers quickly beside them.

Jobs join the queue while the machine is held; each records its perflock's
pid ($PPID) when it runs. wholock --json, asked while all of them wait, gives
the queue's order; the run order must match it, but for shared jobs that
stand next to each other, which run together. Goal: wholock with
1,000 waiting jobs answers in under 0.5 s.
"""

import json
import subprocess
import sys
import time

from benchlib import Setup, median, report

sys.path.insert(0, str(__import__("benchlib").REPO))
from holdingpen.lock import who  # noqa: E402
from holdingpen.lock.perflock import PerfLock  # noqa: E402

JOBS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000


def batches(ran, queue):
    """Whether pids ran in queue order, where neighbouring shared jobs run together."""
    groups = []
    for r in queue:
        if r["mode"] == "shared" and groups and groups[-1][0] == "shared":
            groups[-1][1].add(r["pid"])
        else:
            groups.append((r["mode"], {r["pid"]}))
    at = 0
    for _, pids in groups:
        if set(ran[at:at + len(pids)]) != pids:
            return False
        at += len(pids)
    return at == len(ran)


def main():
    with Setup() as s:
        log = s.dir / "log"
        started = time.monotonic()
        with PerfLock(path=str(s.lock)):
            procs = []
            for i in range(JOBS):
                mode = "pls" if i % 10 == 9 else "perflock"     # some shared jobs in the stream
                procs.append(subprocess.Popen([s.cmd(mode), "-q", "sh", "-c", f"echo $PPID >> {log}"],
                                              env=s.env))
            while len(who.survey(str(s.lock))) < JOBS + 1:   # every job has its ticket
                time.sleep(0.05)
            queued_s = time.monotonic() - started
            text_ms, json_ms = [], []
            for _ in range(5):
                t = time.perf_counter()
                subprocess.run([s.cmd("wholock")], env=s.env, check=True, stdout=subprocess.DEVNULL)
                text_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                listed = json.loads(subprocess.run([s.cmd("wholock"), "--json"], env=s.env, check=True,
                                                   capture_output=True).stdout)
                json_ms.append((time.perf_counter() - t) * 1000)
        released = time.monotonic()
        assert all(p.wait() == 0 for p in procs)
        drained_s = time.monotonic() - released
        ran = [int(line) for line in log.read_text().split()]
    waiting = [r for r in listed if r["state"] == "waiting"]
    print(f"scale: {JOBS} jobs (every tenth shared) queued in {queued_s:.1f} s, "
          f"ran in {drained_s:.1f} s ({drained_s / JOBS * 1000:.2f} ms a job)")
    report(f"wholock, {len(waiting)} waiting", text_ms)
    report(f"wholock --json, {len(waiting)} waiting", json_ms)
    in_order = batches(ran, waiting)
    print(f"  ran in the order wholock listed them (shared jobs side by side in any order): {in_order}")
    print(f"  wholock --json median {median(json_ms) / 1000:.3f} s (goal: under 0.5 s)")
    if not in_order:
        sys.exit("scale: jobs ran out of order")


if __name__ == "__main__":
    main()
