"""Who is at the other end of a connection, as the kernel says: SO_PEERCRED and a pidfd.

Nothing a client says about itself is trusted; this is all the daemon knows
of it, and all that reaches the authorize step (authorize.py) and polkit.
"""

import os
import pwd
import socket
import struct

_SO_PEERPIDFD = 77     # Linux 6.5: a pidfd for the very process that connected


class Peer:
    """A client as the kernel describes it: SO_PEERCRED, and a pidfd to know it is still there."""

    __slots__ = ("pid", "uid", "gid", "user", "comm", "start_time", "pidfd")

    def __init__(self, pid, uid, gid, comm, start_time=None, pidfd=None):
        self.pid, self.uid, self.gid, self.comm = pid, uid, gid, comm
        self.start_time, self.pidfd = start_time, pidfd
        try:
            self.user = pwd.getpwuid(uid).pw_name
        except KeyError:
            self.user = str(uid)

    def alive(self):
        """Whether the connected process still runs (so its pid is still its own)."""
        if self.pidfd is None:
            return False
        import select
        poller = select.poll()     # not select(): a daemon with 1,000 clients has fds past 1024
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)  # a pidfd reads ready at exit

    def close(self):
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def peer_of(sock, proc="/proc"):
    """Who is at the other end, from the kernel; and its start time, for polkit.

    The pidfd comes from SO_PEERPIDFD where the kernel has it, so it is the
    process that connected even if its pid was reused since; elsewhere from
    pidfd_open(pid), a moment later. The start time is read while the pidfd
    says the process is alive, so it belongs to that process.
    """
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    try:
        pidfd = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERPIDFD)
    except OSError:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
    peer = Peer(pid, uid, gid, "?", None, pidfd)
    try:
        with open(f"{proc}/{pid}/comm", errors="replace") as f:   # a name is any bytes
            peer.comm = f.read().strip()
        with open(f"{proc}/{pid}/stat", errors="replace") as f:
            peer.start_time = int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        pass
    if peer.start_time is None or not peer.alive():
        peer.close()           # gone already: it will not be authorized
    return peer


def allow_connected(peer, pool_name):
    """Whoever can open the socket may borrow (tests, and runs by hand)."""
    return True, ""
