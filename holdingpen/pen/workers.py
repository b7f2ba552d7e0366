"""The daemon's two worker threads, and the pipe that wakes its loop when they are done.

The reserver makes one chunk at a time (allocating gigabytes takes a while);
the asker asks authorize() about one borrow at a time (polkit takes
milliseconds, or hangs). Neither touches the pools: each hands its result
to the loop thread through a queue, and wakes it.

A worker must never die quietly: the daemon would go on answering the
watchdog while every borrow waits for ever, or the pool never refills. So
whatever a job raises becomes that job's result (a shortfall, a refusal),
and a warm-up that fails is told to the loop and lived without. Should a
thread die all the same, failed_for_good() says so; the loop then stops
the watchdog, so that systemd restarts the daemon.
"""

import os
import queue
import threading
import traceback

from holdingpen.pen import chunks


class Workers:
    """The reserver and the asker.

    Args:
        authorize: authorize(peer, pool_name) -> (allowed, why not); its warm_up(), if any,
            runs first on the asker thread.
        lock_memory: whether memory chunks are mapped and locked.
    """

    def __init__(self, authorize, lock_memory):
        self.authorize = authorize
        self.lock_memory = lock_memory
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._results = queue.SimpleQueue()   # ("reserved" | "authorized" | "failed", ...)
        self._jobs = queue.SimpleQueue()      # specs to reserve
        self._asks = queue.SimpleQueue()      # (conn, pool name, request) to authorize
        self._threads = []
        self._died = None                     # why a thread died, once one has

    def start(self):
        for name, body in (("reserver", self._reserver), ("asker", self._asker)):
            thread = threading.Thread(target=self._guard, args=(name, body), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self):
        self._jobs.put(None)
        self._asks.put(None)

    def reserve(self, spec):
        self._jobs.put(spec)

    def ask(self, job):
        self._asks.put(job)

    def tell(self, *result):
        """Hand the loop a result from another thread (the protect thread), and wake it."""
        self._put(*result)

    def results(self):
        """What the threads have finished since last asked (on the loop thread)."""
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        while True:
            try:
                yield self._results.get_nowait()
            except queue.Empty:
                return

    def failed_for_good(self):
        """Why a worker thread is gone, or None while both run."""
        return self._died

    def _guard(self, name, body):
        try:
            body()
        except BaseException as e:    # noqa: anything at all, or the daemon hangs unseen
            self._died = f"the {name} thread died: {e!r}"
            self._put("failed", f"{self._died}; no more WATCHDOG=1, so that systemd restarts "
                      f"us\n{traceback.format_exc()}")

    def _reserver(self):
        while (spec := self._jobs.get()) is not None:
            try:
                if spec.kind == chunks.MEMORY:
                    chunk = chunks.reserve_memory(spec.size_bytes, self.lock_memory)
                else:
                    chunk = chunks.reserve_disk(spec.path, spec.size_bytes)
                self._put("reserved", spec.name, chunk, None)
            except chunks.ReserveError as e:
                self._put("reserved", spec.name, None, str(e))
            except Exception as e:    # a bug, or the unforeseen: a shortfall, tried again
                self._put("reserved", spec.name, None, f"cannot reserve it: {e!r}")

    def _asker(self):
        warm_up = getattr(self.authorize, "warm_up", None)
        if warm_up is not None:
            try:
                warm_up()          # the first borrow should not pay for connecting to D-Bus
            except Exception as e:   # e.g. no jeepney: each borrow will ask (and be told) itself
                self._put("failed", f"getting ready to ask polkit failed: {e!r}; "
                          "each borrow will ask on its own")
        while (job := self._asks.get()) is not None:
            conn, pool_name, request = job
            try:
                allowed, why = self.authorize(conn.peer, pool_name)
            except Exception as e:     # a bug there must refuse one borrow, not stop them all
                allowed, why = False, f"the authorization failed: {e}"
            self._put("authorized", conn, pool_name, request, allowed, why)

    def _put(self, *result):
        self._results.put(result)
        try:
            os.write(self.wake_w, b"w")
        except BlockingIOError:
            pass                   # the loop is being woken anyway
