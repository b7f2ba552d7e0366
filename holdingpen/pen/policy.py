"""The daemon's policy over all its pools, with no I/O in it: verbs in, decisions out.

Theory of operation
-------------------
pool.py keeps the rules of one pool; this module keeps the rules across
them, which the shell (daemon.py) only carries out:

* which pool to fill next: the first missing a chunk whose back-off is over,
  one reservation at a time; after a failure it waits RETRY_FIRST_S,
  doubling up to RETRY_MAX_S;
* when the daemon counts as ready: nothing in flight, and every pool full or
  waiting out a back-off;
* which pool a requested kind means ("memory", "disk", "disk:PATH"), and the
  words for a pool with nothing to lend;
* loans, numbered here, and which pool each belongs to;
* a reload: pools kept are reconfigured, pools removed retire (count 0) and
  are forgotten once nothing of theirs is held, lent or being made; a
  retiring pool is never lent from and no kind names it;
* who may see whose command in status; how often a user over a limit is
  journalled.

Time is passed in (now, monotonic seconds), never read. A verb that does not
fit the state raises pool.IllegalTransition and changes nothing. Chunks are
opaque here, as in pool.py. Decisions that release chunks return a list of
(pool name, chunk) for the shell to close and journal.
"""

from holdingpen.pen import config, protocol
from holdingpen.pen.pool import IllegalTransition, Pool, status_line

RETRY_FIRST_S = 1.0           # after a shortfall, try again after this, doubling ...
RETRY_MAX_S = 60.0            # ... up to this
LIMITED_NOTE_S = 10.0         # journal a user over a limit at most this often


