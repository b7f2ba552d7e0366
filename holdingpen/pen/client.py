"""Talking to the daemon: connect, send one request, read one reply (and a descriptor)."""

import os
import socket

from holdingpen.pen import protocol

DEFAULT_SOCKET_PATH = "/run/holdingpen.socket"
SOCKET_PATH_ENV = "HOLDINGPEN_SOCKET"
REPLY_TIMEOUT_S = 30.0


class Unavailable(Exception):
    """The daemon cannot be asked; the message names the fix."""


def socket_path(path=None, environ=os.environ):
    """path if given, else $HOLDINGPEN_SOCKET, else /run/holdingpen.socket."""
    return path or environ.get(SOCKET_PATH_ENV) or DEFAULT_SOCKET_PATH


def connect(path):
    """A connection to the daemon at path (close-on-exec, blocking).

    Raises:
        Unavailable: nothing listens there, or we may not connect.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise Unavailable(f"the holdingpen daemon is not running ({path}); "
                          "start it with: systemctl restart holdingpen.socket") from None
    except PermissionError:
        sock.close()
        raise Unavailable(f"no permission to connect to {path}") from None
    except OSError as e:
        sock.close()
        raise Unavailable(f"cannot connect to {path}: {e.strerror}") from None
    return sock


def ask(sock, request, timeout_s=REPLY_TIMEOUT_S):
    """Send request, return (reply fields, descriptors received with it).

    Exactly one reply line is taken: a second one that arrives with it (an
    adopted borrower answered again after a restart) is left unread.

    Raises:
        Unavailable: the daemon hung up, said nothing in time, or not in protocol.
    """
    reader, fds, line = protocol.reply_reader(), [], None
    sock.settimeout(timeout_s)
    try:
        sock.sendall(protocol.encode_request(request))
        while line is None:
            data, more_fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
            fds += more_fds
            if not data:
                break
            reader.feed(data)
            line = reader.next_line()
        if line is None and reader.buffer:
            line = reader.buffer         # closed after a last line without its newline
        if line is None:
            raise Unavailable("the daemon closed the connection without an answer")
        return protocol.decode_reply(line), fds
    except socket.timeout:
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


def _close_all(fds):
    for fd in fds:
        os.close(fd)
