"""client.ask over a real socket pair: exactly one reply is taken, however the bytes arrive."""

import os
import socket
import threading

import pytest

from holdingpen.pen import client, protocol

BORROWED = protocol.borrow_reply("memory", 4096, False)
AGAIN = protocol.error_reply(protocol.BUSY, "the daemon restarted while handing the "
                             "reservation over; ask again")


def answer(sends, hang_up=False):
    """A daemon's end that reads the request, then sends each of sends (bytes, fds) in
    turn, and hangs up if asked to."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def serve():
        theirs.recv(4096)
        for data, fds in sends:
            socket.send_fds(theirs, [data], fds) if fds else theirs.sendall(data)
        if hang_up:
            theirs.shutdown(socket.SHUT_WR)
    thread = threading.Thread(target=serve)
    thread.start()
    return ours, theirs, thread


def test_two_replies_arriving_together_give_the_first():
    # An adopted, unanswered borrower is answered again after a restart; if the first
    # answer did reach it, both lines can arrive in one read. The loan is the first's.
    ours, theirs, thread = answer([(BORROWED + AGAIN, [])])
    try:
        fields, fds = client.ask(ours, protocol.Request(protocol.BORROW, "memory"))
    finally:
        thread.join()
        ours.close()
        theirs.close()
    assert fields == {"ok": True, "action": "borrow", "kind": "memory", "size": 4096, "fd": False}
    assert fds == []


def test_a_reply_in_pieces_is_put_together():
    ours, theirs, thread = answer([(BORROWED[:5], []), (BORROWED[5:], [])])
    try:
        fields, _ = client.ask(ours, protocol.Request(protocol.BORROW, "memory"))
    finally:
        thread.join()
        ours.close()
        theirs.close()
    assert fields["size"] == 4096


def test_the_descriptor_comes_with_the_first_reply():
    r, w = os.pipe()
    ours, theirs, thread = answer([(protocol.borrow_reply("memory", 4096, True) + AGAIN, [r])])
    try:
        fields, fds = client.ask(ours, protocol.Request(protocol.BORROW, "memory", True))
    finally:
        thread.join()
        ours.close()
        theirs.close()
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
    ours, theirs, thread = answer([(sent, [])] if sent else [], hang_up=True)
    try:
        with pytest.raises(client.Unavailable) as e:
            client.ask(ours, protocol.Request(protocol.STATUS), timeout_s=5)
    finally:
        thread.join()
        ours.close()
        theirs.close()
    assert says in str(e.value)
