"""A loan's life in the shell: lent, answered, handed over, returned; in systemd's store throughout.

The loan is the connection's, in systemd's store too, before the client
hears of it, and marked answered once it has: a daemon killed in between
leaves neither a borrower it forgot nor one left waiting, as the next one
answers what is unanswered (adoption.py). A reservation lent as a descriptor
stays with the connection until it has gone out with the reply (if the
client goes first, it is held again), and after that its locked mapping
stays for as long as the loan (memory where there is swap).

A memory loan made while loans are protected (protecting.py) records the
borrower's units with the loan; without a descriptor its reservation is
kept, and the reply held, until they are protected (release()).

gatekeeper borrows before it execs the command, so the journal names the
command that actually ran as the kernel tells it: a "running" entry when the
loan's process has exec'd something else, and the "returned" entry carries
HOLDINGPEN_COMMAND, read from /proc while the process was still there.
"""

import time

from holdingpen.pen import protocol
from holdingpen.pen.pool import Loan
from holdingpen.pen.sizes import format_size

EXEC_LOOK_S = 0.1     # after a loan is answered, when to look whether gatekeeper has exec'd CMD


class Lending:
    """Args: policy (policy.Policy), store (fdstore), events, stock (stock.Stock), proc,
    protecting (protecting.Protecting)."""

    def __init__(self, policy, store, events, stock, proc, protecting):
        self.policy, self.store, self.events, self.stock, self.proc = policy, store, events, stock, proc
        self.protecting = protecting
        self.look_at = None        # when (monotonic) to read loans' commands soon, or None

    def lend(self, conn, pool_name, request):
        """Lend from pool_name to conn. Returns (reply, descriptors to send with it);
        conn.waiting says the reply must wait for the loan's protection (release()).

        Raises:
            policy.Refused: nothing to lend (or no such pool any more).
        """
        peer = conn.peer
        loan = Loan(peer.uid, peer.user, peer.pid, peer.comm, time.time(), handed_fd=request.fd)
        loan_id, chunk = self.policy.lend(pool_name, loan)
        self.store.remove(chunk.store_name)
        store_name = self.store.new_name("loan")
        conn.loan, conn.answered = (loan_id, store_name), False
        conn.units = self.protecting.chain_for(peer, self.policy.spec(pool_name).kind)
        self.store.add(store_name, conn.sock.fileno(),
                       {"pool": pool_name, **loan.as_dict(), "answered": False,
                        "units": list(conn.units) if conn.units else None})
        reply = protocol.borrow_reply(pool_name, chunk.size_bytes, request.fd)
        if request.fd:
            conn.chunk = chunk     # journalled once handed over (answered())
            return reply, [chunk.fd]
        if conn.units:
            conn.chunk, conn.waiting = chunk, True   # freed once its units are protected
            return reply, []
        chunk.close()              # the memory is free before the client hears so
        self._journal_lent(conn)
        return reply, []

    def release(self, conn):
        """conn's loan is protected (or journalled why not): free its reservation, so
        that the client may now hear so."""
        conn.waiting = False
        conn.chunk.close()
        conn.chunk = None
        self._journal_lent(conn)

    def answered(self, conn):
        """What was queued for conn went out, or at least its descriptors did."""
        if conn.loan is None or conn.answered or conn.fds_pending():
            return
        conn.answered = True
        self.store.update(conn.loan[1], answered=True)
        if self.look_at is None:
            self.look_at = time.monotonic() + EXEC_LOOK_S
        if conn.chunk is not None:           # handed over as a descriptor
            self._journal_lent(conn)
            conn.chunk.keep_mapping_only()   # the client's copy is the one it uses

    def ended(self, conn):
        """conn closed: its loan returns (or, not handed over yet, its chunk is held again)."""
        if conn.loan is None:
            return
        loan_id, store_name = conn.loan
        self._refresh(conn)        # a command that ran for less than a refresh is named too
        self.store.remove(store_name)
        if conn.fds_pending() or conn.waiting:   # gone before it had it: the chunk is ours
            pool_name = self.policy.pool_name_of(loan_id)
            self.policy.undo_lend(loan_id, conn.chunk)
            return self.stock.keep(pool_name, conn.chunk)
        name, loan = self.policy.returned(loan_id)
        if conn.chunk is not None:
            conn.chunk.close()
        self.events("returned", f"{loan.user} ({loan.command}) returned "
                    f"{format_size(loan.size_bytes)} of {name}", kind=name,
                    size_bytes=loan.size_bytes, peer=conn.peer, command=loan.command)

    def refresh_commands(self, conns):
        """Loans show the borrower's command as it is now: gatekeeper has become CMD.

        Args: conns: the open connections (those with a loan are looked at).
        """
        self.look_at = None
        for conn in conns:
            if conn.loan is not None:
                self._refresh(conn)

    def _refresh(self, conn):
        loan_id, store_name = conn.loan
        loan = self.policy.loan(loan_id)
        command = command_of(conn.peer, self.proc)
        if command is None or command == loan.command:
            return                 # gone (its close tells us soon), or the same
        was = loan.command
        self.policy.set_command(loan_id, command)
        self.store.update(store_name, command=command)   # a restart says no more of it
        name = self.policy.pool_name_of(loan_id)
        self.events("running", f"{loan.user}'s loan of {format_size(loan.size_bytes)} of "
                    f"{name} (pid {loan.pid}) now runs {command}, was {was}", kind=name,
                    size_bytes=loan.size_bytes, peer=conn.peer, command=command)

    def _journal_lent(self, conn):
        pool_name = self.policy.pool_name_of(conn.loan[0])
        loan, peer = self.policy.loan(conn.loan[0]), conn.peer
        units = self.protecting.protected_units(conn.loan[1], conn.units)
        self.events("lent", f"lent {format_size(loan.size_bytes)} of {pool_name} to "
                    f"{peer.user} ({peer.comm}, pid {peer.pid})"
                    + (", as a descriptor" if loan.handed_fd else "")
                    + (f"; protecting {', '.join(units)}" if units else ""),
                    kind=pool_name, size_bytes=loan.size_bytes, peer=peer,
                    **({"protected_units": " ".join(units)} if units else {}))


def command_of(peer, proc="/proc"):
    """peer's command (comm) now, as the kernel says; None once its pid is not peer's.

    A process that has exited keeps its comm until it is reaped; the start time,
    read before and after, says the pid has not been reused for another.
    """
    try:
        before = _start_time(peer.pid, proc)
        with open(f"{proc}/{peer.pid}/comm", errors="replace") as f:   # a name is any bytes
            command = f.read().strip()
        if peer.start_time is None or not before == _start_time(peer.pid, proc) == peer.start_time:
            return None
    except (OSError, ValueError, IndexError):
        return None
    return command


def _start_time(pid, proc):
    with open(f"{proc}/{pid}/stat", errors="replace") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])
