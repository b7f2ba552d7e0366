"""The pools of reservations as a state machine, with no I/O in it.

Theory of operation
-------------------
A pool keeps `count` reservations ("chunks") of `size_bytes` of one kind.
Each of its places is in exactly one state:

    held        a chunk is ready to lend (the shell's descriptor, opaque here)
    lent        a borrower has it, for as long as its connection lives
    reserving   the shell is making a chunk
    missing     none of the above: wanted() asks the shell to make one

and so held + lent + reserving + missing == count, always. The shell
(daemon.py) does the I/O and reports what happened through the verbs below;
the pool answers with decisions. A verb that does not fit the state raises
IllegalTransition and changes nothing.

A loan lives exactly as long as its connection: returned() makes its place
missing again, so the shell reserves a new chunk. Loans may outnumber count
for a while after a reload lowered it, or after a restart adopted them.
"""

from holdingpen.pen.sizes import format_size


class IllegalTransition(Exception):
    """A verb that does not fit the pool's state; the pool is unchanged."""


class Loan:
    """Who borrowed what: filled in by the shell from the kernel's peer credentials."""

    __slots__ = ("uid", "user", "pid", "command", "since", "size_bytes", "handed_fd")

    def __init__(self, uid, user, pid, command, since, size_bytes=0, handed_fd=False):
        self.uid, self.user, self.pid, self.command = uid, user, pid, command
        self.since, self.size_bytes, self.handed_fd = since, size_bytes, handed_fd

    def as_dict(self):
        return {a: getattr(self, a) for a in self.__slots__}


class Pool:
    """count chunks of size_bytes of one kind (spec: config.PoolSpec)."""

    def __init__(self, spec):
        self.spec = spec
        self.held = []         # chunks ready to lend, oldest first
        self.loans = {}        # loan id -> Loan
        self.reserving = 0
        self.shortfall = None  # why the last reservation failed, until one succeeds

    @property
    def name(self):
        return self.spec.name

    def is_reserving(self):
        return self.reserving > 0

    def is_empty(self):
        """Nothing held, lent or being made: a retired pool may go."""
        return not self.held and not self.loans and not self.reserving

    def has_loan(self, loan_id):
        return loan_id in self.loans

    def loan(self, loan_id):
        """The Loan of loan_id (KeyError if none)."""
        return self.loans[loan_id]

    def missing(self):
        return max(0, self.spec.count - len(self.held) - len(self.loans) - self.reserving)

    def start_reserving(self):
        """The shell starts making one chunk."""
        if self.missing() == 0:
            raise IllegalTransition(f"{self.name}: nothing is missing")
        self.reserving += 1

    def reserved(self, chunk, size_bytes):
        """A chunk of size_bytes the shell made. Returns chunks to release: itself if
        a reload changed the size meanwhile, others if it lowered the count."""
        if self.reserving == 0:
            raise IllegalTransition(f"{self.name}: no reservation under way")
        self.reserving -= 1
        self.shortfall = None
        if size_bytes != self.spec.size_bytes:
            return [chunk]
        self.held.append(chunk)
        return self._surplus()

    def failed(self, reason):
        """Making a chunk failed: the machine could not spare it, or an error."""
        if self.reserving == 0:
            raise IllegalTransition(f"{self.name}: no reservation under way")
        self.reserving -= 1
        self.shortfall = reason

    def adopt_chunk(self, chunk, size_bytes):
        """A chunk kept across a restart. Returns chunks to release (another size, beyond count)."""
        if size_bytes != self.spec.size_bytes:
            return [chunk]
        self.held.append(chunk)
        return self._surplus()

    def lend(self, loan_id, loan):
        """The oldest held chunk for loan_id, or None if none is held."""
        if loan_id in self.loans:
            raise IllegalTransition(f"{self.name}: loan {loan_id} exists already")
        if not self.held:
            return None
        loan.size_bytes = self.spec.size_bytes
        self.loans[loan_id] = loan
        return self.held.pop(0)

    def undo_lend(self, loan_id, chunk):
        """The hand-off failed and the chunk is still ours: held again, first in line."""
        if loan_id not in self.loans:
            raise IllegalTransition(f"{self.name}: no loan {loan_id}")
        del self.loans[loan_id]
        self.held.insert(0, chunk)

    def adopt_loan(self, loan_id, loan):
        """A loan kept across a restart. Returns held chunks to release (beyond count)."""
        if loan_id in self.loans:
            raise IllegalTransition(f"{self.name}: loan {loan_id} exists already")
        self.loans[loan_id] = loan
        return self._surplus()

    def returned(self, loan_id):
        """The borrower's connection closed."""
        if loan_id not in self.loans:
            raise IllegalTransition(f"{self.name}: no loan {loan_id}")
        del self.loans[loan_id]

    def reconfigure(self, spec):
        """Take a new spec (a reload); returns chunks to release.

        Held chunks of another size are all released (new ones of the new
        size will be made); loans stay until their connections close.
        """
        if spec.name != self.name:
            raise IllegalTransition(f"{self.name}: cannot become {spec.name}")
        release = []
        if spec.size_bytes != self.spec.size_bytes:
            release, self.held = self.held, []
        self.spec = spec
        return release + self._surplus()

    def _surplus(self):
        over = len(self.held) + len(self.loans) - self.spec.count
        if over <= 0:
            return []
        over = min(over, len(self.held))
        surplus, self.held = self.held[len(self.held) - over:], self.held[:len(self.held) - over]
        return surplus

    def snapshot(self):
        """The pool in plain data: what `holdingpen status --json` shows per pool."""
        return {"name": self.name, "kind": self.spec.kind, "path": self.spec.path,
                "size": self.spec.size_bytes, "count": self.spec.count,
                "held": len(self.held), "lent": len(self.loans), "reserving": self.reserving,
                "shortfall": self.shortfall}


def status_line(pools):
    """systemd's STATUS=: 'memory 1/2 held (2.0 GiB), 1 lent to alice (matlab); disk /var/tmp 1/1 held (10 GiB)'."""
    parts = []
    for pool in pools:
        where = pool.spec.kind + (f" {pool.spec.path}" if pool.spec.path else "")
        held = len(pool.held)
        part = f"{where} {held}/{pool.spec.count} held ({format_size(held * pool.spec.size_bytes)})"
        if pool.loans:
            first = next(iter(pool.loans.values()))
            others = len(pool.loans) - 1
            part += f", {len(pool.loans)} lent to {first.user} ({first.command})"
            part += f" and {others} other{'s' * (others > 1)}" if others else ""
        if pool.reserving:
            part += ", reserving"
        if pool.shortfall:
            part += f", short: {pool.shortfall}"
        parts.append(part)
    # Escape what is not printable: the borrower names its command, and sd_notify
    # takes a newline as the start of another assignment ("x\nSTOPPING=1").
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in "; ".join(parts))
