"""The Holding Pen daemon: keeps the pools full and lends from them.

Theory of operation
-------------------
One thread runs an event loop over the listening socket, the clients'
connections and a wake-up pipe (signals and the other threads write to it).
A second thread makes reservations, one at a time: allocating gigabytes
takes a while and must not stall clients. A third asks whether each borrow
is allowed: polkit takes milliseconds, and a hung polkitd must not stall the
loop until the watchdog kills it (workers.py has both). Only the loop thread
touches the policy (policy.py over pool.py), whose rules decide; this module
carries their decisions out, and tells systemd (sd_notify) and the journal
(events.py).

A loan lives exactly as long as its connection: when the client's side
closes (the command and everything that inherited the socket have exited),
the place is reserved again. Who a client is comes from the kernel
(SO_PEERCRED), never from what it says; every borrow passes through one
authorize(peer, pool_name) step.
"""

import errno
import os
import selectors
import signal
import socket
import time

from holdingpen.pen import adoption, chunks, config, headroom, protocol, workers
from holdingpen.pen.connection import Conn
from holdingpen.pen.peer import allow_connected, peer_of
from holdingpen.pen.policy import Policy, Refused, RefusalNotes
from holdingpen.pen.pool import Loan
from holdingpen.pen.ratelimit import Limits
from holdingpen.pen.sizes import format_size

MAX_CONNECTIONS = 4096        # beyond this a client is told "busy" at once
FILL_RATE_FLOOR_BPS = 256 << 20   # slowest fill we plan for, to ask systemd for more start time
COMMAND_REFRESH_S = 2.0       # how often loans' commands are read again from /proc
LOCK_MEMORY_ENV = "HOLDINGPEN_LOCK_MEMORY"   # "1": lock the pool even without swap (tests)


