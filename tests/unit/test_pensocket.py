"""The commands' cheap side of the daemon's socket says what protocol.py says, byte for byte.

pensocket and jsonline exist for start-up time only; these tests keep them
the same conversation as holdingpen.pen.protocol and client, over a real
socket pair.
"""

import json
import os
import socket

import pytest
from hypothesis import given, settings, strategies as st

from holdingpen.cli import pensocket
from holdingpen.common import jsonline
from holdingpen.pen import client, protocol

KINDS = ["memory", "disk", "disk:/var/tmp", "disk:/srv/é", 'a"b\\c', "\u2603", "x\ty", "\U0001f600"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("want_fd", [False, True])
def test_borrow_request_is_protocols(kind, want_fd):
    assert pensocket.borrow_request(kind, want_fd) == \
        protocol.encode_request(protocol.Request(protocol.BORROW, kind, want_fd))


def test_status_request_and_names_are_protocols_and_clients():
    assert pensocket.status_request() == protocol.encode_request(protocol.Request(protocol.STATUS))
    assert pensocket.NOT_AUTHORIZED == protocol.NOT_AUTHORIZED
    assert (pensocket.DEFAULT_SOCKET_PATH, pensocket.SOCKET_PATH_ENV) == \
        (client.DEFAULT_SOCKET_PATH, client.SOCKET_PATH_ENV)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300)
@given(JSON)
def test_jsonline_writes_and_reads_as_json_does(value):
    text = json.dumps(value, separators=(",", ":"))
    assert jsonline.dumps(value) == text
    assert jsonline.loads(text) == json.loads(text)
    assert jsonline.loads(f" {text}\n") == value or value != value


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_jsonline_refuses_what_json_refuses(text):
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        with pytest.raises((ValueError, RecursionError)):
            jsonline.loads(text)
    else:
        got = jsonline.loads(text)
        assert got == expected or (got != got and expected != expected)   # NaN


def test_jsonline_refuses_what_it_cannot_write():
    with pytest.raises(TypeError):
        jsonline.dumps({"fd": object()})


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
def test_ask_reads_what_client_reads(sent, outcome):
    for ask, request, error in (
            (pensocket.ask, pensocket.status_request(), pensocket.Unavailable),
            (client.ask, protocol.Request(protocol.STATUS), client.Unavailable)):
        ours, theirs = daemon_side(sent)
        theirs.shutdown(socket.SHUT_WR)
        with ours, theirs:
            if isinstance(outcome, dict):
                assert ask(ours, request) == (outcome, [])
            else:
                with pytest.raises(error) as raised:
                    ask(ours, request)
                assert str(raised.value) == outcome
            assert theirs.recv(100) == b'{"action":"status"}\n'


def test_the_reservation_arrives_close_on_exec(tmp_path):
    reservation = os.memfd_create("chunk")
    ours, theirs = daemon_side(b'{"ok":true,"action":"borrow","kind":"memory","size":4096,'
                               b'"fd":true}\n', [reservation])
    with ours, theirs:
        reply, fds = pensocket.ask(ours, pensocket.borrow_request("memory", True))
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
    with ours, theirs, pytest.raises(pensocket.Unavailable):
        pensocket.ask(ours, pensocket.status_request())
    assert set(os.listdir("/proc/self/fd")) <= before
    os.close(reservation)


def test_a_daemon_that_says_nothing_in_time():
    ours, theirs = daemon_side(None)
    with ours, theirs, pytest.raises(pensocket.Unavailable) as raised:
        pensocket.ask(ours, pensocket.status_request(), timeout_s=0.1)
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
    assert pensocket.cannot_connect(path, OSError(error, os.strerror(error))) == line
