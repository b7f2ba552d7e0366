"""The Holding Pen daemon: keeps the pools full and lends from them.

Theory of operation
-------------------
One thread runs an event loop over the listening socket, the clients'
connections and a wake-up pipe (signals and the other threads write to it).
A second thread makes reservations, one at a time: allocating gigabytes
takes a while and must not stall clients. A third asks whether each borrow
is allowed: polkit takes milliseconds, and a hung polkitd must not stall the
loop until the watchdog kills it. Only the loop thread touches the
pools (pool.py), whose rules decide; this module carries their decisions
out, and tells systemd (sd_notify) and the journal (events.py).

A loan lives exactly as long as its connection: when the client's side
closes (the command and everything that inherited the socket have exited),
the place is reserved again. Who a client is comes from the kernel
(SO_PEERCRED), never from what it says; every borrow passes through one
authorize(peer, pool_name) step.
"""

import errno
import os
import queue
import selectors
import signal
import socket
import threading
import time

from holdingpen.pen import chunks, config, headroom, protocol
from holdingpen.pen.peer import allow_connected, peer_of
from holdingpen.pen.pool import Loan, Pool, status_line
from holdingpen.pen.sizes import format_size

MAX_CONNECTIONS = 4096        # beyond this a client is told "busy" at once
RETRY_FIRST_S = 1.0           # after a shortfall, try again after this, doubling ...
RETRY_MAX_S = 60.0            # ... up to this
FILL_RATE_FLOOR_BPS = 256 << 20   # slowest fill we plan for, to ask systemd for more start time
COMMAND_REFRESH_S = 2.0       # how often loans' commands are read again from /proc
LIMITED_NOTE_S = 10.0         # journal a user over a limit at most this often


