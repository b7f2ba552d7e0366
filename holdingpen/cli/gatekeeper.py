"""gatekeeper: borrow a reservation from the Holding Pen, then become CMD.

    gatekeeper [--socket PATH] [-k|--kind memory|disk[:PATH]] [--fd] [--strict] [-q] [--] CMD [ARG...]

gatekeeper connects, borrows, leaves the connection open and inheritable,
and execs CMD: no process of ours stays behind. The loan lasts until CMD and
everything that inherited the connection have exited. By default the daemon
frees the reservation just before it answers, so CMD can allocate it; with
--fd the reservation itself comes over the socket and CMD finds it in
$HOLDINGPEN_MEMORY_FD or $HOLDINGPEN_DISK_FD.
"""

import os
import sys

from holdingpen.common import cmdline, exits
from holdingpen.pen import client, protocol

FD_ENV = {"memory": "HOLDINGPEN_MEMORY_FD", "disk": "HOLDINGPEN_DISK_FD"}


def pool_kind(text):
    """A pool's kind as a client names it: memory, disk (the first disk pool) or disk:PATH."""
    if text in ("memory", "disk") or (text.startswith("disk:/") and "\0" not in text):
        return text
    raise ValueError(f"expected memory, disk or disk:PATH (an absolute path), not {text!r}")


OPTIONS = [
    cmdline.Option(None, "--socket", "socket", "PATH"),
    cmdline.Option("-k", "--kind", "kind", "KIND", convert=pool_kind),
    cmdline.Option(None, "--fd", "fd"),
    cmdline.Option(None, "--strict", "strict"),
    cmdline.Option("-q", "--quiet", "quiet"),
    cmdline.Option("-h", "--help", "help"),
]
USAGE = ("usage: gatekeeper [--socket PATH] [-k|--kind memory|disk[:PATH]] [--fd] [--strict] [-q] "
         "[--] CMD [ARG...]\n")
HELP = """
Borrow one reservation from the holdingpen daemon for as long as CMD runs.

      --socket PATH  the daemon's socket (default $HOLDINGPEN_SOCKET, else /run/holdingpen.socket)
  -k, --kind KIND    memory (the default), disk (the first disk pool) or disk:PATH
      --fd           receive the reservation itself; CMD finds it in $HOLDINGPEN_MEMORY_FD
                     or $HOLDINGPEN_DISK_FD
      --strict       if nothing can be borrowed, fail rather than run CMD without
  -q, --quiet        say nothing when running CMD without a reservation

Exit status: CMD's; 64 usage; with --strict, 69 nothing borrowed (daemon not
running, pool empty) and 77 not authorized; 126 CMD not executable; 127 CMD
not found.
"""


def main():
    sys.exit(run(sys.argv[1:]))


def run(argv, environ=os.environ):
    try:
        opts, command = cmdline.parse(OPTIONS, argv)
        if opts["help"]:
            sys.stdout.write(USAGE + HELP)
            return 0
        if not command:
            raise cmdline.UsageError("no command given")
    except cmdline.UsageError as e:
        sys.stderr.write(f"gatekeeper: {e}\n{USAGE}")
        return exits.USAGE
    found = cmdline.find_program(command[0], environ.get("PATH", os.defpath))
    if found is None:
        sys.stderr.write(f"gatekeeper: {command[0]}: command not found\n")
        return exits.NOT_FOUND

    kind = opts["kind"] or "memory"
    env = dict(environ)
    try:
        sock = borrow(client.socket_path(opts["socket"], environ), kind, opts["fd"], env)
    except Refused as e:
        if opts["strict"]:
            sys.stderr.write(f"gatekeeper: {e}\n")
            return e.exit_code
        if not opts["quiet"]:
            sys.stderr.write(f"gatekeeper: {e}; running {command[0]} without a reservation\n")
        sock = None
    if sock is not None:
        os.set_inheritable(sock.fileno(), True)   # the loan lasts as long as CMD (and its children)
        sock.detach()
    try:
        os.execve(found, command, env)
    except OSError as e:
        sys.stderr.write(f"gatekeeper: cannot run {command[0]}: {e.strerror}\n")
        return exits.CANNOT_RUN


class Refused(Exception):
    def __init__(self, message, exit_code=exits.UNAVAILABLE):
        super().__init__(message)
        self.exit_code = exit_code


def borrow(path, kind, want_fd, env):
    """The connection that holds the loan; with want_fd, the descriptor goes into env.

    Raises:
        Refused: nothing was borrowed; the message says why.
    """
    try:
        sock = client.connect(path)
        reply, fds = client.ask(sock, protocol.Request(protocol.BORROW, kind, want_fd))
    except client.Unavailable as e:
        raise Refused(str(e)) from None
    if not reply["ok"]:
        sock.close()
        code = exits.NOPERM if reply.get("error") == protocol.NOT_AUTHORIZED else exits.UNAVAILABLE
        raise Refused(f"{reply.get('message') or reply.get('error')} ({reply.get('error')})", code)
    if want_fd:
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            sock.close()
            raise Refused("the daemon sent no descriptor")
        os.set_inheritable(fds[0], True)
        env[FD_ENV[reply["kind"].partition(":")[0]]] = str(fds[0])
    else:
        for fd in fds:
            os.close(fd)
    return sock
