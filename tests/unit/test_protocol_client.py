"""client.ask over a real socket pair: exactly one reply is taken, however the bytes arrive."""

import os
import socket
import threading
from contextlib import contextmanager

import pytest

from holdingpen.pen import client, protocol

BORROWED = protocol.borrow_reply("memory", 4096, False)
AGAIN = protocol.error_reply(protocol.BUSY, "the daemon restarted while handing the "
                             "reservation over; ask again")


@contextmanager
def answering(sends, hang_up=False):
    """Our end of a socket pair whose daemon's end reads the request, then sends each of
    sends (bytes, fds) in turn, and hangs up if asked to."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def serve():
        theirs.recv(4096)
        for data, fds in sends:
            socket.send_fds(theirs, [data], fds) if fds else theirs.sendall(data)
        if hang_up:
            theirs.shutdown(socket.SHUT_WR)
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield ours
    finally:
        thread.join()
        ours.close()
        theirs.close()


def test_two_replies_arriving_together_give_the_first():
    # An adopted, unanswered borrower is answered again after a restart; if the first
    # answer did reach it, both lines can arrive in one read. The loan is the first's.
    with answering([(BORROWED + AGAIN, [])]) as sock:
        fields, fds = client.ask(sock, protocol.Request(protocol.BORROW, "memory"))
    assert fields == {"ok": True, "action": "borrow", "kind": "memory", "size": 4096, "fd": False}
    assert fds == []


def test_a_reply_in_pieces_is_put_together():
    with answering([(BORROWED[:5], []), (BORROWED[5:], [])]) as sock:
        fields, _ = client.ask(sock, protocol.Request(protocol.BORROW, "memory"))
    assert fields["size"] == 4096


def test_the_descriptor_comes_with_the_first_reply():
    r, w = os.pipe()
    try:
        with answering([(protocol.borrow_reply("memory", 4096, True) + AGAIN, [r])]) as sock:
            fields, fds = client.ask(sock, protocol.Request(protocol.BORROW, "memory", True))
    finally:
        os.close(r)
        os.close(w)
    assert fields["fd"] is True and len(fds) == 1
    os.close(fds[0])


@pytest.mark.parametrize("sent, says", [
    (b"", "closed the connection without an answer"),
    (b'{"ok":true', "not JSON"),                        # cut short, then closed
    (b"HTTP/1.1 400 Bad Request\r\n", "not JSON"),
])
def test_what_is_not_one_reply_is_unavailable(sent, says):
    with answering([(sent, [])] if sent else [], hang_up=True) as sock:
        with pytest.raises(client.Unavailable) as e:
            client.ask(sock, protocol.Request(protocol.STATUS), timeout_s=5)
    assert says in str(e.value)
