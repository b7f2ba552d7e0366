"""Taking back what systemd's descriptor store kept for the daemon across a restart.

Chunks ("chunk.N") go back to their pools, if they still fit them; loans
("loan.N", the borrower's connection) go back to their pools and to the
loop; anything else is dropped. A borrower the last run recorded but did not
answer (it was killed in between) is answered now.
"""

import os
import selectors
import socket
import time

from holdingpen.pen import chunks, protocol
from holdingpen.pen.connection import Conn
from holdingpen.pen.peer import peer_of
from holdingpen.pen.policy import counted
from holdingpen.pen.pool import Loan


def adopt(daemon):
    """Adopt daemon.store.passed into daemon (a Daemon whose loop is about to start)."""
    chunks_n = loans_n = dropped = 0
    unanswered = []
    for name, fd, facts in daemon.store.passed:
        pool_name = (facts or {}).get("pool")
        if pool_name not in daemon.policy.names():
            pass
        elif name.startswith("chunk."):
            chunk = _chunk(fd, daemon.policy.spec(pool_name), daemon.lock_memory)
            if chunk is not None:
                chunk.store_name = name
                daemon.stock.release(daemon.policy.adopt_chunk(pool_name, chunk, chunk.size_bytes))
                chunks_n += 1
                continue
            fd = None              # closed by _chunk
        elif name.startswith("loan."):
            conn = _loan(daemon, name, fd, pool_name, facts)
            if facts.get("answered") is False:
                unanswered.append(conn)
            loans_n += 1
            continue
        daemon.store.remove(name)
        if fd is not None:
            os.close(fd)
        dropped += 1
    if chunks_n or loans_n or dropped:
        daemon.events("adopted", f"kept across the restart: {counted(chunks_n, 'reservation')}, "
                      f"{counted(loans_n, 'loan')}; dropped {dropped} that no longer fit"
                      + (f"; answering {counted(len(unanswered), 'borrower')} the last run did not"
                         if unanswered else ""),
                      chunks=chunks_n, loans=loans_n, unanswered=len(unanswered))
    for conn in unanswered:
        _answer(daemon, conn)


def _chunk(fd, spec, lock_memory):
    """A Chunk around fd if it is a reservation that fits spec; else None, fd closed."""
    try:
        chunk = chunks.adopt(fd, lock_memory)
    except (chunks.ReserveError, OSError):
        os.close(fd)
        return None
    if chunk.kind == spec.kind == chunks.MEMORY or (
            chunk.kind == spec.kind == chunks.DISK and chunks.same_filesystem(chunk, spec.path)):
        return chunk
    chunk.close()
    return None


def _loan(daemon, name, fd, pool_name, facts):
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    peer = peer_of(sock, daemon.proc)
    loan = Loan(peer.uid, peer.user, peer.pid, facts.get("command", peer.comm),
                facts.get("since", time.time()), daemon.policy.spec(pool_name).size_bytes,
                facts.get("handed_fd", False))
    loan_id, released = daemon.policy.adopt_loan(pool_name, loan)
    daemon.stock.release(released)
    conn = Conn(sock, peer, None)
    conn.loan = (loan_id, name)
    conn.units = tuple(facts["units"]) if facts.get("units") else None   # protected still
    daemon.conns[sock.fileno()] = conn
    daemon.sel.register(sock, selectors.EVENT_READ, daemon._readable)
    return conn


def _answer(daemon, conn):
    """Answer a borrower whose daemon was killed after recording its loan but
    before saying so. Without "fd" the reservation was freed for it already: it
    has it. A descriptor went down with the daemon that held it: ask again; the
    loan ends when the client hangs up (if it did get the descriptor after all,
    it keeps it, and the loan too). A client answered just before the kill gets
    this second line unread, after the first."""
    loan_id, store_name = conn.loan
    pool_name, loan = daemon.policy.pool_name_of(loan_id), daemon.policy.loan(loan_id)
    if loan.handed_fd:
        data = protocol.error_reply(protocol.BUSY, "the daemon restarted while handing "
                                    "the reservation over; ask again")
        daemon.metrics.refused(protocol.BUSY)
    else:
        data = protocol.borrow_reply(pool_name, loan.size_bytes, False)
    daemon._send(conn, data)
    daemon.store.update(store_name, answered=True)
