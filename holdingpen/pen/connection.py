"""One client's connection, as the daemon's loop sees it: what came in, what is to go out.

Replies are queued and sent as the socket takes them; a reply that carries
descriptors (SCM_RIGHTS) sends them with its first bytes, and what a partial
send left over follows without them. send_fds is passed in, so that a test
can make a send partial, which a real socket does only when it is nearly full.
"""

import os
import socket

from holdingpen.pen import protocol


class Conn:
    """A client: its socket and Peer, and where it is in its one request.

    Args:
        sock: the connected, non-blocking socket.
        peer: peer.Peer, from the kernel.
        deadline: monotonic time by which it must have asked, or None.
    """

    __slots__ = ("sock", "peer", "reader", "outbox", "outbox_fds", "deadline", "loan",
                 "chunk", "answered", "close_when_sent", "counted", "checking", "closed",
                 "units", "waiting")

    def __init__(self, sock, peer, deadline):
        self.sock, self.peer, self.deadline = sock, peer, deadline
        self.reader = protocol.request_reader()
        self.outbox = b""
        self.outbox_fds = []         # go with the outbox's first byte
        self.loan = None             # (loan id, store name) once it borrowed
        self.chunk = None            # what it borrowed, while the daemon keeps part of it
        self.answered = True         # its borrow's reply has gone out (or none is due)
        self.close_when_sent = False
        self.counted = False         # in the per-user connection count
        self.checking = False        # its borrow is with authorize() on the asker thread
        self.closed = False
        self.units = None            # the systemd units its memory loan protects, if any
        self.waiting = False         # its reply waits for that protection (chunk still ours)

    def receive(self):
        """Read what the client sent.

        Returns:
            its request line once whole; None until then, and for anything it says after.
        Raises:
            EOFError: it hung up, or the connection failed.
            protocol.BadRequest: a line too long.
        """
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, protocol.MAX_LINE_BYTES + 1, 16)
        except BlockingIOError:
            return None
        except OSError:
            raise EOFError from None
        for fd in fds:             # descriptors a client sends are never ours to keep
            os.close(fd)
        if not data:
            raise EOFError
        if self.loan is not None or self.close_when_sent or self.checking:
            return None            # talk after the request changes nothing
        self.reader.feed(data)
        return self.reader.next_line()

    def queue(self, data, fds=()):
        """Queue data to send; fds go with its first byte (queue them on an empty outbox)."""
        if fds and self.outbox:
            raise ValueError("descriptors must start a reply")
        self.outbox += data
        self.outbox_fds = list(fds)

    def flush(self, send_fds=socket.send_fds):
        """Send what the socket takes now.

        Returns:
            True once everything queued is sent; False if the socket is full.
        Raises:
            OSError: the client went away.
        """
        try:
            while self.outbox:
                if self.outbox_fds:
                    sent = send_fds(self.sock, [self.outbox], self.outbox_fds)
                    self.outbox_fds = []       # they went with the first byte
                else:
                    sent = self.sock.send(self.outbox)
                self.outbox = self.outbox[sent:]
        except BlockingIOError:
            return False
        return True

    def fds_pending(self):
        """Whether descriptors queued have not gone yet (the client does not have them)."""
        return bool(self.outbox_fds)
