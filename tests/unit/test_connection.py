"""A connection's outbox over a real socket pair: a partial send never truncates a reply."""

import os
import socket

import pytest

from holdingpen.pen import protocol
from holdingpen.pen.connection import Conn

REPLY = protocol.borrow_reply("memory", 4096, True)


def stingy(most_bytes):
    """send_fds as a nearly full socket behaves: it sends at most most_bytes."""
    def send_fds(sock, buffers, fds):
        return socket.send_fds(sock, [buffers[0][:most_bytes]], fds)
    return send_fds


def receive_all(sock):
    sock.settimeout(5)                 # a truncated reply fails the test, not hangs it
    data, fds = b"", []
    while not data.endswith(b"\n"):
        more, more_fds, _, _ = socket.recv_fds(sock, 65536, 4)
        assert more, f"closed after {data!r}"
        data, fds = data + more, fds + more_fds
    return data, fds


@pytest.mark.parametrize("most_bytes", [1, 10, len(REPLY) - 1, len(REPLY)])
def test_a_partial_send_with_a_descriptor_sends_the_rest_after(most_bytes):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    try:
        ours.setblocking(False)
        conn = Conn(ours, peer=None, deadline=None)
        conn.queue(REPLY, [r])
        assert conn.flush(stingy(most_bytes)) is True
        assert not conn.fds_pending()
        data, fds = receive_all(theirs)
        assert data == REPLY
        assert len(fds) == 1                     # once, with the first bytes
        os.close(fds[0])
    finally:
        for fd in (r, w):
            os.close(fd)
        ours.close()
        theirs.close()


def test_a_full_socket_keeps_the_rest_and_the_descriptor_for_later():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours.setblocking(False)
        conn = Conn(ours, peer=None, deadline=None)
        conn.queue(b"x" * (16 << 20))            # more than any socket buffer
        assert conn.flush() is False
        assert conn.outbox
    finally:
        ours.close()
        theirs.close()


def test_descriptors_must_start_a_reply():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn = Conn(ours, peer=None, deadline=None)
        conn.queue(b"x")
        with pytest.raises(ValueError):
            conn.queue(REPLY, [0])
    finally:
        ours.close()
        theirs.close()
