"""Faults of the daemon's own threads and descriptors, with a real daemon process.

Some of these need an authorize step that misbehaves on purpose, so the daemon
is started from a short script (SCRIPT) that builds it as `holdingpen serve`
does, on its own socket, with a real NOTIFY_SOCKET.
"""

import os
import subprocess
import sys
import textwrap
import time


from helpers import wait_until
from pen import MiB, Notifications, Pen, write_config
from holdingpen.pen import protocol

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from holdingpen.pen import config, daemon, events, fdstore
    from systemd import daemon as sd

    mode, socket_path, report = sys.argv[2:5]

    class Authorize:
        def warm_up(self):
            if mode == "warm-up-exits":
                raise SystemExit("a library called sys.exit() while connecting")

        def __call__(self, peer, pool_name):
            if mode == "pidfd-after-hang-up":
                # Wait for the client to exit and for the loop to see it hang up, then
                # look at the pidfd this thread was given: it must still be a pidfd.
                while peer.alive():
                    time.sleep(0.01)
                time.sleep(0.5)
                fd = peer.pidfd
                try:
                    what = os.readlink(f"/proc/self/fd/{fd}") if fd is not None else "closed"
                except OSError:
                    what = "closed"
                with open(report, "w") as f:
                    f.write(what)
            return True, ""

    cfg = config.parse(b'[memory]\\nsize = "4M"\\ncount = 1\\n', "test")
    daemon.Daemon(cfg, None, daemon.bind(socket_path), sd.notify,
                  events.Events(events.stderr_sink), fdstore.NoStore(),
                  authorize=Authorize()).run()
""")


def start(shared_tmp, mode, env=None, ready=True):
    """The script's daemon in mode: (process, Notifications, socket path, report path, log)."""
    notify = Notifications(shared_tmp / "notify.sock")
    socket_path, report = str(shared_tmp / "hp.sock"), str(shared_tmp / "report")
    log = open(shared_tmp / "daemon.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, REPO, mode, socket_path, report],
                            env=dict(os.environ, NOTIFY_SOCKET=notify.path, **(env or {})),
                            stdout=log, stderr=subprocess.STDOUT)
    if ready:
        notify.wait_for("READY=1", "the daemon to be ready")
    return proc, notify, socket_path, report, log


def stop(proc, notify, log):
    if proc.poll() is None:
        proc.terminate()
    code = proc.wait(30)
    notify.close()
    log.seek(0)
    text = log.read()
    log.close()
    return code, text


# ---- F1: a worker thread that fails (a missing jeepney: test_no_jeepney.py) ----

def test_a_worker_that_dies_stops_the_watchdog(shared_tmp):
    # Whatever kills a worker thread, the daemon must not go on saying WATCHDOG=1
    # while every borrow waits for ever: systemd is to restart it.
    proc, notify, socket_path, _, log = start(shared_tmp, "warm-up-exits",
                                              env={"WATCHDOG_USEC": "200000"})
    try:
        wait_until(lambda: "the asker thread died" in open(log.name).read(),
                   "the daemon to journal the thread's death")
        time.sleep(0.3)
        pings = notify.lines().count("WATCHDOG=1")
        time.sleep(1.0)                        # ten watchdog periods
        assert notify.lines().count("WATCHDOG=1") == pings
        assert proc.poll() is None             # systemd does the killing, not us
    finally:
        code, text = stop(proc, notify, log)
    assert "holdingpen: failed: the asker thread died: SystemExit(" in text


def test_by_hand_a_worker_that_dies_ends_the_daemon(shared_tmp):
    # No watchdog to stop: the daemon exits, non-zero, saying why.
    proc, notify, _, _, log = start(shared_tmp, "warm-up-exits", ready=False)
    try:
        assert proc.wait(20) != 0
    finally:
        code, text = stop(proc, notify, log)
    assert code != 0
    assert "the asker thread died" in text


# ---- F7: the pidfd the asker thread polls ----

def test_a_client_that_hangs_up_while_checked_keeps_its_pidfd_until_answered(shared_tmp):
    proc, notify, socket_path, report, log = start(shared_tmp, "pidfd-after-hang-up")
    try:
        client = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import socket
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect({socket_path!r})
            s.sendall({protocol.encode_request(protocol.Request(protocol.BORROW, "memory"))!r})
            """)], timeout=30)
        assert client.returncode == 0
        wait_until(lambda: os.path.exists(report) and open(report).read(), "the asker's report")
        assert open(report).read() == "anon_inode:[pidfd]"
    finally:
        stop(proc, notify, log)


# ---- F8: memory lent as a descriptor stays locked while the loan lasts ----

def locked_bytes(pid):
    """VmLck of pid: what it has locked in memory."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmLck:"))


def memfd_locked_bytes(pid):
    """The Locked: of pid's mappings of the pool's memfds, from smaps."""
    total, in_memfd = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                in_memfd = "/memfd:holdingpen-memory" in line
            elif in_memfd and line.startswith("Locked:"):
                total += int(line.split()[1]) * 1024
    return total


def test_memory_lent_as_a_descriptor_stays_locked_until_it_returns(bindir, shared_tmp):
    # Where there is swap the pool is locked; the loan must be too, or reclaim swaps
    # the borrower's pages out. This host may have no swap: the seam locks anyway.
    env = dict(os.environ, HOLDINGPEN_LOCK_MEMORY="1")
    p = Pen(bindir, shared_tmp, write_config(shared_tmp / "pool.toml", memory_count=2, size="16M"),
            env=env)
    try:
        p.wait_full()
        assert memfd_locked_bytes(p.pid) == locked_bytes(p.pid) == 32 * MiB
        job = subprocess.Popen(["gatekeeper", "--fd", "sh", "-c", "echo holding; read _; exit 0"],
                               env=p.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert job.stdout.readline() == "holding\n"
        assert (p.pool()["held"], p.pool()["lent"]) == (1, 1)
        assert memfd_locked_bytes(p.pid) == locked_bytes(p.pid) == 32 * MiB   # held and lent
        job.stdin.close()
        assert job.wait(30) == 0
        job.stdout.close()
        p.wait_full()
        time.sleep(0.2)
        assert memfd_locked_bytes(p.pid) == locked_bytes(p.pid) == 32 * MiB   # both held: no
        # lock of the returned loan is left over
    finally:
        assert p.stop() == 0
