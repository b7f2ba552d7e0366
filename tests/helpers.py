"""What tests of every tier share: waiting for something, reading the daemon's raw reply,
and the README's install command.

(The daemon fixture, `pen`, lives in tests/integration/conftest.py, built on
tests/integration/pen.py.)
"""

import os
import re
import socket
import time
from pathlib import Path


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


# The install line of a README code block, e.g. "$ sudo python3 -m holdingpen.install".
_INSTALL_LINE = re.compile(r"^\s*(?:\$\s+)?sudo\s+(python3 -m holdingpen\.install)\s*(?:#.*)?$")


def readme_install_command(readme):
    """The install command from README.md's code blocks, without its "sudo".

    The system and machine tiers run it as root, where a minimal Debian has no sudo.

    Raises:
        LookupError: README.md has no such line in a code block.
    """
    in_code = False
    for line in Path(readme).read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif in_code and (match := _INSTALL_LINE.match(line)):
            return match.group(1)
    raise LookupError(f"{readme} has no 'sudo python3 -m holdingpen.install' line in a code "
                      "block; the system and machine tests install exactly the way the README says")
