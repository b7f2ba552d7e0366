"""What the benchmarks share: the installed launchers, a lock file, statistics."""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from holdingpen import install  # noqa: E402

PYTHON = "/usr/bin/python3"


class Setup:
    """A temporary directory with the launchers (as installed) and a lock file."""

    def __enter__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="holdingpen-bench."))
        self.lock = self.dir / "machine.lock"
        self.lock.touch()
        install.write_launchers(self.dir, REPO, PYTHON, install.entry_points(REPO))
        self.env = dict(os.environ, PATH=f"{self.dir}:{os.environ['PATH']}",
                        PERFLOCK_LOCK=str(self.lock))
        return self

    def __exit__(self, *exc):
        import shutil
        shutil.rmtree(self.dir)

    def cmd(self, name):
        return str(self.dir / name)


def wall_ms(argv, runs, env=None):
    """Wall times in ms of running argv to completion (its output dropped), runs times."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
    return times


def median(xs):
    return statistics.median(xs)


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def report(name, xs, unit="ms"):
    print(f"  {name:<34} median {median(xs):8.3f} {unit}   p99 {percentile(xs, 99):8.3f} {unit}"
          f"   (n={len(xs)})")


# ---- the Holding Pen daemon, run by hand; C baselines; /proc ----

GiB = 1 << 30
MiB = 1 << 20


def compile_c(source, directory, name):
    """Compile C source (a string, the bench's own) with gcc -O2; return the program's path."""
    src = Path(directory) / f"{name}.c"
    src.write_text(source)
    exe = Path(directory) / name
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return str(exe)


def memory_config(size, count):
    """The text of a configuration with one memory pool of count chunks of size ("64M")."""
    return f'[memory]\nsize = "{size}"\ncount = {count}\n'


class Daemon:
    """`holdingpen serve` on a configuration of our own and its own socket.

    stop() ends it by its pid. With stamp_log, each stderr line is kept with
    the time.monotonic() at which it arrived (self.lines: [(t, text)]), read by
    a thread in this process; otherwise stderr goes to a file, so that a busy
    daemon never waits on us and we spend nothing reading it.
    """

    def __init__(self, setup, config_text, stamp_log=False, name="daemon"):
        self.setup = setup
        self.config = setup.dir / f"{name}.toml"
        self.config.write_text(config_text)
        self.socket = str(setup.dir / f"{name}.sock")
        self.lines = []
        self.log_path = setup.dir / f"{name}.log"
        argv = [setup.cmd("holdingpen"), "serve", "--config", str(self.config),
                "--socket", self.socket]
        env = dict(setup.env)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("LISTEN_FDS", None)
        self.started_at = time.monotonic()
        if stamp_log:
            self.proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
            import threading
            self._reader = threading.Thread(target=self._read_log, daemon=True)
            self._reader.start()
        else:
            self._log = open(self.log_path, "w")
            self.proc = subprocess.Popen(argv, env=env, stderr=self._log)
            self._reader = None

    def _read_log(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.decode(errors="replace").rstrip("\n")))

    @property
    def pid(self):
        return self.proc.pid

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def status(self):
        """The daemon's status reply (a dict), or None while it is not listening yet."""
        from holdingpen.pen import client, protocol
        try:
            sock = client.connect(self.socket)
        except client.Unavailable:
            return None
        try:
            reply, fds = client.ask(sock, protocol.Request(protocol.STATUS))
        finally:
            sock.close()
        for fd in fds:
            os.close(fd)
        return reply

    def wait(self, predicate, what, timeout_s=120.0, interval_s=0.005):
        """Poll status until predicate(reply) holds; return the time.monotonic() it did."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.proc.returncode}) "
                                   f"while we waited for {what}")
            reply = self.status()
            if reply is not None and predicate(reply):
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {reply}")
            time.sleep(interval_s)

    def wait_ready(self, **kw):
        return self.wait(lambda r: r.get("ready"), "the daemon to be ready", **kw)

    def wait_full(self, **kw):
        """Until every pool holds count chunks and nothing is being reserved."""
        return self.wait(lambda r: all(p["held"] == p["count"] and not p["reserving"]
                                       for p in r["pools"]), "the pool to be full", **kw)

    def fd_count(self, settle_s=0.2):
        """The daemon's open descriptors, settle_s after our last request (a status
        connection is closed only just after its reply is sent)."""
        time.sleep(settle_s)
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self):
        return proc_status_kib(self.pid, "VmRSS")

    def logged(self):
        if self._reader is not None:
            return [text for _, text in self.lines]
        self._log.flush()
        return self.log_path.read_text().splitlines()

    def stop(self, timeout_s=60):
        """SIGTERM by pid, SIGKILL if it lingers; returns once it has exited (its memory freed)."""
        import signal
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        else:
            self._log.close()


def proc_status_kib(pid, field):
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class MemAvailable:
    """MemAvailable in bytes, read cheaply and often (one open descriptor, pread)."""

    def __init__(self):
        self.fd = os.open("/proc/meminfo", os.O_RDONLY | os.O_CLOEXEC)

    def __call__(self):
        text = os.pread(self.fd, 8192, 0)
        at = text.index(b"MemAvailable:")
        return int(text[at + 13:text.index(b"kB", at)]) * 1024

    def close(self):
        os.close(self.fd)


def free_page_reporting():
    """Whether a virtio balloon reports free pages to the host (feature bit 5).

    Then freed memory goes back to the host, and allocating it again costs
    the host's page faults too: memory benchmarks vary with the host.
    """
    import glob
    for path in glob.glob("/sys/bus/virtio/drivers/virtio_balloon/virtio*/features"):
        try:
            with open(path) as f:
                if f.read()[5:6] == "1":
                    return True
        except OSError:
            pass
    return False
