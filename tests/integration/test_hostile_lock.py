"""The lock file pulled from under waiting jobs: replaced, removed, made unwritable.

What users get (decided here):

* Jobs already in the queue keep their place: a ticket, not the lock file,
  holds it. None fails, none runs beside a job it must not, and each runs
  holding the file that is at the lock path when its turn comes, so that
  flock(1) users and wholock see it: after a replacement (a new file renamed
  over, or the file removed and created again) it locks the new file. If
  there is no usable file at the path by then (removed, or replaced by one it
  cannot open), it keeps the one it opened: it had its turn fairly.
* New jobs get the one-line error that names the fix (exit 66); wholock too,
  if there is no lock file.
* At the end nothing is held, on the old file or the new, and the queue is empty.

Only the jobs that held the old file at the moment it was replaced run beside
flock(1) users of the new one: they locked a file that is no longer at the path.
"""

import json
import os
import shutil
import subprocess

import pytest

from holdingpen.lock import proclocks
from holdingpen.lock.perflock import PerfLock

from lockjobs import needs_root, nobody, pids, wait_until

MODES = {"perflock": "exclusive", "pls": "shared"}


def job(prog, name, log, lock):
    """A job that logs its start and end, and whether the file at the lock path is held
    against the jobs it excludes (that check is skipped while there is no file there:
    flock(1) would create one)."""
    conflicting = "-s" if prog == "perflock" else "-x"
    script = (f'echo "start {name}" >> {log}; '
              f'if [ -f {lock} ] && flock -n {conflicting} {lock} true; then '
              f'echo "{name}: the file at the lock path is not held" >> {log}; fi; '
              f'sleep 0.2; echo "end {name}" >> {log}')
    return [prog, "-q", "sh", "-c", script]


def held_inodes(*inodes):
    """The flock(2) locks held or waited for on any of these inodes."""
    return [lk for lk in proclocks.read() if lk.kind == "FLOCK" and lk.ino in inodes]


def one_line(stderr):
    return stderr.count("\n") == 1 and stderr.endswith("\n")


def queue_of(lock):
    return lock.with_name(lock.name + ".d")


def replace(lock, mode=0o666):
    """Rename a new file over the lock file, as `install -m 0666 /dev/null LOCK` would."""
    new = lock.with_name(lock.name + ".new")
    new.touch()
    new.chmod(mode)
    os.rename(new, lock)


def remove_and_create(lock):
    lock.unlink()
    lock.touch()
    lock.chmod(0o666)


@pytest.mark.parametrize("how", [replace, remove_and_create])
def test_waiting_jobs_follow_a_replaced_lock_file(jobs, lock, shared_tmp, how, figure):
    log = shared_tmp / "log"
    holder = PerfLock(path=str(lock))
    holder.acquire()
    try:
        waiting = [jobs.queue(lock, job(prog, name, log, lock))
                   for prog, name in [("perflock", "w1"), ("pls", "w2"), ("perflock", "w3")]]
        old = lock.stat().st_ino
        how(lock)
        new = lock.stat().st_ino
        assert new != old
        # A new job takes the new file, behind those already waiting.
        late = jobs.queue(lock, job("perflock", "late", log, lock))
        assert [pid for pid in pids(lock, "waiting") if pid != os.getpid()] == \
            [p.pid for p in waiting] + [late.pid]
    finally:
        holder.release()
    assert [p.wait(30) for p in [*waiting, late]] == [0, 0, 0, 0]
    assert log.read_text().splitlines() == [
        "start w1", "end w1", "start w2", "end w2", "start w3", "end w3", "start late", "end late"]
    assert held_inodes(old, new) == []
    assert list(queue_of(lock).iterdir()) == []
    figure(f"{how.__name__}: 3 waiting jobs kept their order and each held the new lock file; "
           "nothing held after")


def test_a_removed_lock_file_new_jobs_are_told_waiting_jobs_go_on(jobs, lock, shared_tmp, figure):
    log = shared_tmp / "log"
    holder = PerfLock(path=str(lock))
    holder.acquire()
    try:
        waiting = [jobs.queue(lock, job(prog, name, log, lock))
                   for prog, name in [("perflock", "w1"), ("pls", "w2")]]
        old = lock.stat().st_ino
        lock.unlink()
        for argv in (["perflock", "true"], ["pls", "-n", "true"], ["wholock"]):
            done = jobs.run(argv)
            assert done.returncode == 66, (argv, done)
            assert one_line(done.stderr), done.stderr
            assert f"the lock file {lock} does not exist; create it (touch {lock})" in done.stderr
    finally:
        holder.release()
    # Still in order, on the file they opened: no one else can lock it now.
    assert [p.wait(30) for p in waiting] == [0, 0]
    assert log.read_text().splitlines() == ["start w1", "end w1", "start w2", "end w2"]
    assert held_inodes(old) == []
    lock.touch()
    lock.chmod(0o666)
    assert jobs.run(["perflock", "-n", "true"]).returncode == 0
    assert list(queue_of(lock).iterdir()) == []
    figure("lock file removed: perflock, pls and wholock exit 66 with one line naming the fix; "
           "2 waiting jobs ran in order on the file they had; nothing held after")


