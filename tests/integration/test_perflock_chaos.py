"""perflock under chaos: 200 jobs arriving over time, and SIGKILLs at jobs and wrappers alike.

Each job is a small program that, the moment it starts, checks for itself:

* a witness lock: a second file it flocks with LOCK_NB, exclusively for an
  exclusive job, shared for a shared one, and holds while it runs. The witness
  is held by the job itself, not its wrapper, so it is free only once the job
  is dead: a job that finds it taken runs beside a job it must not, a
  killed wrapper's job still alive included;
* its wrapper ($PPID) holds the lock file, in the job's mode (/proc/locks);
* its wrapper's ticket, for the time it was stamped under the queue's lock:
  the order of arrival.

and appends one line to a shared log (O_APPEND), and another when it ends. A
killer SIGKILLs jobs, waiting wrappers, holding wrappers, and wrappers at a
random moment of their start-up; an observer reads the kernel's lock table
throughout. Then the log must show no conflict, every job under its
wrapper's lock, conflicting jobs started in arrival order, and the queue
empty. The seed is printed; HOLDINGPEN_CHAOS_SEED replays a run's choices
(the kernel's scheduling is not replayed).
"""

import collections
import os
import random
import shutil
import signal
import sys
import threading
import time

import pytest

from holdingpen.lock import proclocks

from lockjobs import process_state, rows, wait_until

SEED = int(os.environ.get("HOLDINGPEN_CHAOS_SEED", "424242"))
JOBS = 200
EXCLUSIVE_SHARE = 0.35
KILLS = {"job": 16, "waiting wrapper": 16, "holding wrapper": 12, "starting wrapper": 10}
TIME_LIMIT_S = 90.0
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The job: check, log "start", sleep, log "end". python3 -S: no site, a faster start.
JOB = r"""
import fcntl, os, sys, time
started_ns = time.monotonic_ns()
repo, log, witness, lock, mode, duration_s = sys.argv[1:7]
sys.path.insert(0, repo)
from holdingpen.lock import proclocks
wrapper = os.getppid()
problems = []
w = os.open(witness, os.O_RDONLY | os.O_CLOEXEC)
try:
    fcntl.flock(w, (fcntl.LOCK_EX if mode == "exclusive" else fcntl.LOCK_SH) | fcntl.LOCK_NB)
except BlockingIOError:
    problems.append("beside-a-conflicting-job")
holders = [(lk.pid, lk.write) for lk in proclocks.flocks_on(proclocks.read(), os.stat(lock))
           if not lk.waiting]
if (wrapper, mode == "exclusive") not in holders:
    problems.append("wrapper-not-holding:%s" % str(holders).replace(" ", ""))
arrived = None
queue = lock + ".d"
for name in os.listdir(queue):
    try:
        with open(os.path.join(queue, name), "rb") as f:
            fields = f.read().split(b"\0")
    except OSError:
        continue
    if len(fields) > 2 and fields[1] == str(wrapper).encode():
        arrived = fields[2].decode()
out = os.open(log, os.O_WRONLY | os.O_APPEND)
os.write(out, ("start %d %d %s %d %s %s\n" % (wrapper, os.getpid(), mode, started_ns, arrived,
                                             ",".join(problems) or "ok")).encode())
time.sleep(float(duration_s))
os.write(out, ("end %d %d\n" % (os.getpid(), time.monotonic_ns())).encode())
"""


class Observer(threading.Thread):
    """Reads /proc/locks over and over: never an exclusive holder beside another holder."""

    def __init__(self, lock):
        super().__init__(daemon=True)
        self.st = os.stat(lock)
        self.samples = 0
        self.most_shared = 0
        self.problems = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            locks = proclocks.flocks_on(proclocks.read(), self.st)
            # One entry, not two: /proc/locks comes a page per read(2), and a table that
            # changes between reads can show a lock twice. Two identical exclusive
            # entries are one lock: a second on another open file would conflict.
            holders = list({(lk.write, lk.pid): lk for lk in locks if not lk.waiting}.values())
            if any(lk.write for lk in holders) and len(holders) > 1:
                self.problems.append(f"exclusive holder beside others: {holders}")
            self.most_shared = max(self.most_shared, sum(not lk.write for lk in holders))
            self.samples += 1
            time.sleep(0.002)


