"""The listening socket, when the daemon binds it itself (run by hand, or --socket)."""

import errno
import os
import socket


def bind(path):
    """Listen on path ourselves.

    Raises:
        OSError: path is taken by a live daemon, or cannot be bound.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
        raise OSError(errno.EADDRINUSE, f"another daemon is listening on {path}")
    except (FileNotFoundError, ConnectionRefusedError):
        if os.path.lexists(path):
            os.unlink(path)      # a socket file left by a daemon that died
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    os.chmod(path, 0o666)        # as SocketMode= in holdingpen.socket: the mode decides who may ask
    sock.listen(1024)
    return sock
