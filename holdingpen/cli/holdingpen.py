"""holdingpen: the reservation daemon, a look at its pool, and a check of its configuration.

    holdingpen serve  [--config PATH] [--socket PATH]
    holdingpen status [--socket PATH] [--json | --openmetrics]
    holdingpen check  [--config PATH]

`serve` takes its listening socket from systemd (LISTEN_FDS) or, with
--socket or without systemd, binds it itself; so it also runs by hand:

    holdingpen serve --config ./pool.toml --socket /tmp/hp.sock
    systemd-socket-activate -l /tmp/hp.sock holdingpen serve    # as systemd would start it
"""

import os
import socket
import sys
import time

from holdingpen.common import cmdline, exits, text
from holdingpen.pen import client, protocol
from holdingpen.pen.sizes import format_size


SERVE_OPTIONS = [
    cmdline.Option("-c", "--config", "config", "PATH"),
    cmdline.Option(None, "--socket", "socket", "PATH"),
    cmdline.Option("-h", "--help", "help"),
]
STATUS_OPTIONS = [
    cmdline.Option(None, "--socket", "socket", "PATH"),
    cmdline.Option(None, "--json", "json"),
    cmdline.Option(None, "--openmetrics", "openmetrics"),
    cmdline.Option("-h", "--help", "help"),
]
CHECK_OPTIONS = [
    cmdline.Option("-c", "--config", "config", "PATH"),
    cmdline.Option("-h", "--help", "help"),
]
USAGE = """\
usage: holdingpen serve  [--config PATH] [--socket PATH]
       holdingpen status [--socket PATH] [--json | --openmetrics]
       holdingpen check  [--config PATH]
"""
HELP = """
Keep memory and disk space reserved, so that `gatekeeper CMD` can borrow it.

  serve    run the reservation daemon (systemd starts it through holdingpen.socket)
  status   show the pools and who holds what
  check    say whether the configuration is good, or what is wrong and where

  -c, --config PATH  the configuration (default /etc/holdingpen/holdingpen.toml)
      --socket PATH  the daemon's socket (default $HOLDINGPEN_SOCKET, else /run/holdingpen.socket)
      --json         status as JSON
      --openmetrics  status as OpenMetrics text, for Prometheus
  -h, --help         this help

Exit status: 0; 64 usage; 69 the daemon cannot be asked (status); 73 the
socket cannot be bound (serve); 78 a bad configuration (serve, check).
"""


def main():
    sys.exit(run(sys.argv[1:]))


def run(argv):
    verb, rest = (argv[0], argv[1:]) if argv else (None, [])
    commands = {"serve": (SERVE_OPTIONS, serve), "status": (STATUS_OPTIONS, status),
                "check": (CHECK_OPTIONS, check)}
    if verb in ("-h", "--help"):
        sys.stdout.write(USAGE + HELP)
        return 0
    if verb not in commands:
        sys.stderr.write(f"holdingpen: {'no command given' if verb is None else f'unknown command {verb!r}'}\n"
                         + USAGE)
        return exits.USAGE
    options, action = commands[verb]
    try:
        opts, _ = cmdline.parse(options, rest, takes_command=False)
    except cmdline.UsageError as e:
        sys.stderr.write(f"holdingpen {verb}: {e}\n{USAGE}")
        return exits.USAGE
    if opts["help"]:
        sys.stdout.write(USAGE + HELP)
        return 0
    return action(opts)


def check(opts):
    """Load the configuration as serve would; say it is good, or the one line of what is wrong.

    The unit's ExecReload= runs this, so that a reload with a bad file fails and says why.
    """
    from holdingpen.pen import config
    try:
        cfg = config.load(opts["config"])
    except config.ConfigError as e:
        sys.stderr.write(f"holdingpen: {e}\n")
        return exits.CONFIG
    pools = "; ".join(f"{p.name} {p.count} x {format_size(p.size_bytes)}" for p in cfg.pools)
    if opts["config"] is None and cfg.source != config.DEFAULT_PATH:
        sys.stdout.write(f"holdingpen: no {config.DEFAULT_PATH}, so the defaults apply: {pools}\n")
    else:
        sys.stdout.write(f"holdingpen: {cfg.source} is good: {pools}\n")
    return 0


def serve(opts):
    from holdingpen.pen import daemon, events, fdstore
    from holdingpen.pen.authorize import Authorizer
    notify, passed = _systemd()
    cfg, config_error = _configuration(opts["config"], passed)
    listener = None
    if not opts["socket"]:
        listener = next((fd for fd in passed if _is_listening(fd)), None)
    if listener is not None:
        del passed[listener]
        listener = socket.socket(fileno=listener)
    if cfg is None:
        if listener is not None:       # the clients that started us: told now, not at their timeout
            _turn_away(listener, f"the daemon cannot start: {config_error}")
        sys.stderr.write(f"holdingpen: {config_error}\n")
        return exits.CONFIG
    if listener is None:
        path = client.socket_path(opts["socket"])
        try:
            listener = daemon.bind(path)
        except OSError as e:
            sys.stderr.write(f"holdingpen: cannot listen on {path}: {e.strerror}\n")
            return exits.CANTCREAT
    store = fdstore.FdStore(notify, passed) if os.environ.get("NOTIFY_SOCKET") else fdstore.NoStore()
    if config_error is None:
        store.keep_config(cfg)
    _raise_descriptor_limit()
    log = events.default_events()
    authorize = Authorizer(users=cfg.authorize["users"], groups=cfg.authorize["groups"],
                           events=log, source=cfg.source)
    daemon.Daemon(cfg, opts["config"], listener, notify, log, store, authorize=authorize,
                  protecting=_protecting(log), config_error=config_error).run()
    return 0