def read_log(path):
    """{job pid: {"wrapper", "mode", "start", "arrived", "problems", "end"}} from the log."""
    jobs = {}
    with open(path) as f:
        for line in f.read().split("\n")[:-1]:      # the last may be being written
            fields = line.split()
            if fields[0] == "start":
                wrapper, job, mode, start, arrived, problems = fields[1:]
                jobs[int(job)] = {"wrapper": int(wrapper), "mode": mode, "start": int(start),
                                  "arrived": None if arrived == "None" else float(arrived),
                                  "problems": problems, "end": None}
            elif fields[0] == "end":
                jobs[int(fields[1])]["end"] = int(fields[2])
    return jobs


def test_two_hundred_jobs_under_sigkills(jobs, lock, shared_tmp, figure):
    print(f"chaos seed {SEED} (HOLDINGPEN_CHAOS_SEED)")
    rng = random.Random(SEED)
    log, witness, program = shared_tmp / "log", shared_tmp / "witness", shared_tmp / "job.py"
    log.touch()
    log.chmod(0o666)
    witness.touch()
    program.write_text(JOB)
    observer = Observer(str(lock))
    observer.start()

    wrappers = {}               # pid -> (Popen, mode)
    killed = {}                 # wrapper pid -> what of it was killed
    kills_left = collections.Counter(KILLS)
    plan = ["exclusive" if rng.random() < EXCLUSIVE_SHARE else "shared" for _ in range(JOBS)]
    start = time.monotonic()

    def kill_something():
        what = rng.choice(sorted(w for w, n in kills_left.items() if n))
        live = {pid for pid, (p, _) in wrappers.items() if p.poll() is None and pid not in killed}
        if what == "job":
            running = [(j["wrapper"], pid) for pid, j in read_log(log).items()
                       if j["end"] is None and j["wrapper"] in live]
            if not running:
                return
            wrapper, victim = rng.choice(running)
        elif what == "starting wrapper":
            return                          # done as the job starts, below
        else:
            state = "waiting" if what == "waiting wrapper" else "holding"
            candidates = [r["pid"] for r in rows(lock, state) if r["pid"] in live]
            if not candidates:
                return
            wrapper = victim = rng.choice(candidates)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            return
        killed[wrapper] = what
        kills_left[what] -= 1

    for i, mode in enumerate(plan):
        duration_s = rng.uniform(0.01, 0.1) if mode == "exclusive" else rng.uniform(0.03, 0.3)
        argv = ["perflock" if mode == "exclusive" else "pls", "-q", sys.executable, "-S",
                str(program), REPO, str(log), str(witness), str(lock), mode, f"{duration_s:.3f}"]
        p = jobs.start(argv, stderr=None)
        wrappers[p.pid] = (p, mode)
        if kills_left["starting wrapper"] and rng.random() < KILLS["starting wrapper"] / JOBS * 1.5:
            time.sleep(rng.uniform(0, 0.08))    # somewhere in its start-up or queueing
            p.send_signal(signal.SIGKILL)
            killed[p.pid] = "starting wrapper"
            kills_left["starting wrapper"] -= 1
        if sum(kills_left.values()) and rng.random() < 0.35:
            kill_something()
        if rng.random() < 0.4:
            time.sleep(rng.uniform(0, 0.15))    # else the next arrives at once: a burst
    arrival_s = time.monotonic() - start
    # The queue drains, with some kills still on the way.
    while sum(kills_left.values()) - kills_left["starting wrapper"] and \
            any(p.poll() is None for p, _ in wrappers.values()) and \
            time.monotonic() - start < TIME_LIMIT_S / 2:
        kill_something()
        time.sleep(rng.uniform(0, 0.1))
    for pid, (p, _) in wrappers.items():
        p.wait(max(1.0, TIME_LIMIT_S - (time.monotonic() - start)))
    elapsed_s = time.monotonic() - start
    observer.done.set()
    observer.join()

    by_job = read_log(log)
    problems = [f"job {pid} of wrapper {j['wrapper']} ({j['mode']}): {j['problems']}"
                for pid, j in by_job.items() if j["problems"] != "ok"]
    problems += [f"job {pid} ({j['mode']}) started under {j['wrapper']}, not a wrapper of ours"
                 for pid, j in by_job.items() if j["wrapper"] not in wrappers]
    problems += [f"job {pid} of wrapper {j['wrapper']} found no ticket"
                 for pid, j in by_job.items() if j["arrived"] is None]
    ran = {j["wrapper"]: j for j in by_job.values() if j["wrapper"] in wrappers}
    if len(ran) < sum(1 for j in by_job.values() if j["wrapper"] in wrappers):
        problems.append("two jobs under one wrapper")
    problems += observer.problems
    # Each wrapper's status says what happened to it.
    for pid, (p, mode) in wrappers.items():
        what, code, job = killed.get(pid), p.returncode, ran.get(pid)
        if what is None:
            ok = code == 0 and job is not None and job["end"] is not None
        elif what == "job":
            ok = code == 128 + signal.SIGKILL or (code == 0 and job["end"] is not None)
        else:
            ok = code == -signal.SIGKILL or (code == 0 and job is not None and job["end"])
        if not ok:
            problems.append(f"wrapper {pid} ({mode}, {what or 'not killed'}) exited {code}, "
                            f"job {job}")
    # Exclusive jobs that ran to the end overlap no other job.
    spans = sorted((j["start"], j["end"] or j["start"], w, j["mode"]) for w, j in ran.items())
    for a, b in zip(spans, spans[1:]):
        if "exclusive" in (a[3], b[3]) and a[1] > b[0] and ran[a[2]]["end"] is not None:
            problems.append(f"overlap: {a} and {b}")
    # Conflicting jobs start in the order they arrived.
    arrived = sorted((j["arrived"], j["start"], w, j["mode"]) for w, j in ran.items()
                     if j["arrived"] is not None)
    for i, a in enumerate(arrived):
        for b in arrived[i + 1:]:
            if "exclusive" in (a[3], b[3]) and b[1] < a[1]:
                problems.append(f"out of order: {b[2]} ({b[3]}) arrived after {a[2]} ({a[3]}) "
                                f"but started {(a[1] - b[1]) / 1e6:.1f} ms before it")
    assert not problems, "\n".join(problems[:30])

    # Nothing is left in the queue: no live ticket, only unlocked leftovers of the killed ...
    assert rows(lock) == []
    queue = lock.with_name(lock.name + ".d")
    leftovers = sorted(p.name for p in queue.iterdir())
    inodes = {lk.ino for lk in proclocks.read()}
    assert all(not n.startswith(".new.") for n in leftovers), leftovers
    assert not any((queue / n).stat().st_ino in inodes for n in leftovers if (queue / n).exists())
    # ... which the next job removes on its way.
    done = jobs.run(["perflock", "-q", "true"])
    assert done.returncode == 0, done.stderr
    assert list(queue.iterdir()) == []

    tally = collections.Counter(killed.values())
    figure(f"seed {SEED}: {JOBS} jobs ({plan.count('exclusive')} perflock, "
           f"{plan.count('shared')} pls) arriving over {arrival_s:.1f} s, done in "
           f"{elapsed_s:.1f} s; {len(ran)} ran, {sum(1 for j in ran.values() if j['end'])} to "
           f"the end; SIGKILLs: " + ", ".join(f"{n} {w}" for w, n in sorted(tally.items()))
           + f"; {observer.samples:,} lock-table samples, up to {observer.most_shared} shared "
           f"holders at once; 0 conflicts, 0 jobs without the lock, 0 out of arrival order; "
           f"{len(leftovers)} unlocked leftover tickets, removed by the next job")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to stop perflock mid-ticket")
