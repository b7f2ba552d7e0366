"""The daemon run by hand with a small pool: borrow, return, memory and disk really move."""

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time

import pytest

from pen import CHUNK, MiB, Pen, available_bytes, connect, meminfo, read_line, write_config
from lockjobs import wait_until


PEN_CONFIG = {"disk": True}


def hold(pen, *gatekeeper_args):
    """A gatekeeper'd job that holds its loan until its stdin closes."""
    job = subprocess.Popen(["gatekeeper", *gatekeeper_args, "sh", "-c", "echo holding; read _; exit 0"],
                           env=pen.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline() == "holding\n"
    return job


def release(job):
    job.stdin.close()
    assert job.wait(30) == 0
    job.stdout.close()


def test_borrow_and_return_cycles(pen):
    for _ in range(3):
        job = hold(pen)
        pool = pen.pool()
        assert (pool["held"], pool["lent"], pool["count"]) == (3, 1, 4)
        (loan,) = pen.status()["loans"]
        assert (loan["pid"], loan["uid"], loan["kind"], loan["size"], loan["fd"]) == \
            (job.pid, os.getuid(), "memory", CHUNK, False)
        release(job)
        pen.wait_full()
        assert pen.pool()["lent"] == 0


def test_the_daemons_memory_falls_by_the_size_on_a_borrow_and_comes_back(bindir, shared_tmp):
    # 256 MiB chunks: MemAvailable is the whole machine's, and others move it too.
    size = 256 * MiB
    p = Pen(bindir, shared_tmp, write_config(shared_tmp / "pool.toml", memory_count=2, size="256M"))
    try:
        p.wait_full()
        assert p.held_memfd_bytes() == 2 * size
        shmem, available = meminfo("Shmem"), available_bytes()
        job = hold(p)
        assert p.held_memfd_bytes() == size
        # The machine sees it too: shared memory down, available memory up, by the
        # size (the kernel folds its per-CPU counters into /proc/meminfo within a second).
        wait_until(lambda: abs((shmem - meminfo("Shmem")) - size) < size // 8, "Shmem to fall")
        wait_until(lambda: abs((available_bytes() - available) - size) < size // 4,
                   "MemAvailable (with per-CPU free lists) to rise by the size")
        release(job)
        p.wait_full()
        assert p.held_memfd_bytes() == 2 * size
        wait_until(lambda: abs(meminfo("Shmem") - shmem) < size // 8, "Shmem to come back")
    finally:
        assert p.stop() == 0


def test_fd_mode_hands_over_a_memfd_the_client_can_map_and_write(pen):
    check = ("import mmap, os\n"
             "fd = int(os.environ['HOLDINGPEN_MEMORY_FD'])\n"
             "st = os.fstat(fd)\n"
             "m = mmap.mmap(fd, st.st_size)\n"
             "m[-5:] = b'hello'\n"
             "print(st.st_size, st.st_blocks * 512, m[-5:].decode(), os.readlink(f'/proc/self/fd/{fd}'))\n")
    done = pen.run(["gatekeeper", "--fd", "/usr/bin/python3", "-c", check])
    assert done.returncode == 0, done.stderr
    size, allocated, tail, target = done.stdout.split(None, 3)
    assert (int(size), int(allocated), tail) == (CHUNK, CHUNK, "hello")
    assert target.startswith("/memfd:holdingpen-memory")
    pen.wait_full()


def test_disk_space_moves_by_the_size(pen):
    name = f"disk:{pen.disk}"

    def free_bytes():
        st = os.statvfs(pen.disk)
        return st.f_bavail * st.f_frsize

    before = free_bytes()
    job = hold(pen, "--kind", "disk")
    assert pen.pool(name)["lent"] == 1
    assert abs((free_bytes() - before) - CHUNK) < CHUNK // 8
    release(job)
    pen.wait_full(name)
    assert abs(free_bytes() - before) < CHUNK // 8
    assert os.listdir(pen.disk) == []          # unnamed files: nothing to clean up, ever


def test_disk_fd_mode_hands_over_allocated_blocks(pen):
    check = "st=$(stat -L -c '%s %b %B' /proc/$$/fd/$HOLDINGPEN_DISK_FD); echo $st"
    done = pen.run(["gatekeeper", "--kind", f"disk:{pen.disk}", "--fd", "sh", "-c", check])
    size, blocks, block_size = (int(x) for x in done.stdout.split())
    assert size == CHUNK and blocks * block_size >= CHUNK      # allocated, not sparse


def test_a_loan_lasts_while_anything_holds_the_connection(pen, shared_tmp):
    bg = shared_tmp / "bg"
    done = pen.run(["gatekeeper", "sh", "-c", f"sleep 60 >/dev/null 2>&1 & echo $! > {bg}"])
    assert done.returncode == 0
    left = int(bg.read_text())
    try:
        assert pen.pool()["lent"] == 1         # the background sleep inherited the connection
    finally:
        os.kill(left, signal.SIGKILL)
    wait_until(lambda: pen.pool()["lent"] == 0, "the loan to end with its last holder")


def test_sd_notify(pen):
    lines = pen.notify.lines()
    assert lines.index("READY=1") > max(i for i, line in enumerate(lines)
                                        if line.startswith("EXTEND_TIMEOUT_USEC="))
    assert pen.notify.last("STATUS=") == \
        f"STATUS=memory 4/4 held (256 MiB); disk {pen.disk} 2/2 held (128 MiB)"
    stored = [(text, n) for text, n in pen.notify.messages if text.startswith("FDSTORE=1")]
    assert ("FDSTORE=1\nFDNAME=state", 1) in stored
    assert sum(1 for text, n in stored if "FDNAME=chunk." in text and n == 1) == 6
    job = hold(pen)
    wait_until(lambda: (pen.notify.last("STATUS=") or "").startswith(
        "STATUS=memory 3/4 held (192 MiB), 1 lent to "), "STATUS= to show the loan")
    release(job)
    os.kill(pen.pid, signal.SIGHUP)
    wait_until(lambda: "RELOADING=1" in pen.notify.lines(), "RELOADING=1")
    wait_until(lambda: pen.notify.lines().count("READY=1") == 2, "READY=1 after the reload")
    os.kill(pen.pid, signal.SIGTERM)
    assert pen.proc.wait(30) == 0
    assert "STOPPING=1" in pen.notify.lines()
    # It cannot tell a stop from a restart: it must not promise the pool survives either.
    assert pen.logged().endswith("holdingpen: stopping: holdingpen stopping; if systemd restarts "
                                 "it, reservations and loans wait in its store, but a stop "
                                 "frees them\n")


def test_watchdog(bindir, shared_tmp):
    env = dict(os.environ, WATCHDOG_USEC="200000")
    p = Pen(bindir, shared_tmp, write_config(shared_tmp / "pool.toml", memory_count=1), env=env)
    try:
        wait_until(lambda: p.notify.lines().count("WATCHDOG=1") >= 3, "three watchdog pings")
    finally:
        assert p.stop() == 0


def test_socket_activation(bindir, shared_tmp):
    if shutil.which("systemd-socket-activate") is None:
        pytest.skip("systemd-socket-activate is not installed")
    sock = str(shared_tmp / "activated.sock")
    config = write_config(shared_tmp / "pool.toml", memory_count=1)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", HOLDINGPEN_SOCKET=sock)
    activator = subprocess.Popen(["systemd-socket-activate", "-l", sock, "--fdname=listen",
                                  "holdingpen", "serve", "--config", str(config)],
                                 env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: os.path.exists(sock), "the socket to be bound")

        def pool():
            return json.loads(subprocess.run(["holdingpen", "status", "--json"], env=env,
                                             capture_output=True, text=True, timeout=30).stdout)["pools"][0]

        assert pool()["count"] == 1             # the first connection started the daemon
        wait_until(lambda: pool()["held"] == 1, "the activated daemon to fill its pool")
        done = subprocess.run(["gatekeeper", "--strict", "true"], env=env, timeout=30)
        assert done.returncode == 0
    finally:
        activator.send_signal(signal.SIGTERM)
        activator.wait(30)
        activator.stderr.close()


def test_clients_that_start_a_daemon_on_a_bad_file_are_told_why_at_once(bindir, shared_tmp):
    """Socket-activated on a bad file with nothing to keep, the daemon answers the
    clients that started it with the file's problem before it exits 78."""
    if shutil.which("systemd-socket-activate") is None:
        pytest.skip("systemd-socket-activate is not installed")
    sock = str(shared_tmp / "activated.sock")
    bad = shared_tmp / "bad.toml"
    bad.write_text('[memory]\nsize = "lots"\n')
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", HOLDINGPEN_SOCKET=sock)
    activator = subprocess.Popen(["systemd-socket-activate", "-l", sock, "--fdname=listen",
                                  "holdingpen", "serve", "--config", str(bad)],
                                 env=env, stderr=subprocess.PIPE, text=True)
    problem = f"{bad}: memory.size: expected a size like \"2G\", not 'lots'"
    try:
        wait_until(lambda: os.path.exists(sock), "the socket to be bound")
        started = time.monotonic()
        done = subprocess.run(["holdingpen", "status"], env=env, capture_output=True, text=True,
                              timeout=30)
        took_s = time.monotonic() - started
        assert (done.returncode, done.stderr) == (
            69, f"holdingpen: the daemon cannot start: {problem} (bad-config)\n")
        assert took_s < 5, f"told after {took_s:.1f} s"
        assert activator.wait(30) == 78
        assert f"holdingpen: {problem}\n" in activator.stderr.read()
    finally:
        if activator.poll() is None:
            activator.send_signal(signal.SIGTERM)
            activator.wait(30)
        activator.stderr.close()


def test_status_text(pen):
    job = hold(pen)
    try:
        done = pen.run(["holdingpen", "status"])
        lines = done.stdout.splitlines()
        assert lines[0] == "memory: 3/4 held, 1 lent, 64 MiB each"
        assert lines[1] == f"disk:{pen.disk}: 2/2 held, 0 lent, 64 MiB each"
        header, row = lines[3].split(), lines[4].split()
        assert header == ["USER", "UID", "PID", "COMMAND", "KIND", "SIZE", "SINCE", "PROTECTED"]
        assert row[:7] == [os.environ.get("USER", "root"), str(os.getuid()), str(job.pid),
                           row[3], "memory", "64", "MiB"]
        assert row[-1] == "no"     # run by hand: nobody's units to change
    finally:
        release(job)


def test_a_bad_config_stops_the_daemon_from_starting(bindir, shared_tmp):
    bad = shared_tmp / "bad.toml"
    bad.write_text('[memory]\nsize = "lots"\n')
    done = subprocess.run(["holdingpen", "serve", "--config", str(bad), "--socket",
                           str(shared_tmp / "s")], env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 78
    assert done.stderr == f"holdingpen: {bad}: memory.size: expected a size like \"2G\", not 'lots'\n"
    assert not (shared_tmp / "s").exists()


def test_a_second_daemon_does_not_steal_the_socket(pen, bindir):
    done = pen.run(["holdingpen", "serve", "--socket", pen.socket])
    assert done.returncode == 73
    assert "another daemon is listening on" in done.stderr
    assert pen.pool()["held"] == 4


def test_client_waits_then_time_out_on_silence(bindir, shared_tmp):
    cfg = write_config(shared_tmp / "pool.toml", memory_count=1,
                       extra="[limits]\nrequest_timeout_s = 0.3\n")
    p = Pen(bindir, shared_tmp, cfg)
    try:
        with connect(p.socket) as s:
            start = time.monotonic()
            reply = json.loads(read_line(s))
            assert time.monotonic() - start >= 0.3
            assert (reply["ok"], reply["error"]) == (False, "timeout")
            assert s.recv(1) == b""            # and then the daemon hangs up
    finally:
        assert p.stop() == 0


def test_a_disk_pool_answers_to_every_spelling_of_its_path(bindir, shared_tmp):
    # The configuration reads "//PATH" as "/PATH"; a borrow of "disk://PATH" must too.
    disk = shared_tmp / "disk"
    disk.mkdir()
    p = Pen(bindir, shared_tmp, write_config(shared_tmp / "pool.toml", memory_count=1,
                                             disk_dir=f"/{disk}", disk_count=1))
    try:
        p.wait_full(f"disk:{disk}")
        for kind in (f"disk:/{disk}", f"disk:{disk}/", f"disk:{disk}/./"):
            done = p.run(["gatekeeper", "--strict", "--kind", kind, "true"])
            assert (done.returncode, done.stderr) == (0, ""), kind
    finally:
        assert p.stop() == 0


def test_a_pool_removed_by_a_reload_is_not_what_disk_means(bindir, shared_tmp):
    # Two disk pools; the first is removed while it lends: "disk" is the second, full one,
    # not the removed one ("all 0 reservations are lent"), and the removed one is unknown.
    first, second = shared_tmp / "first", shared_tmp / "second"
    first.mkdir()
    second.mkdir()
    config = shared_tmp / "pool.toml"
    disks = ''.join(f'[[disk]]\npath = "{d}"\nsize = "4M"\ncount = 1\n' for d in (first, second))
    config.write_text('[memory]\nsize = "4M"\ncount = 1\n' + disks)
    p = Pen(bindir, shared_tmp, config)
    try:
        p.wait_full(f"disk:{second}")
        job = hold(p, "--strict", "--kind", "disk")
        assert p.status()["loans"][0]["kind"] == f"disk:{first}"
        config.write_text('[memory]\nsize = "4M"\ncount = 1\n' + disks.split("[[disk]]")[0] +
                          f'[[disk]]\npath = "{second}"\nsize = "4M"\ncount = 1\n')
        os.kill(p.pid, signal.SIGHUP)
        wait_until(lambda: p.notify.lines().count("READY=1") == 2, "READY=1 after the reload")
        done = p.run(["gatekeeper", "--strict", "--kind", "disk", "true"])
        assert (done.returncode, done.stderr) == (0, "")
        done = p.run(["gatekeeper", "--strict", "--kind", f"disk:{first}", "true"])
        assert done.returncode != 0
        assert f"no disk:{first} pool; there are: memory, disk:{second}" in done.stderr
        release(job)
        wait_until(lambda: [q["name"] for q in p.status()["pools"]] == ["memory", f"disk:{second}"],
                   "the removed pool to go once its loan is back")
    finally:
        assert p.stop() == 0


def test_the_journal_names_the_command_that_ran_not_gatekeeper(pen):
    """gatekeeper borrows, then execs CMD: the journal (stderr, by hand) says CMD ran,
    and the returned entry names it, though it ran for less than a refresh (2 s)."""
    user = pwd.getpwuid(os.getuid()).pw_name
    assert pen.run(["gatekeeper", "--strict", "sleep", "0.5"]).returncode == 0
    wait_until(lambda: "holdingpen: returned: " in pen.logged(), "the loan to be returned")
    lines = [line for line in pen.logged().splitlines()
             if line.startswith(("holdingpen: lent: ", "holdingpen: running: ",
                                 "holdingpen: returned: "))]
    assert [re.sub(r"pid \d+", "pid N", line) for line in lines] == [
        f"holdingpen: lent: lent 64 MiB of memory to {user} (gatekeeper, pid N)",
        f"holdingpen: running: {user}'s loan of 64 MiB of memory (pid N) now runs sleep, "
        "was gatekeeper",
        f"holdingpen: returned: {user} (sleep) returned 64 MiB of memory"]