PROTECT_ANYWAY_ENV = "HOLDINGPEN_PROTECT_ANYWAY"   # "1": skip the cgroup v2 check (for tests)


def _protecting(log, environ=os.environ):
    """Protected loans when systemd runs us on a machine that can protect memory.

    Run by hand, the daemon's units are nobody's to change: loans are not protected.
    PROTECT_ANYWAY_ENV=1 sets the units even without a cgroup v2 memory controller,
    where systemd records MemoryMin= but the kernel cannot apply it: for tests only.
    """
    from holdingpen.pen import protect
    from holdingpen.pen.protecting import Protecting
    if not environ.get("INVOCATION_ID"):
        return Protecting(None, "the daemon was not started by systemd", log)
    why = protect.unavailable_reason()
    if why is not None and environ.get(PROTECT_ANYWAY_ENV) != "1":
        log("unprotected", f"loans are not protected: {why}")
        return Protecting(None, why, log)
    protection = protect.Protection(protect.SystemdUnits(), protect.STATE_PATH)
    return Protecting(protection, None, log, job_type=protect.SystemdUnits().job_type)


def _configuration(path, passed):
    """(Config, None) from the file; or, the file being bad while systemd's store
    (passed) holds reservations or loans, (the last good Config, what is wrong):
    a mistake in the file never costs the pool. (None, what is wrong) when there
    is nothing to keep: a first start refuses."""
    from holdingpen.pen import config, fdstore
    try:
        return config.load(path), None
    except config.ConfigError as e:
        held, good = fdstore.kept(passed)
        cfg = config.last_good(good) if held and good else None
        return cfg, str(e)


def _turn_away(listener, message, wait_s=0.2, most=128):
    """Answer the clients waiting at systemd's listener with a bad-config error."""
    from holdingpen.pen import protocol
    reply = protocol.error_reply(protocol.BAD_CONFIG, message)
    listener.setblocking(False)
    for _ in range(most):
        try:
            sock, _ = listener.accept()
        except OSError:
            return                 # none waiting
        with sock:
            sock.settimeout(wait_s)
            try:
                sock.recv(protocol.MAX_LINE_BYTES + 1)   # its request: read, or closing resets
                sock.sendall(reply)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def _systemd():
    """(sd_notify, {fd: name} passed by systemd); a no-op notify without systemd."""
    try:
        from systemd import daemon as sd
    except ImportError:
        return (lambda message, fds=None: False), {}
    passed = sd.listen_fds_with_names() if os.environ.get("LISTEN_FDS") else {}
    for fd in passed:
        os.set_inheritable(fd, False)
    return sd.notify, dict(passed)


def _is_listening(fd):
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    except OSError:
        return False
    finally:
        s.detach()


def _raise_descriptor_limit():
    # Every client and every reservation is a descriptor: a thousand at once
    # must not hit the default soft limit of 1024.
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def status(opts):
    if opts["json"] and opts["openmetrics"]:
        sys.stderr.write(f"holdingpen status: choose --json or --openmetrics\n{USAGE}")
        return exits.USAGE
    path = client.socket_path(opts["socket"])
    try:
        sock = client.connect(path)
        try:
            reply, fds = client.ask(sock, protocol.Request(protocol.STATUS))
        finally:
            sock.close()
    except client.Unavailable as e:
        sys.stderr.write(f"holdingpen: {e}\n")
        return exits.UNAVAILABLE
    for fd in fds:
        os.close(fd)
    if not reply["ok"]:
        sys.stderr.write(f"holdingpen: {reply.get('message')} ({reply.get('error')})\n")
        return exits.UNAVAILABLE
    if opts["openmetrics"]:
        from holdingpen.pen import metrics
        sys.stdout.write(metrics.render(reply))
    elif opts["json"]:
        import json
        shown = {k: reply[k] for k in ("ready", "pools", "loans") if k in reply}
        shown["config_error"] = reply.get("config_error")
        sys.stdout.write(json.dumps(shown, indent=1) + "\n")
    else:
        sys.stdout.write(describe(reply, time.time()))
    return 0


def describe(reply, now):
    """The status reply as text: one line per pool, then who holds what."""
    lines = []
    if reply.get("config_error"):
        lines.append(f"bad configuration, running on the last good one: {reply['config_error']}")
        lines.append("  mend the file, then: systemctl reload holdingpen")
    for p in reply["pools"]:
        line = (f"{p['name']}: {p['held']}/{p['count']} held, {p['lent']} lent, "
                f"{format_size(p['size'])} each")
        if p.get("reserving"):
            line += ", reserving"
        if p.get("shortfall"):
            line += f"; short: {p['shortfall']}"
        lines.append(line)
    if not reply.get("ready", True):
        lines.append("(still filling the pool)")
    loans = reply.get("loans", [])
    if loans:
        rows = [("USER", "UID", "PID", "COMMAND", "KIND", "SIZE", "SINCE", "PROTECTED")]
        rows += [(r["user"], str(r["uid"]), str(r["pid"]), r["command"] or "-",
                  r["kind"] + (" (fd)" if r.get("fd") else ""), format_size(r["size"]),
                  text.age(now - r["since"]), _protected(r)) for r in loans]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines += ["  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def _protected(loan):
    """The unit holding a loan's borrower, whose memory (and its slices') is
    protected; "no" if not (the journal and --json say why), "-" if the daemon
    does not say (an older one)."""
    if "protected_units" not in loan:
        return "-"
    return loan["protected_units"][-1] if loan["protected_units"] else "no"