def test_a_wrapper_killed_while_taking_its_ticket_leaves_nothing_for_good(jobs, lock, shared_tmp):
    # The window is microseconds wide (a ticket is written, then renamed into place, under
    # the queue's lock); strace holds perflock at its rename(2) so that the kill lands in it.
    queue = lock.with_name(lock.name + ".d")
    tracer = jobs.start(["strace", "-f", "-qq", "-o", "/dev/null",
                         "-e", "trace=rename,renameat,renameat2",
                         "-e", "inject=rename,renameat,renameat2:delay_enter=30000000",
                         "perflock", "-q", "true"])
    unpublished = wait_until(lambda: queue.exists() and [
        p.name for p in queue.iterdir() if p.name.startswith(".new.")], "perflock at its rename")
    wrapper = int(unpublished[0].split(".")[2])        # .new.PID.NS
    os.kill(wrapper, signal.SIGKILL)
    # strace may never let go of a tracee it delays; once strace is gone, the kill lands
    # before the rename does.
    tracer.kill()
    wait_until(lambda: process_state(wrapper) in (None, "Z"), "the killed perflock to be dead")
    assert [p.name for p in queue.iterdir()] == unpublished
    # The next job gets the machine, and clears what the killed one left half made.
    done = jobs.run(["perflock", "-q", "true"])
    assert done.returncode == 0, done.stderr
    assert list(queue.iterdir()) == []
