"""Jobs and wrappers that die, signals, exit statuses: the queue stays consistent."""

import os
import signal
import subprocess

import pytest

from holdingpen.lock.perflock import PerfLock

from lockjobs import pids, process_state, running, wait_until


def tickets(lock):
    return sorted(p.name for p in lock.with_name(lock.name + ".d").iterdir())


def test_a_killed_waiter_leaves_the_queue(jobs, lock, shared_tmp):
    log = shared_tmp / "log"
    with PerfLock(path=str(lock)):
        a = jobs.queue(lock, ["perflock", "-q", "sh", "-c", f"echo a >> {log}"])
        b = jobs.queue(lock, ["perflock", "-q", "sh", "-c", f"echo b >> {log}"])
        c = jobs.queue(lock, ["pls", "-q", "sh", "-c", f"echo c >> {log}"])
        b.send_signal(signal.SIGKILL)
        assert b.wait(10) == -signal.SIGKILL
        wait_until(lambda: pids(lock, "waiting") == [a.pid, c.pid], "b to leave the queue")
    assert (a.wait(30), c.wait(30)) == (0, 0)
    assert log.read_text().split() == ["a", "c"]
    assert tickets(lock) == []          # even b's ticket file: c removed it on its way


def test_a_killed_job_releases_the_machine(jobs, lock, shared_tmp):
    jobpid = shared_tmp / "jobpid"
    p = jobs.start(["perflock", "-q", "sh", "-c", f"echo $$ > {jobpid}.new; mv {jobpid}.new {jobpid}; exec sleep 60"])
    wait_until(jobpid.exists, "the job to start")
    os.kill(int(jobpid.read_text()), signal.SIGKILL)
    assert p.wait(10) == 128 + signal.SIGKILL
    assert jobs.run(["perflock", "-n", "true"]).returncode == 0


def test_killing_perflock_kills_its_job_before_the_next_one_runs(jobs, lock, shared_tmp):
    jobpid = shared_tmp / "jobpid"
    holder = jobs.start(["perflock", "-q", "sh", "-c",
                         f"echo $$ > {jobpid}.new; mv {jobpid}.new {jobpid}; exec sleep 60"])
    wait_until(jobpid.exists, "the first job to start")
    old = int(jobpid.read_text())
    # The next job looks at the first one the moment it starts.
    check = (f"s=$(cut -d')' -f2 /proc/{old}/stat 2>/dev/null | cut -d' ' -f2); "
             f'case "$s" in ""|Z|X) echo gone;; *) echo "still running ($s)";; esac')
    waiter = jobs.queue(lock, ["perflock", "-q", "sh", "-c", check], stdout=subprocess.PIPE)
    holder.send_signal(signal.SIGKILL)
    out, _ = waiter.communicate(timeout=30)
    assert (waiter.returncode, out.decode().strip()) == (0, "gone")
    wait_until(lambda: not running(old), "the orphaned job to die")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
def test_signals_reach_the_job(jobs, lock, shared_tmp, sig):
    ready = shared_tmp / "ready"
    name = signal.Signals(sig).name[3:]
    p = jobs.start(["perflock", "-q", "sh", "-c",
                    f"trap 'exit 42' {name}; touch {ready}; while :; do sleep 0.02; done"])
    wait_until(ready.exists, "the job to start")
    p.send_signal(sig)
    assert p.wait(10) == 42               # the job's trap ran, and its status came back
    assert jobs.run(["perflock", "-n", "true"]).returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_waiter_stopped_by_a_signal_leaves_nothing_behind(jobs, lock, sig):
    with PerfLock(path=str(lock)):
        p = jobs.queue(lock, ["perflock", "true"])
        p.send_signal(sig)
        assert p.wait(10) == 128 + sig
        assert pids(lock, "waiting") == []
        assert len(tickets(lock)) == 1    # only ours


@pytest.mark.parametrize("command, status", [
    (["true"], 0),
    (["sh", "-c", "exit 3"], 3),
    (["sh", "-c", "exit 255"], 255),
    (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
    (["sh", "-c", "kill -SEGV $$"], 128 + signal.SIGSEGV),
    (["no-such-command-anywhere"], 127),
    (["/etc/hostname"], 126),             # exists, not executable
])
def test_exit_status_is_the_jobs(jobs, command, status):
    done = jobs.run(["perflock", *command])
    assert done.returncode == status
    if status in (126, 127):
        assert done.stderr.startswith("perflock: ")
        assert command[0] in done.stderr


def test_background_processes_of_a_job_do_not_hold_the_lock(jobs, lock, shared_tmp):
    bg = shared_tmp / "bg"
    done = jobs.run(["perflock", "sh", "-c", f"sleep 60 >/dev/null 2>&1 & echo $! > {bg}"])
    assert done.returncode == 0
    left = int(bg.read_text())
    try:
        assert running(left)
        assert jobs.run(["perflock", "-n", "true"]).returncode == 0
        assert subprocess.run(["flock", "-n", str(lock), "true"]).returncode == 0
    finally:
        os.kill(left, signal.SIGKILL)


def test_the_job_is_our_child_and_we_are_not_replaced(jobs, lock, shared_tmp):
    out = shared_tmp / "ppid"
    p = jobs.start(["perflock", "-q", "sh", "-c", f"echo $PPID > {out}; sleep 0.3"])
    wait_until(out.exists, "the job to start")
    wait_until(lambda: out.read_text().strip(), "the job to write")
    assert int(out.read_text()) == p.pid
    assert process_state(p.pid) is not None
    assert p.wait(10) == 0
