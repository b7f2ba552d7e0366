"""The Python API, as a benchmark harness would use it."""

import os
import subprocess
import time

import pytest

from holdingpen.perflock import LockBusy, LockError, PerfLock

from lockjobs import rows


def flock_n(lock, *args):
    return subprocess.run(["flock", "-n", *args, str(lock), "true"]).returncode


def test_context_manager_holds_and_releases(lock):
    with PerfLock(path=str(lock), message="harness", command=["bench", "--quick"]) as held:
        assert held.held and held.waited_s >= 0
        assert flock_n(lock, "-s") == 1
        (row,) = rows(lock)
        assert (row["pid"], row["mode"], row["state"], row["message"], row["command"]) == \
            (os.getpid(), "exclusive", "holding", "harness", "bench --quick")
    assert not held.held
    assert flock_n(lock) == 0


def test_shared_holders_share(lock):
    with PerfLock(shared=True, path=str(lock)), PerfLock(shared=True, path=str(lock)):
        assert [r["mode"] for r in rows(lock)] == ["shared", "shared"]
        assert flock_n(lock, "-s") == 0
        assert flock_n(lock) == 1


def test_nonblock_and_timeout_raise_busy(lock):
    with PerfLock(path=str(lock)):
        with pytest.raises(LockBusy):
            PerfLock(shared=True, nonblock=True, path=str(lock)).acquire()
        start = time.monotonic()
        with pytest.raises(LockBusy):
            PerfLock(timeout_s=0.2, path=str(lock)).acquire()
        assert time.monotonic() - start >= 0.2
        assert len(rows(lock)) == 1            # the failed attempts left no ticket


def test_on_wait_is_called_once_before_waiting(lock):
    seen = []
    with PerfLock(path=str(lock)):
        with pytest.raises(LockBusy):
            PerfLock(timeout_s=0.1, path=str(lock), on_wait=seen.append).acquire()
    assert len(seen) == 1 and isinstance(seen[0], PerfLock)


def test_acquire_again_after_release_but_not_twice(lock):
    p = PerfLock(path=str(lock))
    for _ in range(3):
        p.acquire()
        with pytest.raises(RuntimeError):
            p.acquire()
        p.release()
    p.release()                                  # harmless when not held
    assert flock_n(lock) == 0


def test_children_of_a_holder_do_not_hold_the_lock(lock):
    with PerfLock(path=str(lock)):
        child = subprocess.Popen(["sleep", "60"])
    try:
        assert flock_n(lock) == 0
    finally:
        child.kill()
        child.wait()


def test_missing_lock_file_raises_lock_error(shared_tmp):
    with pytest.raises(LockError, match="does not exist"):
        PerfLock(path=str(shared_tmp / "none")).acquire()
