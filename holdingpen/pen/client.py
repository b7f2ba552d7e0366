"""Talking to the daemon: connect, send one request, read one reply (and a descriptor).

gatekeeper and `holdingpen status` use it; gatekeeper runs before every CMD,
so this module stays cheap to import: the C core _socket rather than socket
(whose enums and selectors cost about 4 ms), and protocol's JSON on _json.
"""

import _socket
import errno
import os
import sys

from holdingpen.pen import protocol

DEFAULT_SOCKET_PATH = "/run/holdingpen.socket"
SOCKET_PATH_ENV = "HOLDINGPEN_SOCKET"
REPLY_TIMEOUT_S = 30.0
_MAX_FDS = 4                            # a reply carries one; more are read and closed
_SCM_SPACE = _socket.CMSG_SPACE(_MAX_FDS * 4)


class Unavailable(Exception):
    """The daemon cannot be asked; the message names the fix."""


def socket_path(path=None, environ=os.environ):
    """path if given, else $HOLDINGPEN_SOCKET, else /run/holdingpen.socket."""
    return path or environ.get(SOCKET_PATH_ENV) or DEFAULT_SOCKET_PATH


def cannot_connect(path, error):
    """The one line for a failed connect(2) to path, naming the fix."""
    # At the default path a missing file is holdingpen.socket stopped or its file
    # removed: restarting the unit fixes both. Elsewhere it is most likely a wrong path.
    if error.errno == errno.ENOENT and path != DEFAULT_SOCKET_PATH:
        return (f"nothing listens at {path} (no such file); give the daemon's socket with "
                f"--socket or ${SOCKET_PATH_ENV} (the default is {DEFAULT_SOCKET_PATH})")
    if error.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return (f"the holdingpen daemon is not running ({path}); "
                "start it with: systemctl restart holdingpen.socket")
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to connect to {path}"
    return f"cannot connect to {path}: {error.strerror}"


def connect(path):
    """A connection to the daemon at path (close-on-exec, blocking): a _socket.socket.

    Raises:
        Unavailable: nothing listens there, or we may not connect.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise Unavailable(cannot_connect(path, e)) from None
    return sock


def ask(sock, request, timeout_s=REPLY_TIMEOUT_S):
    """Send request (a protocol.Request), return (reply fields, descriptors received with it).

    Exactly one reply line is taken: a second one that arrives with it (an
    adopted borrower answered again after a restart) is left unread. The
    descriptors are close-on-exec.

    Raises:
        Unavailable: the daemon hung up, said nothing in time, or not in protocol.
    """
    reader, fds, line = protocol.reply_reader(), [], None
    sock.settimeout(timeout_s)
    try:
        sock.sendall(protocol.encode_request(request))
        while line is None:
            data, ancillary, _, _ = sock.recvmsg(1 << 20, _SCM_SPACE, _socket.MSG_CMSG_CLOEXEC)
            fds += _descriptors(ancillary)
            if not data:
                break
            reader.feed(data)
            line = reader.next_line()
        if line is None and reader.buffer:
            line = reader.buffer         # closed after a last line without its newline
        if line is None:
            raise Unavailable("the daemon closed the connection without an answer")
        return protocol.decode_reply(line), fds
    except TimeoutError:
        _close_all(fds)
        raise Unavailable(f"the daemon did not answer within {timeout_s:.0f} s") from None
    except OSError as e:
        _close_all(fds)
        raise Unavailable(f"the daemon hung up: {e.strerror}") from None
    except protocol.BadReply as e:
        _close_all(fds)
        raise Unavailable(e.message) from None
    except Unavailable:
        _close_all(fds)
        raise
    finally:
        sock.settimeout(None)


def _descriptors(ancillary):
    fds = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder, signed=True)
                    for i in range(0, usable, 4)]
    return fds


def _close_all(fds):
    for fd in fds:
        os.close(fd)