class _Conn:
    __slots__ = ("sock", "peer", "inbox", "outbox", "deadline", "loan", "close_when_sent",
                 "counted", "checking")

    def __init__(self, sock, peer, deadline):
        self.sock, self.peer, self.deadline = sock, peer, deadline
        self.inbox = b""
        self.outbox = b""
        self.loan = None             # (pool name, loan id, store name) once it borrowed
        self.close_when_sent = False
        self.counted = False         # in the per-user connection count
        self.checking = False        # its borrow is with authorize() on the asker thread


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
    """

    def __init__(self, cfg, config_path, listener, notify, events, store,
                 authorize=allow_connected, proc="/proc"):
        self.config_path = config_path
        self.listener = listener
        self.notify = notify
        self.events = events
        self.store = store
        self.authorize = authorize
        self.proc = proc
        self.pools = {spec.name: Pool(spec) for spec in cfg.pools}
        self.limits = cfg.limits
        self.per_user = _per_user_limits(cfg.limits)
        self.limited_notes = {}        # uid -> (quiet until, refusals not journalled)
        self.chunk_names = {}          # id(chunk) -> store name
        self.conns = {}                # fd -> _Conn
        self.retry_at = {}             # pool name -> monotonic time of the next try
        self.retry_s = {}
        self.in_flight = None          # the pool a reservation is being made for
        self.ready = False
        self.stopping = False
        self.reload_wanted = False
        self.next_loan = 1
        self.lock_memory = headroom.has_swap(headroom.read_meminfo(proc))
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.results = queue.SimpleQueue()    # from both threads: ("reserved" | "authorized", ...)
        self.jobs = queue.SimpleQueue()       # reservations to make
        self.asks = queue.SimpleQueue()       # borrows to authorize
        self.status_text = None
        watchdog_usec = os.environ.get("WATCHDOG_USEC")
        watchdog_pid = os.environ.get("WATCHDOG_PID", str(os.getpid()))
        self.watchdog_s = (int(watchdog_usec) / 2e6 if watchdog_usec and
                           watchdog_pid == str(os.getpid()) else None)
        self.watchdog_at = 0.0
        self.commands_at = 0.0

    # ---- the loop ----

    def run(self):
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        threading.Thread(target=self._reserver, name="reserver", daemon=True).start()
        threading.Thread(target=self._asker, name="asker", daemon=True).start()
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._woken)
        self._adopt()
        self.events("started", f"started with {status_line(self.pools.values())}")
        while not self.stopping:
            now = time.monotonic()
            if self.reload_wanted:
                self.reload_wanted = False
                self._reload()
            self._expire(now)
            self._reserve_next(now)
            self._refresh_commands(now)
            self._tell_systemd(now)
            for key, mask in self.sel.select(self._timeout_s()):
                key.data(key.fileobj, mask)
        self.notify("STOPPING=1")
        self.events("stopping", "holdingpen stopping; reservations stay in systemd's store "
                    "when it restarts us")
        self.jobs.put(None)
        self.asks.put(None)

    def _timeout_s(self):
        now = time.monotonic()
        times = [c.deadline for c in self.conns.values() if c.deadline is not None]
        times += [t for name, t in self.retry_at.items() if self.pools[name].missing()]
        if self.watchdog_s:
            times.append(self.watchdog_at)
        if any(p.loans for p in self.pools.values()):
            times.append(self.commands_at)
        return max(0.0, min(times) - now) if times else None

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self.reload_wanted = True
        else:
            self.stopping = True

    def _woken(self, fd, mask):
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        while True:
            try:
                what, *result = self.results.get_nowait()
            except queue.Empty:
                return
            if what == "reserved":
                self._reservation_done(*result)
            else:
                self._authorized(*result)

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
            conn = _Conn(sock, peer_of(sock, self.proc),
                         time.monotonic() + self.limits["request_timeout_s"])
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, self._readable)
            if len(self.conns) > MAX_CONNECTIONS:
                self._fail(conn, protocol.BUSY, "too many connections; try again")
            elif not self.per_user.connect(conn.peer.uid):
                self._note_limited(conn.peer, f"{conn.peer.user} ({conn.peer.comm}) has "
                                   f"{self.per_user.max_connections} connections open already")
                self._fail(conn, protocol.LIMITED, f"you have {self.per_user.max_connections} "
                           "connections open already; close some first")
            else:
                conn.counted = True

    def _readable(self, sock, mask):
        conn = self.conns.get(sock.fileno())
        if conn is None:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if not mask & selectors.EVENT_READ or conn.sock.fileno() < 0:
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
        conn.inbox += data
        line, newline, _ = conn.inbox.partition(b"\n")
        if not newline:
            if len(conn.inbox) > protocol.MAX_LINE_BYTES:
                self._fail(conn, protocol.TOO_LONG,
                           f"a request is one line of at most {protocol.MAX_LINE_BYTES} bytes")
            return
        conn.deadline = None
        try:
            request = protocol.decode_request(line)
        except protocol.ProtocolError as e:
            self.events("bad-client", f"bad request from {conn.peer.user} ({conn.peer.comm}): "
                        f"{e.message}", peer=conn.peer)
            return self._fail(conn, e.code, e.message)
        if request.action == protocol.STATUS:
            conn.close_when_sent = True
            return self._send(conn, protocol.encode_reply(self.status(conn.peer)))
        self._borrow(conn, request)

    def _borrow(self, conn, request):
        pool = self._pool_for(request.kind)
        if pool is None:
            return self._fail(conn, protocol.UNKNOWN_KIND, f"no {request.kind} pool; there are: "
                              f"{', '.join(self.pools)}")
        if not self.per_user.borrow(conn.peer.uid, time.monotonic()):
            self._note_limited(conn.peer, f"{conn.peer.user} ({conn.peer.comm}) borrows too often",
                               kind=pool.name)
            return self._fail(conn, protocol.LIMITED, "more than "
                              f"{self.per_user.rate:g} borrows a second; slow down")
        conn.checking = True       # polkit may take milliseconds, or hang: not on this thread
        self.asks.put((conn, pool.name, request))

    def _asker(self):
        """The third thread: ask authorize() about each borrow, hand the answer back."""
        warm_up = getattr(self.authorize, "warm_up", None)
        if warm_up is not None:
            warm_up()              # the first borrow should not pay for connecting to D-Bus
        while (job := self.asks.get()) is not None:
            conn, pool_name, request = job
            try:
                allowed, why = self.authorize(conn.peer, pool_name)
            except Exception as e:     # a bug there must refuse one borrow, not stop them all
                allowed, why = False, f"the authorization failed: {e}"
            self.results.put(("authorized", conn, pool_name, request, allowed, why))
            self._wake()

    def _wake(self):
        try:
            os.write(self.wake_w, b"w")
        except BlockingIOError:
            pass                   # the loop is being woken anyway

    def _authorized(self, conn, pool_name, request, allowed, why):
        if self.conns.get(conn.sock.fileno()) is not conn:
            return                 # it hung up while it was being checked
        conn.checking = False
        pool = self.pools.get(pool_name)
        if pool is None:           # a reload removed it meanwhile
            return self._fail(conn, protocol.UNKNOWN_KIND, f"no {pool_name} pool any more")
        if not allowed:
            self.events("refused", f"{conn.peer.user} ({conn.peer.comm}) may not borrow "
                        f"{pool.name}: {why}", kind=pool.name, peer=conn.peer)
            return self._fail(conn, protocol.NOT_AUTHORIZED, why)
        self._lend(conn, pool, request)

    def _lend(self, conn, pool, request):
        loan_id = self.next_loan
        self.next_loan += 1
        loan = Loan(conn.peer.uid, conn.peer.user, conn.peer.pid, conn.peer.comm, time.time(),
                    handed_fd=request.fd)
        chunk = pool.lend(loan_id, loan)
        if chunk is None:
            return self._fail(conn, protocol.POOL_EMPTY, self._why_empty(pool))
        self.store.remove(self.chunk_names.pop(id(chunk)))
        reply = protocol.encode_reply({"ok": True, "action": protocol.BORROW, "kind": pool.name,
                                       "size": chunk.size_bytes, "fd": request.fd})
        if not request.fd:
            chunk.close()          # the memory is free before the client hears so
        # The loan is the connection's, in systemd's store too, before the client hears
        # of it, and marked answered once it has: a daemon killed in between leaves
        # neither a borrower it forgot nor one left waiting, as the next one answers
        # what is unanswered (_answer_adopted). A failed send returns the loan.
        store_name = self.store.new_name("loan")
        conn.loan = (pool.name, loan_id, store_name)
        self.store.add(store_name, conn.sock.fileno(),
                       {"pool": pool.name, **loan.as_dict(), "answered": False})
        if request.fd:
            try:
                socket.send_fds(conn.sock, [reply], [chunk.fd])
            except OSError:        # it went away mid hand-off: the chunk is still ours
                conn.loan = None
                self.store.remove(store_name)
                pool.undo_lend(loan_id, chunk)
                self._store_chunk(pool, chunk)
                return self._close(conn)
            self.store.update(store_name, answered=True)
            chunk.close()          # the client's copy is now the only one
        self.events("lent", f"lent {format_size(chunk.size_bytes)} of {pool.name} to "
                    f"{conn.peer.user} ({conn.peer.comm}, pid {conn.peer.pid})"
                    + (", as a descriptor" if request.fd else ""),
                    kind=pool.name, size_bytes=chunk.size_bytes, peer=conn.peer)
        if not request.fd:
            self._send(conn, reply)
            self.store.update(store_name, answered=True)   # unless the send returned it

    def _note_limited(self, peer, message, kind=None):
        """Journal a user going over a limit: once per LIMITED_NOTE_S, with a count, so a
        flood cannot flood the journal too (and push others' entries out of its rate limit)."""
        now = time.monotonic()
        until, unsaid = self.limited_notes.get(peer.uid, (0.0, 0))
        if now < until:
            self.limited_notes[peer.uid] = (until, unsaid + 1)
            return
        if unsaid:
            message += f" ({unsaid} more such refusals in the last {LIMITED_NOTE_S:g} s)"
        self.limited_notes[peer.uid] = (now + LIMITED_NOTE_S, 0)
        self.events("refused", message, kind=kind, peer=peer)

    def _why_empty(self, pool):
        if pool.shortfall:
            return f"no {pool.name} reservation is held: {pool.shortfall}"
        if pool.reserving or pool.missing():
            return f"no {pool.name} reservation is held yet; one is being made"
        return f"all {pool.spec.count} {pool.name} reservations are lent"

    def _pool_for(self, kind):
        if kind in self.pools:
            return self.pools[kind]
        if kind == chunks.DISK:
            return next((p for p in self.pools.values() if p.spec.kind == chunks.DISK), None)
        if kind.startswith("disk:"):
            return self.pools.get("disk:" + os.path.normpath(kind[5:]))
        return None

    def status(self, peer):
        """What `holdingpen status` shows: every pool, and who holds what.

        Other users' commands are shown to root only.
        """
        loans = [{"kind": pool.name, "user": loan.user, "uid": loan.uid, "pid": loan.pid,
                  "command": loan.command if peer.uid in (0, loan.uid) else None,
                  "since": loan.since, "size": loan.size_bytes, "fd": loan.handed_fd}
                 for pool in self.pools.values() for loan in pool.loans.values()]
        return {"ok": True, "action": protocol.STATUS, "ready": self.ready,
                "pools": [p.snapshot() for p in self.pools.values()], "loans": loans}

    def _fail(self, conn, code, message):
        conn.close_when_sent = True
        self._send(conn, protocol.error_reply(code, message))

    def _send(self, conn, data):
        conn.outbox += data
        self._flush(conn)

    def _flush(self, conn):
        try:
            while conn.outbox:
                conn.outbox = conn.outbox[conn.sock.send(conn.outbox):]
        except BlockingIOError:
            self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self._readable)
            return
        except OSError:
            return self._close(conn)
        if conn.close_when_sent:
            return self._close(conn)
        if self.sel.get_key(conn.sock).events & selectors.EVENT_WRITE:
            self.sel.modify(conn.sock, selectors.EVENT_READ, self._readable)

    def _close(self, conn):
        fd = conn.sock.fileno()
        if fd < 0 or self.conns.pop(fd, None) is None:
            return
        self.sel.unregister(conn.sock)
        conn.sock.close()
        conn.peer.close()
        if conn.counted:
            self.per_user.disconnect(conn.peer.uid)
        if conn.loan is not None:
            name, loan_id, store_name = conn.loan
            self.store.remove(store_name)
            pool = self.pools.get(name)
            if pool is not None and loan_id in pool.loans:
                loan = pool.loans[loan_id]
                pool.returned(loan_id)
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
        if self.in_flight is not None:
            return
        for pool in self.pools.values():
            if pool.missing() and now >= self.retry_at.get(pool.name, 0.0):
                break
        else:
            return
        pool.start_reserving()
        spec = pool.spec
        if spec.kind == chunks.MEMORY:
            problem = headroom.memory_shortfall(headroom.read_meminfo(self.proc), spec.size_bytes)
            if problem:
                return self._reservation_done(pool.name, None, problem)
        if not self.ready:   # a large pool takes a while to fill: ask systemd to wait
            usec = int((spec.size_bytes / FILL_RATE_FLOOR_BPS + 10) * 1e6)
            self.notify(f"EXTEND_TIMEOUT_USEC={usec}")
        self.in_flight = pool.name
        self.jobs.put((pool.name, spec.kind, spec.path, spec.size_bytes, self.lock_memory))

    def _reserver(self):
        """The second thread: make each chunk asked for, hand it back, wake the loop."""
        while (job := self.jobs.get()) is not None:
            name, kind, path, size_bytes, lock = job
            try:
                if kind == chunks.MEMORY:
                    chunk = chunks.reserve_memory(size_bytes, lock)
                else:
                    chunk = chunks.reserve_disk(path, size_bytes)
                self.results.put(("reserved", name, chunk, None))
            except chunks.ReserveError as e:
                self.results.put(("reserved", name, None, str(e)))
            self._wake()

    def _reservation_done(self, name, chunk, problem):
        if self.in_flight == name:
            self.in_flight = None
        pool = self.pools.get(name)
        if pool is None or pool.reserving == 0:      # its pool went in a reload
            if chunk is not None:
                chunk.close()
            return
        if chunk is None:
            pool.failed(problem)
            delay = min(RETRY_MAX_S, self.retry_s.get(name, RETRY_FIRST_S / 2) * 2)
            self.retry_s[name] = delay
            self.retry_at[name] = time.monotonic() + delay
            self.events("shortfall", f"{name}: {problem}; trying again in {delay:.0f} s",
                        kind=name, size_bytes=pool.spec.size_bytes)
            return
        self.retry_s.pop(name, None)
        self.retry_at.pop(name, None)
        for extra in pool.reserved(chunk, chunk.size_bytes):
            self._release(pool, [extra])
        if chunk.fd is not None:
            self._store_chunk(pool, chunk)
            self.events("reserved", f"reserved {format_size(chunk.size_bytes)} of {name}",
                        kind=name, size_bytes=chunk.size_bytes)

    def _store_chunk(self, pool, chunk):
        name = self.store.new_name("chunk")
        self.chunk_names[id(chunk)] = name
        self.store.add(name, chunk.fd, {"pool": pool.name})

    def _release(self, pool, released):
        for chunk in released:
            name = self.chunk_names.pop(id(chunk), None)
            if name:
                self.store.remove(name)
            chunk.close()
            self.events("released", f"released {format_size(chunk.size_bytes)} of {pool.name}",
                        kind=pool.name, size_bytes=chunk.size_bytes)

    # ---- systemd ----

    def _refresh_commands(self, now):
        """Loans show the borrower's command as it is now: gatekeeper has become CMD."""
        if now < self.commands_at:
            return
        self.commands_at = now + COMMAND_REFRESH_S
        for pool in self.pools.values():
            for loan in pool.loans.values():
                try:
                    with open(f"{self.proc}/{loan.pid}/comm", errors="replace") as f:
                        loan.command = f.read().strip()
                except OSError:
                    pass          # gone: its connection's close will tell us soon

    def _tell_systemd(self, now):
        if not self.ready and self.in_flight is None and all(
                not p.missing() or p.name in self.retry_at for p in self.pools.values()):
            self.ready = True
            self.notify("READY=1")
        text = status_line(self.pools.values())
        if text != self.status_text:
            self.status_text = text
            self.notify(f"STATUS={text}")
        if self.watchdog_s and now >= self.watchdog_at:
            self.notify("WATCHDOG=1")
            self.watchdog_at = now + self.watchdog_s

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
        wanted = {spec.name: spec for spec in cfg.pools}
        for name, pool in list(self.pools.items()):
            if name in wanted:
                self._release(pool, pool.reconfigure(wanted[name]))
            else:
                self._release(pool, pool.reconfigure(_retired(pool.spec)))
                if not pool.loans and not pool.reserving:
                    del self.pools[name]
        for name, spec in wanted.items():
            self.pools.setdefault(name, Pool(spec))
        self.retry_at.clear()
        self.events("reloaded", f"configuration reloaded from {cfg.source}: "
                    f"{', '.join(self.pools)}")
        self.notify("READY=1")

    def _adopt(self):
        """Take back what systemd kept for us across a restart."""
        chunks_n = loans_n = dropped = 0
        unanswered = []
        for name, fd, facts in self.store.passed:
            pool = self.pools.get((facts or {}).get("pool"))
            if name.startswith("chunk.") and pool is not None:
                try:
                    chunk = chunks.adopt(fd, self.lock_memory)
                except (chunks.ReserveError, OSError):
                    chunk = None
                if chunk is not None and (chunk.kind == pool.spec.kind == chunks.MEMORY or (
                        chunk.kind == pool.spec.kind == chunks.DISK
                        and chunks.same_filesystem(chunk, pool.spec.path))):
                    self.chunk_names[id(chunk)] = name
                    self._release(pool, pool.adopt_chunk(chunk, chunk.size_bytes))
                    chunks_n += 1
                    continue
                if chunk is not None:
                    chunk.close()
                    fd = None
            elif name.startswith("loan.") and pool is not None:
                sock = socket.socket(fileno=fd)
                sock.setblocking(False)
                peer = peer_of(sock, self.proc)
                loan = Loan(peer.uid, peer.user, peer.pid, facts.get("command", peer.comm),
                            facts.get("since", time.time()), pool.spec.size_bytes,
                            facts.get("handed_fd", False))
                loan_id = self.next_loan
                self.next_loan += 1
                self._release(pool, pool.adopt_loan(loan_id, loan))
                conn = _Conn(sock, peer, None)
                conn.loan = (pool.name, loan_id, name)
                self.conns[sock.fileno()] = conn
                self.sel.register(sock, selectors.EVENT_READ, self._readable)
                if facts.get("answered") is False:
                    unanswered.append((conn, pool, loan))
                loans_n += 1
                continue
            self.store.remove(name)
            if fd is not None:
                os.close(fd)
            dropped += 1
        if chunks_n or loans_n or dropped:
            self.events("adopted", f"kept across the restart: {chunks_n} reservations, "
                        f"{loans_n} loans; dropped {dropped} that no longer fit"
                        + (f"; answering {len(unanswered)} borrowers the last run did not"
                           if unanswered else ""),
                        chunks=chunks_n, loans=loans_n, unanswered=len(unanswered))
        for conn, pool, loan in unanswered:
            self._answer_adopted(conn, pool, loan)

    def _answer_adopted(self, conn, pool, loan):
        """Answer a borrower whose daemon was killed after recording its loan but
        before saying so. Without "fd" the reservation was freed for it already: it
        has it. A descriptor went down with the daemon that held it: ask again; the
        loan ends when the client hangs up (if it did get the descriptor after all,
        it keeps it, and the loan too). A client answered just before the kill gets
        this second line unread, after the first."""
        if loan.handed_fd:
            data = protocol.error_reply(protocol.BUSY, "the daemon restarted while handing "
                                        "the reservation over; ask again")
        else:
            data = protocol.encode_reply({"ok": True, "action": protocol.BORROW,
                                          "kind": pool.name, "size": loan.size_bytes,
                                          "fd": False})
        self._send(conn, data)
        self.store.update(conn.loan[2], answered=True)


def _per_user_limits(limits):
    from holdingpen.pen.ratelimit import Limits
    return Limits(limits["connections_per_user"], limits["borrows_per_second"],
                  limits["borrow_burst"])


def _retired(spec):
    """A pool removed from the configuration keeps its loans until they return."""
    return config.PoolSpec(spec.kind, spec.size_bytes, 0, spec.path)


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
