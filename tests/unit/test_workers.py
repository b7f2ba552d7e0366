"""The daemon's worker threads, run for real: whatever a job raises becomes its result."""

import os
import resource
import select

import pytest

from holdingpen.pen import chunks
from holdingpen.pen.config import PoolSpec
from holdingpen.pen.workers import Workers

MiB = 1 << 20


def next_result(workers, timeout_s=10):
    poller = select.poll()
    poller.register(workers.wake_r, select.POLLIN)
    assert poller.poll(timeout_s * 1000), "no result in time"
    (result,) = list(workers.results())
    return result


@pytest.fixture
def workers():
    w = Workers(authorize=lambda peer, pool_name: (True, ""), lock_memory=False)
    w.start()
    yield w
    w.stop()


def test_a_reservation_that_raises_the_unforeseen_is_a_shortfall_and_the_thread_lives(workers):
    # A disk pool with no path makes os.open raise TypeError, not ReserveError.
    workers.reserve(PoolSpec("disk", MiB, 1, None))
    what, name, chunk, problem = next_result(workers)
    assert (what, name, chunk) == ("reserved", "disk", None)
    assert problem.startswith("cannot reserve it: TypeError(")
    workers.reserve(PoolSpec("memory", MiB, 1))          # and the next one is made
    what, name, chunk, problem = next_result(workers)
    assert (what, name, problem) == ("reserved", "memory", None)
    assert chunk.size_bytes == MiB
    chunk.close()
    assert workers.failed_for_good() is None


def test_out_of_descriptors_is_a_shortfall_not_a_crash():
    # A flood of clients can hold every descriptor the daemon may open: memfd_create
    # then fails with EMFILE, which must be a shortfall (tried again), not an OSError.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use, hard))
    try:
        spare = []
        try:
            while True:
                spare.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        with pytest.raises(chunks.ReserveError) as e:
            chunks.reserve_memory(MiB, lock=False)
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert str(e.value) == "cannot reserve memory: Too many open files"


def test_a_warm_up_that_fails_is_told_and_borrows_are_still_asked():
    class Authorize:
        def warm_up(self):
            raise ImportError("No module named 'jeepney'")

        def __call__(self, peer, pool_name):
            return False, "asked"

    class Conn:
        peer = None

    w = Workers(Authorize(), lock_memory=False)
    w.start()
    try:
        what, message = next_result(w)
        assert what == "failed"
        assert message.startswith("getting ready to ask polkit failed: ImportError(")
        conn = Conn()
        w.ask((conn, "memory", "request"))
        assert next_result(w) == ("authorized", conn, "memory", "request", False, "asked")
    finally:
        w.stop()
