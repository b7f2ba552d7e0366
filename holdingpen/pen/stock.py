"""The pools' chunks made real: reserving them, keeping them in systemd's store, releasing them.

The policy (policy.py) decides which pool to fill and what to release; this
carries it out: the reservation itself runs on the reserver thread
(workers.py), memory only while the machine can spare it (headroom.py), and
every chunk held is in systemd's descriptor store under the name it carries.
"""

import time

from holdingpen.pen import chunks, headroom
from holdingpen.pen.sizes import format_size

FILL_RATE_FLOOR_BPS = 256 << 20   # slowest fill we plan for, to ask systemd for more start time


class Stock:
    """Args: policy (policy.Policy), store (fdstore), events, notify (sd_notify),
    workers (workers.Workers), proc (where procfs is mounted)."""

    def __init__(self, policy, store, events, notify, workers, proc):
        self.policy, self.store, self.events = policy, store, events
        self.notify, self.workers, self.proc = notify, workers, proc

    def reserve_next(self, now):
        """Start the reservation the policy wants now, if any."""
        spec = self.policy.next_reservation(now)
        if spec is None:
            return
        if spec.kind == chunks.MEMORY:
            problem = headroom.memory_shortfall(headroom.read_meminfo(self.proc), spec.size_bytes)
            if problem:
                return self.reservation_done(spec.name, None, problem)
        if not self.policy.ready:   # a large pool takes a while to fill: ask systemd to wait
            usec = int((spec.size_bytes / FILL_RATE_FLOOR_BPS + 10) * 1e6)
            self.notify(f"EXTEND_TIMEOUT_USEC={usec}")
        self.workers.reserve(spec)

    def reservation_done(self, name, chunk, problem):
        """The reserver made chunk for pool name, or could not (problem says why)."""
        if chunk is None:
            delay_s = self.policy.failed(name, problem, time.monotonic())
            return self.events("shortfall", f"{name}: {problem}; trying again in {delay_s:.0f} s",
                               kind=name, size_bytes=self.policy.spec(name).size_bytes)
        released = self.policy.reserved(name, chunk, chunk.size_bytes)
        self.release(released)
        if chunk not in [c for _, c in released]:
            self.keep(name, chunk)
            self.events("reserved", f"reserved {format_size(chunk.size_bytes)} of {name}",
                        kind=name, size_bytes=chunk.size_bytes)

    def keep(self, pool_name, chunk):
        """Put a held chunk in systemd's store, under a name it carries."""
        chunk.store_name = self.store.new_name("chunk")
        self.store.add(chunk.store_name, chunk.fd, {"pool": pool_name})

    def release(self, released):
        """Give back [(pool name, chunk)]: out of the store, closed, journalled."""
        for pool_name, chunk in released:
            if chunk.store_name:
                self.store.remove(chunk.store_name)
            chunk.close()
            self.events("released", f"released {format_size(chunk.size_bytes)} of {pool_name}",
                        kind=pool_name, size_bytes=chunk.size_bytes)
