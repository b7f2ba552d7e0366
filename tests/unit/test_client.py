"""client: connect and ask over a real socket pair; the lines that name the fix."""

import os
import socket

import pytest

from holdingpen.pen import client, protocol


def daemon_side(reply, fds=()):
    """A socket pair: (ours, the daemon's end, which has already answered with reply)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if reply is not None:
        socket.send_fds(theirs, [reply], list(fds)) if fds else theirs.sendall(reply)
    return ours, theirs


# (what the daemon sends, what ask() makes of it: the reply's fields or Unavailable's message)
REPLIES = [
    (b'{"ok":true,"action":"borrow","kind":"memory","size":1048576,"fd":false}\n',
     {"ok": True, "action": "borrow", "kind": "memory", "size": 1048576, "fd": False}),
    (b'{"ok":false,"error":"pool-empty","message":"all 2 memory reservations are lent"}\n',
     {"ok": False, "error": "pool-empty", "message": "all 2 memory reservations are lent"}),
    (b"HTTP/1.1 400 Bad Request\n", "the daemon's reply is not JSON"),
    (b"\xff\xfe\n", "the daemon's reply is not JSON"),
    (b"[true]\n", 'the daemon\'s reply has no "ok"'),
    (b'{"ok":"yes"}\n', 'the daemon\'s reply has no "ok"'),
    (b"", "the daemon closed the connection without an answer"),
]


@pytest.mark.parametrize("sent, outcome", REPLIES)
def test_ask_reads_one_reply(sent, outcome):
    ours, theirs = daemon_side(sent)
    theirs.shutdown(socket.SHUT_WR)
    with ours, theirs:
        if isinstance(outcome, dict):
            assert client.ask(ours, protocol.Request(protocol.STATUS)) == (outcome, [])
        else:
            with pytest.raises(client.Unavailable) as raised:
                client.ask(ours, protocol.Request(protocol.STATUS))
            assert str(raised.value) == outcome
        assert theirs.recv(100) == b'{"action":"status"}\n'


def test_the_reservation_arrives_close_on_exec(tmp_path):
    reservation = os.memfd_create("chunk")
    ours, theirs = daemon_side(b'{"ok":true,"action":"borrow","kind":"memory","size":4096,'
                               b'"fd":true}\n', [reservation])
    with ours, theirs:
        reply, fds = client.ask(ours, protocol.Request(protocol.BORROW, "memory", True))
    try:
        assert reply["fd"] is True and len(fds) == 1
        assert os.readlink(f"/proc/self/fd/{fds[0]}") == "/memfd:chunk (deleted)"
        assert not os.get_inheritable(fds[0])
    finally:
        for fd in (reservation, *fds):
            os.close(fd)


def test_a_reply_not_in_protocol_closes_what_came_with_it():
    reservation = os.memfd_create("chunk")
    ours, theirs = daemon_side(b"nonsense\n", [reservation])
    before = set(os.listdir("/proc/self/fd"))
    with ours, theirs, pytest.raises(client.Unavailable):
        client.ask(ours, protocol.Request(protocol.STATUS))
    assert set(os.listdir("/proc/self/fd")) <= before
    os.close(reservation)


def test_a_daemon_that_says_nothing_in_time():
    ours, theirs = daemon_side(None)
    with ours, theirs, pytest.raises(client.Unavailable) as raised:
        client.ask(ours, protocol.Request(protocol.STATUS), timeout_s=0.1)
    assert str(raised.value) == "the daemon did not answer within 0 s"


# (path, errno of connect(2), the line)
CANNOT_CONNECT = [
    ("/nope", 2, "nothing listens at /nope (no such file); give the daemon's socket with --socket "
                 "or $HOLDINGPEN_SOCKET (the default is /run/holdingpen.socket)"),
    ("/run/holdingpen.socket", 2, "the holdingpen daemon is not running (/run/holdingpen.socket); "
                                  "start it with: systemctl restart holdingpen.socket"),
    ("/tmp/hp.sock", 111, "the holdingpen daemon is not running (/tmp/hp.sock); "
                          "start it with: systemctl restart holdingpen.socket"),
    ("/tmp/hp.sock", 13, "no permission to connect to /tmp/hp.sock"),
    ("/tmp/f/hp.sock", 20, "cannot connect to /tmp/f/hp.sock: Not a directory"),
]


@pytest.mark.parametrize("path, error, line", CANNOT_CONNECT)
def test_cannot_connect_names_the_fix(path, error, line):
    assert client.cannot_connect(path, OSError(error, os.strerror(error))) == line
