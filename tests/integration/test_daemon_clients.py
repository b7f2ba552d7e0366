"""Clients good and bad: each gets an answer or a clean close, and the accounting stays exact."""

import array
import json
import os
import socket

import pytest

from helpers import wait_until
from pen import CHUNK, connect, read_line

PEN_CONFIG = {"memory_count": 4}


def exact(pen):
    """held + lent == count once nothing is being reserved."""
    pool = pen.pool()
    return pool["reserving"] == 0 and pool["held"] + pool["lent"] == pool["count"]


def ask(path, payload):
    with connect(path) as s:
        s.sendall(payload)
        return read_line(s)


# (what a client sends, the error code it gets)
BAD = [
    (b"hello\n", "bad-request"),
    (b"[]\n", "bad-request"),
    (b'{"action": "steal"}\n', "bad-request"),
    (b'{"action": "borrow", "kind": 7}\n', "bad-request"),
    (b'{"action": "borrow", "fd": "yes"}\n', "bad-request"),
    (b'{"action": "borrow", "uid": 0}\n', "bad-request"),        # identity is the kernel's to say
    (b'{"action": "borrow", "kind": "gpu"}\n', "unknown-kind"),
    (b'{"action": "borrow", "kind": "disk"}\n', "unknown-kind"),
    (b"\xff\xfe\n", "bad-request"),
    (b"{\0}\n", "bad-request"),
    (b"[" * 100000 + b"\n", "too-long"),
    (b"x" * 5000, "too-long"),                                   # no newline at all
]


@pytest.mark.parametrize("payload, code", BAD)
def test_bad_requests_get_an_error_line_and_a_close(pen, payload, code):
    reply = json.loads(ask(pen.socket, payload))
    assert (reply["ok"], reply["error"]) == (False, code)
    assert reply["message"]
    assert exact(pen) and pen.pool()["held"] == 4


def test_a_client_that_hangs_up_mid_request_changes_nothing(pen):
    for partial in (b"", b'{"action": "bor', b'{"action": "borrow"}'):
        s = connect(pen.socket)
        s.sendall(partial)
        s.close()
    assert pen.run(["holdingpen", "status"]).returncode == 0
    assert exact(pen) and pen.pool()["held"] == 4


def test_descriptors_sent_by_a_client_are_not_kept(pen):
    before = pen.fd_count()
    r, w = os.pipe()
    with connect(pen.socket) as s:
        s.sendmsg([b'{"action": "status"}\n'],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, w] * 4))])
        assert json.loads(read_line(s))["ok"] is True
    os.close(r)
    os.close(w)
    wait_until(lambda: pen.fd_count() == before, "the daemon to hold no more descriptors than before")


def test_vanishing_in_the_middle_of_an_fd_hand_off(pen):
    for _ in range(20):
        s = connect(pen.socket)
        s.sendall(b'{"action": "borrow", "fd": true}\n')
        s.close()                       # gone before the reply and its descriptor
    wait_until(lambda: exact(pen) and pen.pool()["held"] == 4, "the pool to be whole again")
    assert pen.status()["loans"] == []


def test_talk_after_a_borrow_changes_nothing(pen):
    with connect(pen.socket) as s:
        s.sendall(b'{"action": "borrow"}\n')
        assert json.loads(read_line(s))["ok"] is True
        s.sendall(b'{"action": "borrow"}\n' * 100 + b"noise" * 1000)
        wait_until(lambda: pen.pool()["lent"] == 1, "one loan")
        assert pen.pool()["held"] == 3
    wait_until(lambda: exact(pen) and pen.pool()["lent"] == 0, "the loan to be returned")


def test_a_thousand_connections_at_once(pen):
    baseline = pen.fd_count()
    socks = [connect(pen.socket) for _ in range(1000)]
    for s in socks:
        s.sendall(b'{"action": "status"}\n')
    replies = [json.loads(read_line(s)) for s in socks]
    for s in socks:
        s.close()
    assert all(r["ok"] and r["pools"][0]["count"] == 4 for r in replies)
    wait_until(lambda: pen.fd_count() == baseline, "the daemon's descriptors to return to baseline")
    assert exact(pen)


def test_borrowing_until_empty_then_refilling(pen):
    held = []
    for _ in range(4):
        s = connect(pen.socket)
        s.sendall(b'{"action": "borrow", "fd": true}\n')
        msg, fds, _, _ = socket.recv_fds(s, 4096, 4)
        assert json.loads(msg)["size"] == CHUNK and len(fds) == 1
        held.append((s, fds[0]))
    reply = json.loads(ask(pen.socket, b'{"action": "borrow"}\n'))
    assert (reply["ok"], reply["error"]) == (False, "pool-empty")
    assert reply["message"] == "all 4 memory reservations are lent"
    assert pen.pool()["lent"] == 4 and exact(pen)
    for s, fd in held:
        s.close()
        os.close(fd)
    pen.wait_full()
    assert exact(pen)
