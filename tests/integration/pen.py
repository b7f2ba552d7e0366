"""Helpers for tests that run the Holding Pen daemon by hand, with a real NOTIFY_SOCKET."""

import os
import signal
import socket
import subprocess
import threading

from holdingpen.pen import headroom
from helpers import read_reply, wait_until

MiB = 1 << 20
CHUNK = 64 * MiB


class Notifications:
    """A datagram socket standing in for systemd's notify socket: records what the daemon says.

    Descriptors sent with FDSTORE=1 are closed at once (this "systemd" keeps
    no store), so that the daemon's own accounting of memory is what tests see.
    """

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages = []          # (text, number of descriptors)
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 65536, 64)
            except socket.timeout:
                continue
            except OSError:
                return
            for fd in fds:
                os.close(fd)
            self.messages.append((data.decode(), len(fds)))

    def lines(self):
        return [line for text, _ in list(self.messages) for line in text.split("\n")]

    def wait_for(self, line, what=None):
        wait_until(lambda: line in self.lines(), what or repr(line))

    def last(self, prefix):
        found = [line for line in self.lines() if line.startswith(prefix)]
        return found[-1] if found else None

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


def write_config(path, memory_count=4, disk_dir=None, disk_count=2, size="64M", extra=""):
    text = f'[memory]\nsize = "{size}"\ncount = {memory_count}\n'
    if disk_dir is not None:
        text += f'[[disk]]\npath = "{disk_dir}"\nsize = "{size}"\ncount = {disk_count}\n'
    path.write_text(text + extra)
    return path


def start_pen(bindir, workdir, memory_count=4, disk=False, **config):
    """A Pen serving write_config(memory_count, ...), its pools full; with disk, also a
    disk pool in workdir/disk (pen.disk, pen.disk_pool)."""
    disk_dir = None
    if disk:
        disk_dir = workdir / "disk"
        disk_dir.mkdir()
    p = Pen(bindir, workdir, write_config(workdir / "pool.toml", memory_count=memory_count,
                                          disk_dir=disk_dir, **config))
    p.disk, p.disk_pool = disk_dir, f"disk:{disk_dir}" if disk else None
    p.wait_full()
    if disk:
        p.wait_full(p.disk_pool)
    return p


class Pen:
    """A daemon we started, on its own socket; stop() ends it by its pid."""

    def __init__(self, bindir, workdir, config, env=None):
        self.socket = str(workdir / "hp.sock")
        self.notify = Notifications(workdir / "notify.sock")
        self.env = dict(os.environ if env is None else env,
                        PATH=f"{bindir}:{os.environ['PATH']}", HOLDINGPEN_SOCKET=self.socket,
                        NOTIFY_SOCKET=self.notify.path)
        self.log = open(workdir / "daemon.log", "w+")
        self.proc = subprocess.Popen(["holdingpen", "serve", "--config", str(config),
                                      "--socket", self.socket],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.notify.wait_for("READY=1", "the daemon to be ready")

    @property
    def pid(self):
        return self.proc.pid

    def run(self, argv, **kw):
        kw.setdefault("timeout", 60)
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, **kw)

    def status(self):
        import json
        done = self.run(["holdingpen", "status", "--json"])
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def pool(self, name="memory"):
        return next(p for p in self.status()["pools"] if p["name"] == name)

    def wait_full(self, name="memory"):
        wait_until(lambda: (lambda p: p["held"] == p["count"])(self.pool(name)),
                   f"{name} pool to be full")

    def held_memfd_bytes(self):
        """Bytes of memfd pages the daemon holds, as the kernel counts them."""
        total = 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                if os.readlink(f"/proc/{self.pid}/fd/{fd}").startswith("/memfd:holdingpen-memory"):
                    total += os.stat(f"/proc/{self.pid}/fd/{fd}").st_blocks * 512
            except FileNotFoundError:
                pass
        return total

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_bytes(self):
        """The daemon's resident memory (VmRSS): its own, and its pool only where swap has it locked."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise KeyError("VmRSS")

    def logged(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self.notify.close()
        self.log.close()
        return code


def meminfo(field):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def vmstat(field):
    """A counter from /proc/vmstat, e.g. vmstat("oom_kill")."""
    with open("/proc/vmstat") as f:
        for line in f:
            name, value = line.split()
            if name == field:
                return int(value)
    raise KeyError(field)


def available_bytes():
    """MemAvailable as the daemon counts it: with the kernel's per-CPU free lists
    (headroom.read_meminfo), where a freed chunk can sit unseen for a while."""
    return headroom.read_meminfo()["MemAvailable"]


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.connect(path)
    return s


def read_line(sock, timeout_s=30):
    """One raw reply line (helpers.read_reply), descriptors closed."""
    return read_reply(sock, timeout_s)
