"""Protected loans, the daemon's side: which loans want protecting, and who waits for it.

The loop never waits on systemd: it tells the protect thread (protect.ProtectionWorker)
the whole wanted state after every lend and return, each time with a higher
generation, and the thread's result comes back through the loop's wake-up
pipe. A borrow without --fd frees its reservation, and hears so, only once a
result of its generation or later is in: protected, or unprotected and why
(a hung systemd costs it at most the SystemdUnits timeout). Which units a
loan protects (its chain) is kept on its connection and in systemd's store,
so a daemon after a restart protects what the last one did, and puts back
what ended meanwhile (protect.py's bases file).
"""

from holdingpen.pen import chunks, protect

NOT_MEMORY = "disk space needs no protection"
WAITING = "being protected"


class Protecting:
    """Args:
        protection: protect.Protection, or None where loans are not protected.
        off_reason: why protection is None (shown per loan by `holdingpen status`).
        events: events.Events.
        proc: where procfs is mounted.
        job_type: job_type(unit) -> "stop", "restart", ... or None (SystemdUnits.job_type
            on a connection of its own), asked once the loop has ended.
    """

    def __init__(self, protection, off_reason, events, proc="/proc", job_type=None):
        self.protection, self.off_reason = protection, off_reason
        self.events, self.proc, self.job_type = events, proc, job_type
        self.worker = None
        self.generation = 0
        self.done_generation = 0
        self.held = []             # (generation, conn, reply): borrowers waiting to hear
        self.why_not = {}          # loan key -> why its memory is not protected
        self.since = {}            # loan key -> the generation that first asked for it

    @property
    def on(self):
        return self.protection is not None

    def start(self, tell):
        """Start the protect thread; tell(generation, result) hands its results to the loop."""
        if self.on:
            self.worker = protect.ProtectionWorker(self.protection, tell)
            self.worker.start()

    def chain_for(self, peer, kind):
        """The units to protect for a loan of kind to peer, or None (journalled why)."""
        if not self.on or kind != chunks.MEMORY:
            return None
        try:
            return protect.chain_of_pid(peer.pid, self.proc)
        except protect.NotProtectable as e:
            self.events("unprotected", f"{peer.user}'s loan ({peer.comm}, pid {peer.pid}) "
                        f"is not protected: {e}", peer=peer)
            return None

    def want(self, loans):
        """Ask for systemd to match loans, [(key, chain or None, size_bytes)] for every
        live memory loan. Returns the generation asked for (0 when off)."""
        if self.worker is None:
            return 0
        self.generation += 1
        borrowers = protect.borrowers_of(loans)
        self.since = {b.key: self.since.get(b.key, self.generation) for b in borrowers}
        self.worker.want(self.generation, borrowers)
        return self.generation

    def want_live(self, conns, size_of):
        """want() for every live memory loan among conns (connection.Conn);
        size_of(loan_id) is a loan's size in bytes."""
        return self.want([(c.loan[1], c.units, size_of(c.loan[0]))
                          for c in conns if c.loan is not None and c.units])

    def hold(self, generation, conn, reply):
        """conn hears reply once the protection of generation is done."""
        self.held.append((generation, conn, reply))

    def done(self, generation, result, peers):
        """A result of the protect thread; peers is {loan key: peer.Peer} of the live
        loans. Returns [(conn, reply)] now free to hear, their loans protected or
        journalled why not."""
        self.done_generation = max(self.done_generation, generation)
        told = set(self.why_not.items())
        self.why_not = {key: why for key, why in result.unprotected.items() if key in peers}
        for key, why in self.why_not.items():
            if (key, why) not in told:     # said once, not again at every lend and return
                peer = peers[key]
                self.events("unprotected", f"{peer.user}'s loan ({peer.comm}, pid {peer.pid}) "
                            f"is not protected: {why}", peer=peer)
        for why in result.errors:
            self.events("unprotected", f"protecting loans: {why}")
        ready = [(conn, reply) for gen, conn, reply in self.held if gen <= generation]
        self.held = [entry for entry in self.held if entry[0] > generation]
        return ready

    def answered(self, generation, result, conns):
        """done() over the live connections: [(conn, reply)] free to hear now (a
        borrower that hung up meanwhile is left out: its reservation went back)."""
        peers = {c.loan[1]: c.peer for c in conns if c.loan is not None}
        return [(conn, reply) for conn, reply in self.done(generation, result, peers)
                if not conn.closed]

    def status_by_loan(self, conns):
        """protection(loan_id, kind): status_of() each loan, for policy.status_loans."""
        by_id = {c.loan[0]: c for c in conns if c.loan is not None}

        def protection(loan_id, kind):
            conn = by_id.get(loan_id)
            return self.status_of(conn and conn.loan[1], conn and conn.units, kind)
        return protection

    def status_of(self, key, chain, kind):
        """The "protected_units" and "unprotected" a loan shows in `holdingpen status`."""
        if kind != chunks.MEMORY:
            why = NOT_MEMORY
        elif not self.on:
            why = self.off_reason
        elif not chain:
            why = "its borrower is in no unit of a user's (see the journal)"
        elif key in self.why_not:
            why = self.why_not[key]
        elif self.since.get(key, 0) > self.done_generation:
            why = WAITING          # asked, no answer yet (a loan lent with --fd does not wait)
        else:
            why = None
        return {"protected_units": list(chain) if why is None else [], "unprotected": why,
                "protected": why is None}      # for metrics.py's holdingpen_loan_protected

    def protected_units(self, key, chain):
        """The units a loan protects now, as its `lent` entry says (empty if none)."""
        return [] if not chain or key in self.why_not else list(chain)

    def finish(self, timeout_s=5.0):
        """The loop has ended. A stop ends every loan, so put everything back; a restart
        or a kill keeps the protection, for the loans the next daemon adopts."""
        if self.worker is None:
            return
        try:
            stopping = self.job_type is not None and self.job_type("holdingpen.service") == "stop"
        except protect.SystemdError as e:
            self.events("unprotected", f"cannot tell a stop from a restart ({e}): the "
                        "protection stays, for the loans a restarted daemon adopts")
            stopping = False
        if stopping:
            self.worker.want(self.generation + 1, [])
        self.worker.stop(timeout_s)
