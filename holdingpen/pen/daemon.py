"""The Holding Pen daemon: keeps the pools full and lends from them.

Theory of operation
-------------------
One thread runs an event loop over the listening socket, the clients'
connections and a wake-up pipe (signals and the other threads write to it).
A second thread makes reservations, one at a time: allocating gigabytes
takes a while and must not stall clients. A third asks whether each borrow
is allowed: polkit takes milliseconds, and a hung polkitd must not stall the
loop until the watchdog kills it (workers.py has both). A fourth, where loans
are protected, sets the borrowers' systemd units (protecting.py). Only the loop thread
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

from holdingpen.pen import adoption, config, headroom, protocol, workers
from holdingpen.pen.connection import Conn
from holdingpen.pen.listener import bind
from holdingpen.pen.lending import Lending
from holdingpen.pen.metricsloop import DaemonMetrics
from holdingpen.pen.notifier import Notifier
from holdingpen.pen.peer import allow_connected, peer_of
from holdingpen.pen.policy import Policy, Refused, RefusalNotes
from holdingpen.pen.protecting import Protecting
from holdingpen.pen.ratelimit import Limits
from holdingpen.pen.stock import Stock

__all__ = ["Daemon", "bind"]     # bind: `holdingpen serve` listens with daemon.bind

MAX_CONNECTIONS = 4096        # beyond this a client is told "busy" at once
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
        protecting: protecting.Protecting, or None: loans are not protected.
        config_error: None; or what is wrong with the file at config_path, cfg
            being the last good configuration, kept from the last run.
    """

    def __init__(self, cfg, config_path, listener, notify, events, store,
                 authorize=allow_connected, proc="/proc", environ=os.environ,
                 send_fds=socket.send_fds, protecting=None, config_error=None):
        self.metrics = DaemonMetrics(cfg.textfile_dir, store, events)
        events = self.metrics.counting(events)     # all through the daemon
        self.config_path, self.listener, self.notify = config_path, listener, notify
        self.events, self.store, self.authorize, self.proc = events, store, authorize, proc
        self.send_fds = send_fds
        self.policy = Policy(cfg.pools)
        self.limits = cfg.limits
        self.per_user = Limits.of(cfg.limits)
        self.notes = RefusalNotes()
        self.conns = {}                # fd -> Conn
        self.stopping = self.reload_wanted = False
        # Where the machine has swap, the pool and what is lent from it stay locked in memory.
        self.lock_memory = (environ.get(LOCK_MEMORY_ENV) == "1"
                            or headroom.has_swap(headroom.read_meminfo(proc)))
        self.sel = selectors.DefaultSelector()
        self.workers = workers.Workers(authorize, self.lock_memory)
        self.stock = Stock(self.policy, store, events, notify, self.workers, proc)
        self.notifier = Notifier(notify, environ)
        self.protecting = protecting or Protecting(None, "the daemon was started without it",
                                                   events, proc)
        self.lending = Lending(self.policy, store, events, self.stock, proc, self.protecting)
        self.commands_at = 0.0
        self._config_bad(config_error)

    # ---- the loop ----

    def run(self):
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        signal.set_wakeup_fd(self.workers.wake_w, warn_on_full_buffer=False)
        self.workers.start()
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)
        self.sel.register(self.workers.wake_r, selectors.EVENT_READ, self._woken)
        self.protecting.start(lambda generation, result:
                              self.workers.tell("protected", generation, result))
        adoption.adopt(self)
        self._want_protection()    # what the last daemon protected, less what ended since
        self.events("started", f"started with {self.policy.status_line()}")
        if self.config_error is not None:
            self.events("config-refused", f"{self.config_error}; serving on the last good "
                        "configuration, which the last run kept, rather than throw away what "
                        "it holds; mend the file, then: systemctl reload holdingpen")
        while not self.stopping:
            now = time.monotonic()
            if self.reload_wanted:
                self.reload_wanted = False
                self._reload()
            self._expire(now)
            self.stock.reserve_next(now)
            self._refresh_commands(now)
            if not self.notifier.tell(now, self.policy, self.workers.failed_for_good()):
                break             # run by hand, a worker died: exit, and say why
            self.metrics.update(now, self.policy,
                                lambda: self.protecting.status_by_loan(self.conns.values()))
            for key, mask in self.sel.select(self._timeout_s(now)):
                key.data(key.fileobj, mask)
        self.notify("STOPPING=1")
        self.metrics.stopping()
        self.events("stopping", "holdingpen stopping; if systemd restarts it, reservations and "
                    "loans wait in its store, but a stop frees them")
        self.workers.stop()
        self.protecting.finish()
        if self.workers.failed_for_good():
            raise SystemExit(f"holdingpen: {self.workers.failed_for_good()}")

    def _timeout_s(self, now):
        times = [c.deadline for c in self.conns.values() if c.deadline is not None]
        times += [t for t in (self.policy.next_retry_at(), self.notifier.next_at(),
                              self.metrics.next_at(now)) if t is not None]
        if self.policy.has_loans():
            times += [t for t in (self.commands_at, self.lending.look_at) if t is not None]
        return max(0.0, min(times) - now) if times else None

    def _on_signal(self, signum, frame):
        if signum == signal.SIGHUP:
            self.reload_wanted = True
        else:
            self.stopping = True

    def _woken(self, fd, mask):
        for what, *result in self.workers.results():
            if what == "reserved":
                self.stock.reservation_done(*result)
            elif what == "authorized":
                self._authorized(*result)
            elif what == "protected":
                self._protected(*result)
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
            line = conn.receive()
            if line is None:
                return
            conn.deadline = None
            request = protocol.decode_request(line)
        except EOFError:
            return self._close(conn)
        except protocol.BadRequest as e:
            if e.code != protocol.TOO_LONG:
                self.events("bad-client", f"bad request from {conn.peer.user} "
                            f"({conn.peer.comm}): {e.message}", peer=conn.peer)
            return self._fail(conn, e.code, e.message)
        if request.action == protocol.STATUS:
            conn.close_when_sent = True
            return self._send(conn, protocol.status_reply(
                self.policy.ready, self.policy.snapshots(),
                self.policy.status_loans(conn.peer.uid,
                                         self.protecting.status_by_loan(self.conns.values())),
                self.config_error, **self.metrics.status()))
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
        try:
            reply, fds = self.lending.lend(conn, pool_name, request)
        except Refused as e:
            return self._fail(conn, e.code, e.message)
        generation = self._want_protection() if conn.units else 0
        if conn.waiting:
            return self.protecting.hold(generation, conn, reply)
        self._send(conn, reply, fds)

    # ---- protected loans (protecting.py) ----

    def _want_protection(self):
        """Ask the protect thread for every live memory loan's protection; its generation."""
        return self.protecting.want_live(self.conns.values(),
                                         lambda loan_id: self.policy.loan(loan_id).size_bytes)

    def _protected(self, generation, result):
        for conn, reply in self.protecting.answered(generation, result, self.conns.values()):
            self.lending.release(conn)
            self._send(conn, reply)

    def _note_limited(self, peer, message, kind=None):
        message = self.notes.note(peer.uid, time.monotonic(), message)
        if message is not None:    # once in a while, with a count: a flood floods no journal
            self.events("refused", message, kind=kind, peer=peer)

    def _fail(self, conn, code, message):
        self.metrics.refused(code)
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
        self.lending.answered(conn)
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
        self.lending.ended(conn)
        if not conn.checking:      # else the asker may poll its pidfd: closed when it answers
            conn.peer.close()
        if conn.counted:
            self.per_user.disconnect(conn.peer.uid)
        if conn.units:
            self._want_protection()    # its units go back to what they were

    def _expire(self, now):
        for conn in list(self.conns.values()):
            if conn.deadline is not None and now >= conn.deadline:
                conn.deadline = None
                self._fail(conn, protocol.TIMEOUT, "no request within "
                           f"{self.limits['request_timeout_s']:g} s of connecting")

    # ---- what changes of itself ----

    def _refresh_commands(self, now):
        if now >= self.commands_at or now >= (self.lending.look_at or self.commands_at):
            self.commands_at = now + COMMAND_REFRESH_S
            self.lending.refresh_commands(self.conns.values())

    def _reload(self):
        self.notify("RELOADING=1")
        try:
            cfg = config.load(self.config_path)
        except config.ConfigError as e:
            self.events("config-refused", f"reload refused, keeping the running configuration: {e}")
            if self.config_error is not None:    # still not mended: say what is wrong now
                self._config_bad(str(e))
            self.notify("READY=1")
            return
        self._config_bad(None)
        self.store.keep_config(cfg)
        self.limits = cfg.limits
        self.per_user.configure(cfg.limits["connections_per_user"],
                                cfg.limits["borrows_per_second"], cfg.limits["borrow_burst"])
        self.metrics.reconfigure(cfg.textfile_dir)
        if hasattr(self.authorize, "configure"):
            self.authorize.configure(cfg.authorize["users"], cfg.authorize["groups"], cfg.source)
        self.stock.release(self.policy.reconfigure(cfg.pools))
        self.events("reloaded", f"configuration reloaded from {cfg.source}: "
                    f"{', '.join(self.policy.names())}")
        self.notify("READY=1")

    def _config_bad(self, error):
        """Say what is wrong with the file (None: nothing) in status and STATUS= until mended."""
        self.config_error = error
        self.notifier.note = error and f"bad configuration, running on the last good one: {error}"