def unwritable(lock):
    lock.chmod(0o444)


def replaced_by_unwritable(lock):
    replace(lock, 0o444)


@needs_root
@pytest.mark.parametrize("how", [unwritable, replaced_by_unwritable])
def test_an_unwritable_lock_file_new_jobs_are_told_waiting_jobs_go_on(jobs, lock, shared_tmp, how,
                                                                      figure):
    # nobody's jobs: root may open any file, so only another user meets the mode.
    log, ready, go = shared_tmp / "log", shared_tmp / "ready", shared_tmp / "go"
    log.touch()
    log.chmod(0o666)
    holding = jobs.start(nobody() + ["perflock", "-q", "sh", "-c",
                                     f"touch {ready}; while [ ! -e {go} ]; do sleep 0.01; done"])
    wait_until(ready.exists, "nobody's job to hold the machine")
    waiting = [jobs.queue(lock, nobody() + job(prog, name, log, lock))
               for prog, name in [("perflock", "w1"), ("pls", "w2")]]
    old = lock.stat().st_ino
    how(lock)
    for prog in ("perflock", "pls"):
        done = jobs.run(nobody() + [prog, "-n", "true"])
        assert done.returncode == 66, done
        assert done.stderr == (f"{prog}: the lock file {lock} is not writable by you; it must be "
                               f"mode 0666 (tmpfiles.d/perflock.conf; as root: chmod 0666 {lock})\n")
    if how is unwritable:            # the same file: wholock still sees who holds and waits
        seen = json.loads(jobs.run(nobody() + ["wholock", "--json"]).stdout)
        assert [(r["pid"], r["state"]) for r in seen] == [
            (holding.pid, "holding"), (waiting[0].pid, "waiting"), (waiting[1].pid, "waiting")]
    go.touch()
    assert [p.wait(30) for p in [holding, *waiting]] == [0, 0, 0]
    # The file at the path, if it is a new one, cannot be locked by them: they keep theirs.
    lines = log.read_text().splitlines()
    assert [line for line in lines if line.startswith(("start", "end"))] == [
        "start w1", "end w1", "start w2", "end w2"]
    assert held_inodes(old, lock.stat().st_ino) == []
    lock.chmod(0o666)
    assert jobs.run(nobody() + ["perflock", "-n", "true"]).returncode == 0
    assert list(queue_of(lock).iterdir()) == []
    figure(f"{how.__name__} (as nobody): new perflock and pls exit 66 with one line naming "
           "chmod 0666; 2 waiting jobs ran in order; nothing held after")


def test_a_job_holding_the_replaced_file_finishes_and_the_next_takes_the_new_one(
        jobs, lock, shared_tmp):
    # The one gap: the holder at the moment of the replacement has the old file.
    log, ready, go = shared_tmp / "log", shared_tmp / "ready", shared_tmp / "go"
    holding = jobs.start(["perflock", "-q", "sh", "-c",
                          f"touch {ready}; while [ ! -e {go} ]; do sleep 0.01; done"])
    wait_until(ready.exists, "the job to hold the machine")
    nxt = jobs.queue(lock, job("perflock", "next", log, lock))
    replace(lock)
    # flock(1) users of the new file do not see the old holder ...
    assert subprocess.run(["flock", "-n", str(lock), "true"]).returncode == 0
    go.touch()
    assert (holding.wait(30), nxt.wait(30)) == (0, 0)
    # ... but the next job holds the new file against them.
    assert log.read_text().splitlines() == ["start next", "end next"]


def test_a_removed_queue_costs_the_order_not_the_exclusion(jobs, lock, shared_tmp):
    # Not the lock file but its queue, removed while jobs wait (rm -r /run/perflock.d):
    # the waiting jobs' tickets went with it, so the kernel's order of flock(2) waiters
    # decides among them and newcomers, until the queue has drained; each still holds
    # the lock file while it runs, and nothing is left behind.
    log = shared_tmp / "log"
    holder = PerfLock(path=str(lock))
    holder.acquire()
    try:
        waiting = [jobs.queue(lock, job(prog, name, log, lock))
                   for prog, name in [("perflock", "w1"), ("pls", "w2"), ("perflock", "w3")]]
        shutil.rmtree(queue_of(lock))
        late = jobs.start(job("perflock", "late", log, lock))
        wait_until(lambda: late.pid in pids(lock, "waiting"), "the late job to wait")
    finally:
        holder.release()
    assert [p.wait(30) for p in [*waiting, late]] == [0, 0, 0, 0]
    lines = log.read_text().splitlines()
    assert not [line for line in lines if "not held" in line], lines
    starts = [line for line in lines if line.startswith("start")]
    assert sorted(starts) == ["start late", "start w1", "start w2", "start w3"]
    assert held_inodes(lock.stat().st_ino) == []
    assert list(queue_of(lock).iterdir()) == []
