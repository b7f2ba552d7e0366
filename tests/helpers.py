"""What tests of every tier share: waiting for something, and reading the daemon's raw reply.

(The daemon fixture, `pen`, lives in tests/integration/conftest.py, built on
tests/integration/pen.py.)
"""

import os
import socket
import time


def wait_until(predicate, what, timeout_s=20.0, poll_s=0.005):
    """Poll predicate until it is true and return its value; fail naming `what` if it never is."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


def read_reply(sock, timeout_s=30.0, fds=None):
    """The bytes of one reply line as they come off sock, newline included: up to the
    first newline, or what came before the daemon closed (b"" for nothing).

    Reads byte runs as they arrive and stops at the first newline, so what follows
    it stays unread only if it arrived later. With fds (a list), descriptors that
    come with the reply are appended to it.

    Raises:
        socket.timeout: nothing more within timeout_s (None: wait as sock is set).
    """
    if timeout_s is not None:
        sock.settimeout(timeout_s)
    data = b""
    while not data.endswith(b"\n"):
        more, more_fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
        if fds is not None:
            fds += more_fds
        else:
            for fd in more_fds:
                os.close(fd)
        if not more:
            break
        data += more
    return data