class Refused(Exception):
    """A borrow the policy refuses: code (protocol.*) and a message for the client."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


class Policy:
    """The pools (specs: config.PoolSpec each, in configuration order)."""

    def __init__(self, specs):
        self.pools = {spec.name: Pool(spec) for spec in specs}
        self.retiring = set()     # names of pools a reload removed, until they are empty
        self.loan_pools = {}      # loan id -> pool name
        self.next_loan = 1
        self.retry_at = {}        # pool name -> when its back-off is over
        self.retry_s = {}         # pool name -> its back-off
        self.in_flight = None     # the pool a reservation is being made for
        self.ready = False

    # ---- kinds ----

    def pool_for(self, kind):
        """The pool a borrow of kind means: its name, "disk" (the first disk pool) or
        "disk:PATH" (any spelling of PATH).

        Raises:
            Refused: UNKNOWN_KIND, naming the pools there are.
        """
        if kind == config.DISK:
            name = next((n for n in self._active() if self.pools[n].spec.kind == config.DISK), None)
        elif kind.startswith(config.DISK + ":") and kind[5:].startswith("/"):
            name = f"{config.DISK}:{config.normal_path(kind[5:])}"
        else:
            name = kind
        if name not in self._active():
            raise Refused(protocol.UNKNOWN_KIND,
                          f"no {kind} pool; there are: {', '.join(self._active())}")
        return self.pools[name]

    def _active(self):
        return [name for name in self.pools if name not in self.retiring]

    def why_empty(self, pool):
        if pool.shortfall:
            return f"no {pool.name} reservation is held: {pool.shortfall}"
        if pool.is_reserving() or pool.missing():
            return f"no {pool.name} reservation is held yet; one is being made"
        if pool.spec.count == 0:
            return f"the {pool.name} pool keeps no reservations"
        if pool.spec.count == 1:
            return f"the one {pool.name} reservation is lent"
        return f"all {pool.spec.count} {pool.name} reservations are lent"

    # ---- loans ----

    def lend(self, pool_name, loan):
        """Lend the oldest chunk of pool_name to loan. Returns (loan id, chunk).

        Raises:
            Refused: UNKNOWN_KIND if a reload removed the pool meanwhile,
                POOL_EMPTY if it holds nothing just now.
        """
        if pool_name not in self._active():
            raise Refused(protocol.UNKNOWN_KIND, f"no {pool_name} pool any more")
        pool = self.pools[pool_name]
        loan_id = self.next_loan
        chunk = pool.lend(loan_id, loan)
        if chunk is None:
            raise Refused(protocol.POOL_EMPTY, self.why_empty(pool))
        self.next_loan += 1
        self.loan_pools[loan_id] = pool_name
        return loan_id, chunk

    def undo_lend(self, loan_id, chunk):
        """The hand-off failed: the chunk is held again, first in line."""
        self._pool_of(loan_id).undo_lend(loan_id, chunk)
        del self.loan_pools[loan_id]

    def adopt_loan(self, pool_name, loan):
        """A loan kept across a restart. Returns (loan id, releases).

        Raises:
            KeyError: no such pool.
        """
        pool = self.pools[pool_name]
        loan_id = self.next_loan
        surplus = pool.adopt_loan(loan_id, loan)
        self.next_loan += 1
        self.loan_pools[loan_id] = pool_name
        return loan_id, [(pool_name, chunk) for chunk in surplus]

    def returned(self, loan_id):
        """The borrower's connection closed. Returns (pool name, its Loan)."""
        pool = self._pool_of(loan_id)
        loan = pool.loan(loan_id)
        pool.returned(loan_id)
        del self.loan_pools[loan_id]
        self._forget_if_retired(pool.name)
        return pool.name, loan

    def loans(self):
        """Every loan: (loan id, pool name, Loan), oldest pool first."""
        return [(loan_id, pool.name, pool.loan(loan_id))
                for pool in self.pools.values() for loan_id in pool.loans]

    def set_command(self, loan_id, command):
        """What the borrower runs now (gatekeeper has become CMD)."""
        self._pool_of(loan_id).loan(loan_id).command = command

    def pool_name_of(self, loan_id):
        return self._pool_of(loan_id).name

    def loan(self, loan_id):
        """The Loan of loan_id."""
        return self._pool_of(loan_id).loan(loan_id)

    def has_loans(self):
        return bool(self.loan_pools)

    def _pool_of(self, loan_id):
        if loan_id not in self.loan_pools:
            raise IllegalTransition(f"no loan {loan_id}")
        return self.pools[self.loan_pools[loan_id]]

    # ---- reservations ----

    def next_reservation(self, now):
        """The spec of the pool to make a chunk for now, or None; it is then in flight."""
        if self.in_flight is not None:
            return None
        for pool in self.pools.values():
            if pool.missing() and now >= self.retry_at.get(pool.name, 0.0):
                pool.start_reserving()
                self.in_flight = pool.name
                return pool.spec
        return None

    def reserved(self, pool_name, chunk, size_bytes):
        """The chunk in flight was made. Returns releases (itself if unwanted now)."""
        self._end_flight(pool_name)
        pool = self.pools.get(pool_name)
        if pool is None:
            return [(pool_name, chunk)]
        self.retry_s.pop(pool_name, None)
        self.retry_at.pop(pool_name, None)
        released = [(pool_name, c) for c in pool.reserved(chunk, size_bytes)]
        self._forget_if_retired(pool_name)
        return released

    def failed(self, pool_name, problem, now):
        """The chunk in flight could not be made. Returns the back-off in seconds."""
        self._end_flight(pool_name)
        pool = self.pools[pool_name]
        pool.failed(problem)
        delay_s = min(RETRY_MAX_S, self.retry_s.get(pool_name, RETRY_FIRST_S / 2) * 2)
        self.retry_s[pool_name] = delay_s
        self.retry_at[pool_name] = now + delay_s
        self._forget_if_retired(pool_name)
        return delay_s

    def _end_flight(self, pool_name):
        if self.in_flight != pool_name:
            raise IllegalTransition(f"no reservation in flight for {pool_name}")
        self.in_flight = None

    def adopt_chunk(self, pool_name, chunk, size_bytes):
        """A chunk kept across a restart. Returns releases.

        Raises:
            KeyError: no such pool.
        """
        return [(pool_name, c) for c in self.pools[pool_name].adopt_chunk(chunk, size_bytes)]

    def next_retry_at(self):
        """When a back-off that matters ends (monotonic), or None."""
        times = [t for name, t in self.retry_at.items()
                 if name in self.pools and self.pools[name].missing()]
        return min(times, default=None)

    def became_ready(self):
        """True once: when nothing is in flight and every pool is full or backing off."""
        if self.ready or self.in_flight is not None:
            return False
        if all(not p.missing() or p.name in self.retry_at for p in self.pools.values()):
            self.ready = True
            return True
        return False

    # ---- reload ----

    def reconfigure(self, specs):
        """A reload's new pools. Returns releases.

        Kept pools take their new spec; removed ones retire with their loans;
        new ones start empty (to be filled); every back-off starts again.
        """
        wanted = {spec.name: spec for spec in specs}
        released = []
        for name, pool in list(self.pools.items()):
            if name in wanted:
                self.retiring.discard(name)
                released += [(name, c) for c in pool.reconfigure(wanted[name])]
            else:
                spec = pool.spec
                released += [(name, c) for c in pool.reconfigure(
                    config.PoolSpec(spec.kind, spec.size_bytes, 0, spec.path))]
                self.retiring.add(name)
                self._forget_if_retired(name)
        # In the configuration's order ("disk" is its first disk pool), retiring ones last.
        self.pools = {**{name: self.pools.get(name) or Pool(spec) for name, spec in wanted.items()},
                      **{name: pool for name, pool in self.pools.items() if name not in wanted}}
        self.retry_at.clear()
        return released

    def _forget_if_retired(self, name):
        if name in self.retiring and self.pools[name].is_empty():
            del self.pools[name]
            self.retiring.discard(name)
            self.retry_at.pop(name, None)
            self.retry_s.pop(name, None)

    # ---- what people see ----

    def status_loans(self, uid, protection=None):
        """The loans as `holdingpen status` lists them for uid: other users'
        commands are shown to root only. protection(loan_id, kind), if given,
        adds its keys to each ("protected_units", "unprotected")."""
        return [{"kind": name, "user": loan.user, "uid": loan.uid, "pid": loan.pid,
                 "command": loan.command if uid in (0, loan.uid) else None,
                 "since": loan.since, "size": loan.size_bytes, "fd": loan.handed_fd,
                 **(protection(loan_id, self.pools[name].spec.kind) if protection else {})}
                for loan_id, name, loan in self.loans()]

    def snapshots(self):
        return [pool.snapshot() for pool in self.pools.values()]

    def status_line(self):
        return status_line(self.pools.values())

    def names(self):
        return list(self.pools)

    def spec(self, pool_name):
        """The config.PoolSpec of pool_name (KeyError if there is none)."""
        return self.pools[pool_name].spec


def counted(n, noun):
    """'1 loan', '2 loans': a number and its noun, in English."""
    return f"{n} {noun}{'s' * (n != 1)}"


class RefusalNotes:
    """Journal a user over a limit once per LIMITED_NOTE_S, with a count of the
    rest, so a flood cannot flood the journal too (and push others' entries out
    of journald's rate limit)."""

    def __init__(self, quiet_s=LIMITED_NOTE_S):
        self.quiet_s = quiet_s
        self.notes = {}           # uid -> (quiet until, refusals not journalled)

    def note(self, uid, now, message):
        """message to journal now, with a count of the refusals not journalled since
        the last; or None: say nothing now."""
        until, unsaid = self.notes.get(uid, (0.0, 0))
        if now < until:
            self.notes[uid] = (until, unsaid + 1)
            return None
        self.notes[uid] = (now + self.quiet_s, 0)
        if unsaid:
            message += f" ({counted(unsaid, 'more such refusal')} in the last {self.quiet_s:g} s)"
        return message
