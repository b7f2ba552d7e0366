"""The Python API, as a benchmark harness would use it."""

import os
import signal
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


def test_timeout_keeps_the_callers_interval_timer(lock):
    """A harness's own ITIMER_REAL (pytest-timeout's, say) survives a wait with timeout_s."""
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(time.monotonic()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        with PerfLock(path=str(lock)):
            with pytest.raises(LockBusy):
                PerfLock(timeout_s=0.2, path=str(lock)).acquire()
        remaining_s, interval_s = signal.getitimer(signal.ITIMER_REAL)
        assert 29 < remaining_s <= 30 and interval_s == 0 and fired == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_callers_alarm_that_falls_due_while_waiting_still_fires(lock):
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(time.monotonic()))
    try:
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.1, 0.15)    # at 0.1 s, then every 0.15 s
        with PerfLock(path=str(lock)):
            with pytest.raises(LockBusy):
                PerfLock(timeout_s=0.5, path=str(lock)).acquire()
            waited_s = time.monotonic() - start
        assert waited_s >= 0.5
        assert 2 <= len(fired) <= 4 and fired[0] - start >= 0.1   # 0.1, 0.25, 0.4 s
        assert signal.getitimer(signal.ITIMER_REAL)[1] == pytest.approx(0.15)   # still periodic
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_callers_alarm_handler_that_raises_ends_the_wait(lock):
    class Timeout(Exception):
        pass

    def timed_out(signum, frame):
        raise Timeout

    previous = signal.signal(signal.SIGALRM, timed_out)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with PerfLock(path=str(lock)):
            start = time.monotonic()
            with pytest.raises(Timeout):
                PerfLock(timeout_s=10, path=str(lock)).acquire()
            assert time.monotonic() - start < 5
        assert signal.getsignal(signal.SIGALRM) is timed_out
        assert len(rows(lock)) == 0            # no ticket left behind
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