class Daemon:
    """The pools and the clients. run() until SIGTERM.

    Args:
        cfg: config.Config; config_path: where SIGHUP reloads it from.
        listener: the listening socket (ours or systemd's).
        notify: sd_notify (systemd.daemon.notify), or a no-op by hand.
        events: events.Events.
        store: fdstore.FdStore or fdstore.NoStore.
        authorize: authorize(peer, pool_name) -> (allowed, why not).
        proc: where procfs is mounted.
        environ: WATCHDOG_USEC, WATCHDOG_PID and LOCK_MEMORY_ENV come from here.
        send_fds: socket.send_fds, or a stand-in that sends less.
    """

    def __init__(self, cfg, config_path, listener, notify, events, store,
                 authorize=allow_connected, proc="/proc", environ=os.environ,
                 send_fds=socket.send_fds):
        self.config_path, self.listener, self.notify = config_path, listener, notify
        self.events, self.store, self.authorize, self.proc = events, store, authorize, proc
        self.send_fds = send_fds
        self.policy = Policy(cfg.pools)
        self.limits = cfg.limits
        self.per_user = Limits(cfg.limits["connections_per_user"],
                               cfg.limits["borrows_per_second"], cfg.limits["borrow_burst"])
        self.notes = RefusalNotes()
        self.conns = {}                # fd -> Conn
        self.stopping = self.reload_wanted = False
        # Where the machine has swap, the pool and what is lent from it stay locked in memory.
        self.lock_memory = (environ.get(LOCK_MEMORY_ENV) == "1"
                            or headroom.has_swap(headroom.read_meminfo(proc)))
        self.sel = selectors.DefaultSelector()
        self.workers = workers.Workers(authorize, self.lock_memory)
        self.status_text = None
        watchdog_usec = environ.get("WATCHDOG_USEC")
        self.watchdog_s = (int(watchdog_usec) / 2e6 if watchdog_usec and
                           environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())
                           else None)
        self.watchdog_at = self.commands_at = 0.0

    # ---- the loop ----

    def run(self):
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        signal.set_wakeup_fd(self.workers.wake_w, warn_on_full_buffer=False)
        self.workers.start()
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.sel.register(self.workers.wake_r, selectors.EVENT_READ, self._woken)
        adoption.adopt(self)
        self.events("started", f"started with {self.policy.status_line()}")
        while not self.stopping:
            now = time.monotonic()
            if self.reload_wanted:
                self.reload_wanted = False
                self._reload()
            self._expire(now)
            self._reserve_next(now)
            self._refresh_commands(now)
            self._tell_systemd(now)
            for key, mask in self.sel.select(self._timeout_s(now)):
                key.data(key.fileobj, mask)
        self.notify("STOPPING=1")
        self.events("stopping", "holdingpen stopping; reservations stay in systemd's store "
                    "when it restarts us")
        self.workers.stop()
        if self.workers.failed_for_good():
            raise SystemExit(f"holdingpen: {self.workers.failed_for_good()}")

    def _timeout_s(self, now):
        times = [c.deadline for c in self.conns.values() if c.deadline is not None]
        times += [t for t in [self.policy.next_retry_at()] if t is not None]
        if self.watchdog_s:
            times.append(self.watchdog_at)
        if self.policy.loan_pools:
            times.append(self.commands_at)
        return max(0.0, min(times) - now) if times else None

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self.reload_wanted = True
        else:
            self.stopping = True

    def _woken(self, fd, mask):
        for what, *result in self.workers.results():
            if what == "reserved":
                self._reservation_done(*result)
            elif what == "authorized":
                self._authorized(*result)
            else:                      # "failed": a worker's own trouble, told once
                self.events("failed", result[0])

    # ---- clients ----

    def _accept(self, listener, mask):
        for _ in range(64):        # a burst at a time, so connected clients are served too
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return         # out of descriptors: the client waits in the backlog
                raise
            sock.setblocking(False)
            conn = Conn(sock, peer_of(sock, self.proc),
                        time.monotonic() + self.limits["request_timeout_s"])
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, self._readable)
            peer = conn.peer
            if len(self.conns) > MAX_CONNECTIONS:
                self._fail(conn, protocol.BUSY, "too many connections; try again")
            elif not self.per_user.connect(peer.uid):
                limit = self.per_user.max_connections
                self._note_limited(peer, f"{peer.user} ({peer.comm}) has {limit} "
                                   "connections open already")
                self._fail(conn, protocol.LIMITED, f"you have {limit} connections open "
                           "already; close some first")
            else:
                conn.counted = True

    def _readable(self, sock, mask):
        conn = self.conns.get(sock.fileno())
        if conn is None:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if not mask & selectors.EVENT_READ or conn.closed:
            return
        try:
            data, fds, _, _ = socket.recv_fds(sock, protocol.MAX_LINE_BYTES + 1, 16)
        except BlockingIOError:
            return
        except OSError:
            return self._close(conn)
        for fd in fds:             # descriptors a client sends are never ours to keep
            os.close(fd)
        if not data:
            return self._close(conn)
        if conn.loan is not None or conn.close_when_sent or conn.checking:
            return                 # talk after the request changes nothing
        conn.reader.feed(data)
        try:
            line = conn.reader.next_line()
            if line is None:
                return
            conn.deadline = None
            request = protocol.decode_request(line)
        except protocol.BadRequest as e:
            if e.code != protocol.TOO_LONG:
                self.events("bad-client", f"bad request from {conn.peer.user} "
                            f"({conn.peer.comm}): {e.message}", peer=conn.peer)
            return self._fail(conn, e.code, e.message)
        if request.action == protocol.STATUS:
            conn.close_when_sent = True
            return self._send(conn, protocol.status_reply(
                self.policy.ready, self.policy.snapshots(), self.policy.status_loans(conn.peer.uid)))
        self._borrow(conn, request)

    def _borrow(self, conn, request):
        try:
            pool = self.policy.pool_for(request.kind)
        except Refused as e:
            return self._fail(conn, e.code, e.message)
        if not self.per_user.borrow(conn.peer.uid, time.monotonic()):
            self._note_limited(conn.peer, f"{conn.peer.user} ({conn.peer.comm}) borrows too often",
                               kind=pool.name)
            return self._fail(conn, protocol.LIMITED, "more than "
                              f"{self.per_user.rate:g} borrows a second; slow down")
        conn.checking = True       # polkit may take milliseconds, or hang: not on this thread
        self.workers.ask((conn, pool.name, request))

    def _authorized(self, conn, pool_name, request, allowed, why):
        conn.checking = False
        if conn.closed:            # it hung up while it was being checked: its pidfd is ours now
            return conn.peer.close()
        if not allowed:
            self.events("refused", f"{conn.peer.user} ({conn.peer.comm}) may not borrow "
                        f"{pool_name}: {why}", kind=pool_name, peer=conn.peer)
            return self._fail(conn, protocol.NOT_AUTHORIZED, why)
        self._lend(conn, pool_name, request)

    def _lend(self, conn, pool_name, request):
        peer = conn.peer
        loan = Loan(peer.uid, peer.user, peer.pid, peer.comm, time.time(), handed_fd=request.fd)
        try:
            loan_id, chunk = self.policy.lend(pool_name, loan)
        except Refused as e:
            return self._fail(conn, e.code, e.message)
        self.store.remove(chunk.store_name)
        # The loan is the connection's, in systemd's store too, before the client hears
        # of it, and marked answered once it has: a daemon killed in between leaves
        # neither a borrower it forgot nor one left waiting, as the next one answers
        # what is unanswered (adoption.py). A hand-off that fails returns the chunk.
        store_name = self.store.new_name("loan")
        conn.loan, conn.answered = (loan_id, store_name), False
        self.store.add(store_name, conn.sock.fileno(),
                       {"pool": pool_name, **loan.as_dict(), "answered": False})
        reply = protocol.borrow_reply(pool_name, chunk.size_bytes, request.fd)
        if request.fd:
            conn.chunk = chunk     # until it is handed over, and while locked, for the loan
            return self._send(conn, reply, [chunk.fd])    # journalled once handed over
        chunk.close()              # the memory is free before the client hears so
        self._journal_lent(conn, loan_id)
        self._send(conn, reply)

    def _journal_lent(self, conn, loan_id):
        pool_name = self.policy.pool_name_of(loan_id)
        loan, peer = self.policy.pools[pool_name].loan(loan_id), conn.peer
        self.events("lent", f"lent {format_size(loan.size_bytes)} of {pool_name} to "
                    f"{peer.user} ({peer.comm}, pid {peer.pid})"
                    + (", as a descriptor" if loan.handed_fd else ""),
                    kind=pool_name, size_bytes=loan.size_bytes, peer=peer)

    def _note_limited(self, peer, message, kind=None):
        unsaid = self.notes.note(peer.uid, time.monotonic())
        if unsaid is None:
            return
        if unsaid:
            message += f" ({unsaid} more such refusals in the last {self.notes.quiet_s:g} s)"
        self.events("refused", message, kind=kind, peer=peer)

    def _fail(self, conn, code, message):
        conn.close_when_sent = True
        self._send(conn, protocol.error_reply(code, message))

    def _send(self, conn, data, fds=()):
        conn.queue(data, fds)
        self._flush(conn)

    def _flush(self, conn):
        try:
            done = conn.flush(self.send_fds)
        except OSError:
            done = None            # gone; but what went before the error is the client's
        if conn.loan is not None and not conn.answered and not conn.fds_pending():
            conn.answered = True   # the reply is out, or all but what the socket holds back
            self.store.update(conn.loan[1], answered=True)
            if conn.chunk is not None:           # handed over as a descriptor
                self._journal_lent(conn, conn.loan[0])
                conn.chunk.keep_mapping_only()   # the client's copy is the one it uses
        if done is None:
            return self._close(conn)
        if not done:
            return self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                   self._readable)
        if conn.close_when_sent:
            return self._close(conn)
        if self.sel.get_key(conn.sock).events & selectors.EVENT_WRITE:
            self.sel.modify(conn.sock, selectors.EVENT_READ, self._readable)

    def _close(self, conn):
        if conn.closed:
            return
        conn.closed = True
        del self.conns[conn.sock.fileno()]
        self.sel.unregister(conn.sock)
        conn.sock.close()
        if not conn.checking:      # else the asker may poll its pidfd: closed when it answers
            conn.peer.close()
        if conn.counted:
            self.per_user.disconnect(conn.peer.uid)
        if conn.loan is None:
            return
        loan_id, store_name = conn.loan
        self.store.remove(store_name)
        if conn.fds_pending():     # it went away mid hand-off: the chunk is still ours
            pool_name = self.policy.pool_name_of(loan_id)
            self.policy.undo_lend(loan_id, conn.chunk)
            return self._store_chunk(pool_name, conn.chunk)
        name, loan = self.policy.returned(loan_id)
        if conn.chunk is not None:
            conn.chunk.close()
        self.events("returned", f"{loan.user} ({loan.command}) returned "
                    f"{format_size(loan.size_bytes)} of {name}", kind=name,
                    size_bytes=loan.size_bytes, peer=conn.peer)

    def _expire(self, now):
        for conn in list(self.conns.values()):
            if conn.deadline is not None and now >= conn.deadline:
                conn.deadline = None
                self._fail(conn, protocol.TIMEOUT, "no request within "
                           f"{self.limits['request_timeout_s']:g} s of connecting")

    # ---- reservations ----

    def _reserve_next(self, now):
        spec = self.policy.next_reservation(now)
        if spec is None:
            return
        if spec.kind == chunks.MEMORY:
            problem = headroom.memory_shortfall(headroom.read_meminfo(self.proc), spec.size_bytes)
            if problem:
                return self._reservation_done(spec.name, None, problem)
        if not self.policy.ready:   # a large pool takes a while to fill: ask systemd to wait
            usec = int((spec.size_bytes / FILL_RATE_FLOOR_BPS + 10) * 1e6)
            self.notify(f"EXTEND_TIMEOUT_USEC={usec}")
        self.workers.reserve(spec)

    def _reservation_done(self, name, chunk, problem):
        if chunk is None:
            delay_s = self.policy.failed(name, problem, time.monotonic())
            return self.events("shortfall", f"{name}: {problem}; trying again in {delay_s:.0f} s",
                               kind=name, size_bytes=self.policy.pools[name].spec.size_bytes)
        released = self.policy.reserved(name, chunk, chunk.size_bytes)
        self._release(released)
        if chunk not in [c for _, c in released]:
            self._store_chunk(name, chunk)
            self.events("reserved", f"reserved {format_size(chunk.size_bytes)} of {name}",
                        kind=name, size_bytes=chunk.size_bytes)

    def _store_chunk(self, pool_name, chunk):
        chunk.store_name = self.store.new_name("chunk")
        self.store.add(chunk.store_name, chunk.fd, {"pool": pool_name})

    def _release(self, released):
        for pool_name, chunk in released:
            if chunk.store_name:
                self.store.remove(chunk.store_name)
            chunk.close()
            self.events("released", f"released {format_size(chunk.size_bytes)} of {pool_name}",
                        kind=pool_name, size_bytes=chunk.size_bytes)

    # ---- systemd ----

    def _refresh_commands(self, now):
        """Loans show the borrower's command as it is now: gatekeeper has become CMD."""
        if now < self.commands_at:
            return
        self.commands_at = now + COMMAND_REFRESH_S
        for loan_id, _, loan in self.policy.loans():
            try:
                with open(f"{self.proc}/{loan.pid}/comm", errors="replace") as f:
                    self.policy.set_command(loan_id, f.read().strip())
            except OSError:
                pass              # gone: its connection's close will tell us soon

    def _tell_systemd(self, now):
        if self.policy.became_ready():
            self.notify("READY=1")
        text = self.policy.status_line()
        if text != self.status_text:
            self.status_text = text
            self.notify(f"STATUS={text}")
        if self.watchdog_s and now >= self.watchdog_at:
            # A worker thread that died leaves borrows or refills waiting for ever:
            # no more WATCHDOG=1, so systemd restarts us (the store keeps the loans).
            if not self.workers.failed_for_good():
                self.notify("WATCHDOG=1")
            self.watchdog_at = now + self.watchdog_s
        elif not self.watchdog_s and self.workers.failed_for_good():
            self.stopping = True      # run by hand: no watchdog to stop; exit, and say why

    def _reload(self):
        self.notify("RELOADING=1")
        try:
            cfg = config.load(self.config_path)
        except config.ConfigError as e:
            self.events("config-refused", f"reload refused, keeping the running configuration: {e}")
            self.notify("READY=1")
            return
        self.limits = cfg.limits
        self.per_user.max_connections = cfg.limits["connections_per_user"]
        self.per_user.rate = cfg.limits["borrows_per_second"]
        self.per_user.burst = cfg.limits["borrow_burst"]
        if hasattr(self.authorize, "configure"):
            self.authorize.configure(cfg.authorize["users"], cfg.authorize["groups"], cfg.source)
        self._release(self.policy.reconfigure(cfg.pools))
        self.events("reloaded", f"configuration reloaded from {cfg.source}: "
                    f"{', '.join(self.policy.names())}")
        self.notify("READY=1")


def bind(path):
    """Listen on path ourselves (run by hand, or --socket).

    Raises:
        OSError: path is taken by a live daemon, or cannot be bound.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
        raise OSError(errno.EADDRINUSE, f"another daemon is listening on {path}")
    except (FileNotFoundError, ConnectionRefusedError):
        if os.path.lexists(path):
            os.unlink(path)      # a socket file left by a daemon that died
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    os.chmod(path, 0o666)        # as SocketMode= in holdingpen.socket: the mode decides who may ask
    sock.listen(1024)
    return sock
