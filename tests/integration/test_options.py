"""-n, -w, -E, -q, -m, --lock and the lock file problems users can meet."""

import os
import re
import stat
import time

import pytest

from holdingpen.lock.perflock import PerfLock

from lockjobs import needs_root, nobody, rows

HOLDER = r"root holds it exclusively \(pid \d+, [\d.]+s: sleep 60\)"


@pytest.fixture
def held(jobs, lock):
    """Another process holds the machine exclusively, running `sleep 60`."""
    return jobs.queue(lock, ["perflock", "-q", "sleep", "60"], state="holding")


@pytest.mark.parametrize("prog", ["perflock", "pls"])
def test_nonblock_gives_up_at_once_and_names_the_holder(jobs, held, prog):
    done = jobs.run([prog, "-n", "true"])
    assert done.returncode == 1
    assert re.fullmatch(fr"{prog}: the machine is busy: {HOLDER}\n", done.stderr)


def test_conflict_exit_code(jobs, held):
    assert jobs.run(["perflock", "-n", "-E", "9", "true"]).returncode == 9
    assert jobs.run(["pls", "--timeout=0.1", "--conflict-exit-code=0", "true"]).returncode == 0


def test_timeout_gives_up_after_that_long(jobs, held):
    start = time.monotonic()
    done = jobs.run(["perflock", "-w", "0.3", "true"])
    assert time.monotonic() - start >= 0.3
    assert done.returncode == 1
    waiting, gave_up = done.stderr.splitlines()
    assert re.fullmatch(fr"perflock: waiting for the machine: {HOLDER}; 1 job ahead", waiting)
    assert re.fullmatch(fr"perflock: gave up after 0.3s: {HOLDER}", gave_up)


def test_timeout_takes_the_machine_when_it_comes_free_in_time(jobs, lock):
    with PerfLock(path=str(lock)):
        p = jobs.queue(lock, ["perflock", "-w", "30", "true"])
    assert p.wait(30) == 0
    lines = p.stderr.read().decode().splitlines()
    assert lines[0].startswith("perflock: waiting for the machine: root holds it exclusively")
    assert re.fullmatch(r"perflock: got the machine after [\d.]+s", lines[1])


def test_quiet_says_nothing(jobs, lock):
    with PerfLock(path=str(lock)):
        p = jobs.queue(lock, ["perflock", "-q", "true"])
    assert p.wait(30) == 0
    assert p.stderr.read() == b""
    assert jobs.run(["perflock", "-q", "-n", "true"]).stderr == ""


def test_message_and_command_are_shown_to_others(jobs, lock):
    p = jobs.queue(lock, ["pls", "-q", "-m", "nightly docs build", "sleep", "60"], state="holding")
    (row,) = rows(lock)
    assert (row["pid"], row["message"], row["command"], row["mode"]) == \
        (p.pid, "nightly docs build", "sleep 60", "shared")


def test_lock_option_beats_the_environment(jobs, lock, shared_tmp):
    other = shared_tmp / "other"
    other.touch()
    with PerfLock(path=str(lock)):
        assert jobs.run(["perflock", "-n", "--lock", str(other), "true"]).returncode == 0
        assert jobs.run(["perflock", "-n", "true"]).returncode == 1


def test_a_lock_file_of_ones_own_gets_its_queue(jobs, shared_tmp):
    mine = shared_tmp / "mine"
    mine.touch()
    assert jobs.run(["perflock", "--lock", str(mine), "true"]).returncode == 0
    queue = shared_tmp / "mine.d"
    assert stat.S_IMODE(queue.stat().st_mode) == 0o1777


def test_missing_lock_file(jobs, shared_tmp):
    missing = shared_tmp / "missing"
    done = jobs.run(["perflock", "--lock", str(missing), "true"])
    assert done.returncode == 66
    assert done.stderr == (f"perflock: the lock file {missing} does not exist; create it "
                           f"(touch {missing}), or use the default /run/perflock "
                           "(unset PERFLOCK_LOCK, no --lock)\n")
    assert not missing.exists()


@pytest.mark.parametrize("make, problem", [
    (os.mkdir, "is a directory, not a regular file"),
    (os.mkfifo, "is not a regular file"),
])
def test_lock_file_that_is_not_a_file(jobs, shared_tmp, make, problem):
    odd = shared_tmp / "odd"
    make(odd)
    done = jobs.run(["perflock", "--lock", str(odd), "true"], timeout=10)
    assert done.returncode == 66
    assert done.stderr.startswith(f"perflock: the lock file {odd} {problem}; remove it and ")


@needs_root
def test_lock_file_not_writable(jobs, shared_tmp):
    ro = shared_tmp / "readonly"
    ro.touch()
    ro.chmod(0o644)
    done = jobs.run([*nobody(), "perflock", "--lock", str(ro), "true"])
    assert done.returncode == 66
    assert done.stderr.startswith(f"perflock: the lock file {ro} is not writable by you; "
                                  "it must be mode 0666")


@needs_root
def test_queue_not_writable(jobs, lock):
    queue = lock.with_name(lock.name + ".d")
    queue.mkdir(mode=0o755)
    done = jobs.run([*nobody(), "perflock", "true"])
    assert done.returncode == 66
    assert done.stderr == (f"perflock: cannot join the queue in {queue}: permission denied; "
                           "it must be mode 1777 (tmpfiles.d/perflock.conf)\n")
    assert list(queue.iterdir()) == []


def test_queue_that_is_not_a_directory(jobs, lock):
    queue = lock.with_name(lock.name + ".d")
    queue.touch()
    done = jobs.run(["perflock", "true"])
    assert done.returncode == 66
    assert done.stderr.startswith(f"perflock: the queue {queue} is not a directory; remove it and ")
