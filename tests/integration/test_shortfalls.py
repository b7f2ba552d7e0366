"""Shortfalls: the disk fills up, memory runs short, and the daemon says so, serves on, recovers.

In each test a borrower returns a chunk while another process holds what the
daemon would need to make it again. The daemon must report the shortfall
(STATUS= on the notify socket, a "shortfall" line in its log, "shortfall" in
`holdingpen status --json`), keep answering and lending what it still holds,
and take the place back, within its retry backoff (1 s, doubling), once the
other process lets go. Reserving memory must never push the machine into the
OOM killer: it is refused while MemAvailable would fall under the floor.
"""

import json
import os
import re
import select
import socket
import subprocess
import time

import pytest

from holdingpen.pen import headroom
from holdingpen.pen.sizes import format_size
from lockjobs import needs_root, wait_until
from pen import MiB, Pen, available_bytes, connect, meminfo, read_line, vmstat


def borrow(pen, kind, fd=False):
    """A loan on a raw connection: (the connection, the descriptor handed over or None)."""
    s = connect(pen.socket)
    s.sendall(json.dumps({"action": "borrow", "kind": kind, "fd": fd}).encode() + b"\n")
    s.settimeout(30)
    data, fds, _, _ = socket.recv_fds(s, 4096, 1)
    reply = json.loads(data)
    assert reply["ok"], reply
    return s, (fds[0] if fds else None)


def give_back(loan):
    s, fd = loan
    if fd is not None:
        os.close(fd)
    s.close()


def ask_borrow(pen, kind):
    with connect(pen.socket) as s:
        s.sendall(json.dumps({"action": "borrow", "kind": kind}).encode() + b"\n")
        return json.loads(read_line(s))


def read_ready_line(proc, timeout_s):
    """The first line a helper prints, or fail if it says nothing in time."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"the helper said nothing within {timeout_s} s"
    line = proc.stdout.readline()
    assert line, f"the helper exited with {proc.wait()} before it was ready"
    return json.loads(line)


def stop_helper(proc):
    """End a helper we started, by its pid, whatever state the test is in."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    proc.stdout.close()
    if proc.stdin:
        proc.stdin.close()


def retry_delays_s(pen):
    """The delays the daemon announced after each shortfall, in order."""
    return [int(d) for d in re.findall(r"trying again in (\d+) s", pen.logged())]


# ---- disk full ----

# Fills the filesystem holding argv[1] with an unnamed file, 1 MiB at a time,
# says how much it took, and holds it until its stdin closes (or it dies:
# nothing is left behind either way).
FILLER = r'''
import errno, json, os, sys
fd = os.open(sys.argv[1], os.O_TMPFILE | os.O_RDWR, 0o600)
taken = 0
while True:
    try:
        os.posix_fallocate(fd, taken, 1 << 20)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        break
    taken += 1 << 20
print(json.dumps({"taken": taken}), flush=True)
sys.stdin.read()
'''


@pytest.fixture
def small_fs(shared_tmp):
    """A 64 MiB tmpfs of its own; unmounted afterwards, even if the test fails."""
    path = shared_tmp / "small"
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M,mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)


@needs_root
def test_a_full_disk(bindir, shared_tmp, small_fs, figure):
    size = 16 * MiB
    name = f"disk:{small_fs}"
    config = shared_tmp / "pool.toml"
    config.write_text(f'[memory]\nsize = "1M"\ncount = 2\n'
                      f'[[disk]]\npath = "{small_fs}"\nsize = "16M"\ncount = 2\n')
    pen = Pen(bindir, shared_tmp, config)
    filler = None
    try:
        pen.wait_full(name)
        first = borrow(pen, name)                # its 16 MiB go back to the filesystem ...
        filler = subprocess.Popen(["/usr/bin/python3", "-c", FILLER, str(small_fs)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        taken = read_ready_line(filler, 30)["taken"]    # ... and someone else takes them
        give_back(first)
        returned_at = time.monotonic()
        wait_until(lambda: pen.pool(name)["shortfall"], "the shortfall to be reported")
        reported_s = time.monotonic() - returned_at

        pool = pen.pool(name)
        assert (pool["held"], pool["lent"], pool["reserving"], pool["count"]) == (1, 0, 0, 2)
        assert pool["shortfall"] == (f"cannot reserve {size} bytes in {small_fs}: "
                                     "No space left on device")
        wait_until(lambda: (pen.notify.last("STATUS=") or "").endswith(
            f"; disk {small_fs} 1/2 held (16 MiB), short: {pool['shortfall']}"),
            "STATUS= to say what is short")
        assert f"holdingpen: shortfall: {name}: {pool['shortfall']}; trying again in 1 s" \
            in pen.logged()

        # It serves on: status, memory, and the disk chunk it still holds.
        assert pen.run(["holdingpen", "status"]).returncode == 0
        assert pen.run(["gatekeeper", "--strict", "true"]).returncode == 0
        last = borrow(pen, name, fd=True)
        st = os.fstat(last[1])
        assert st.st_size == size and st.st_blocks * 512 >= size
        empty = ask_borrow(pen, name)
        assert (empty["error"], empty["message"]) == \
            ("pool-empty", f"no {name} reservation is held: {pool['shortfall']}")
        wait_until(lambda: len(retry_delays_s(pen)) >= 3, "two more tries", timeout_s=10)
        assert retry_delays_s(pen)[:3] == [1, 2, 4]              # backing off, not hammering

        filler.stdin.close()                     # the filler lets go
        assert filler.wait(30) == 0
        freed_at = time.monotonic()
        delay_s = retry_delays_s(pen)[-1]
        wait_until(lambda: (lambda p: (p["held"], p["lent"]) == (1, 1))(pen.pool(name)),
                   "the space to be taken back", timeout_s=delay_s + 5)
        recovered_s = time.monotonic() - freed_at
        assert recovered_s <= delay_s + 1
        assert pen.pool(name)["shortfall"] is None
        wait_until(lambda: "short:" not in pen.notify.last("STATUS="), "STATUS= to be clear again")
        give_back(last)
        pen.wait_full(name)
        figure(f"64 MiB tmpfs, 2 x 16 MiB: the filler took {taken // MiB} MiB; shortfall reported "
               f"{reported_s * 1000:.0f} ms after the return (STATUS=, log, status --json); "
               f"retries after {retry_delays_s(pen)} s; served meanwhile: status, a memory borrow, "
               f"the last disk chunk as an fd; 2/2 again {recovered_s:.1f} s after the filler "
               f"freed the space (the retry delay then: {delay_s} s)")
    finally:
        if filler is not None:
            stop_helper(filler)
        assert pen.stop() == 0


# ---- memory pressure ----

# Takes memory until MemAvailable is down to argv[1] bytes, in a memfd
# allocated with fallocate (shmem: resident, zeroed, and out of MemAvailable
# like any anonymous memory; about 2 GiB/s here, against 0.4-0.8 GiB/s for
# faulting in anonymous pages), then says so and holds it until its stdin
# closes. Never takes MemAvailable below argv[2]: while holding, it gives
# memory back (down to argv[1] again) if others push MemAvailable under that,
# and says how much as it exits. It is the first the OOM killer would pick,
# and it dies with the test (PR_SET_PDEATHSIG).
HOG = r'''
import ctypes, json, os, select, signal, sys, time
ctypes.CDLL(None).prctl(1, signal.SIGKILL)         # PR_SET_PDEATHSIG
with open("/proc/self/oom_score_adj", "w") as f:
    f.write("1000")
target, lowest = int(sys.argv[1]), int(sys.argv[2])
STEP, MiB = 256 << 20, 1 << 20


sys.path.insert(0, sys.argv[3])
from holdingpen.pen import headroom


def available():                     # as the daemon counts it: with the per-CPU free lists
    return headroom.read_meminfo()["MemAvailable"]


fd = os.memfd_create("hog", os.MFD_CLOEXEC)
held, start = 0, time.monotonic()
while (room := available() - target) >= 16 * MiB:
    step = min(STEP, room // 2 if room < 2 * STEP else STEP) // MiB * MiB   # slow down near it
    os.posix_fallocate(fd, held, step)
    held += step
print(json.dumps({"held": held, "fill_s": time.monotonic() - start, "available": available()}),
      flush=True)
gave_back = 0
while not select.select([sys.stdin], [], [], 0.05)[0]:
    short = lowest - available()
    if short > 0:                                    # someone else needs it: let go of some
        give = min(held, (short + target - lowest + MiB - 1) // MiB * MiB)
        held -= give
        os.ftruncate(fd, held)
        gave_back += give
print(json.dumps({"gave_back": gave_back}), flush=True)
'''


@needs_root
def test_memory_pressure(bindir, shared_tmp, figure):
    size = 256 * MiB
    floor = headroom.floor_bytes(headroom.read_meminfo())
    config = shared_tmp / "pool.toml"
    config.write_text('[memory]\nsize = "256M"\ncount = 2\n')
    oom_kills = vmstat("oom_kill")
    pen = Pen(bindir, shared_tmp, config)
    hog = None
    try:
        pen.wait_full()
        available_at_start = meminfo("MemAvailable")
        pcp_before = available_bytes() - available_at_start
        first = borrow(pen, "memory")            # its 256 MiB go back to the machine ...
        # ... and the hog takes them and all else but a floor + half a chunk: too little
        # for the daemon to reserve another chunk (it wants the floor + a whole one).
        hog = subprocess.Popen(["/usr/bin/python3", "-c", HOG, str(floor + size // 2),
                                str(floor + size // 4), os.path.dirname(os.path.dirname(headroom.__file__))],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hogged = read_ready_line(hog, 50)
        pcp_peak = available_bytes() - meminfo("MemAvailable")   # free, but not in MemAvailable
        give_back(first)
        returned_at = time.monotonic()
        wait_until(lambda: pen.pool()["shortfall"], "the shortfall to be reported")
        reported_s = time.monotonic() - returned_at

        pool = pen.pool()
        assert (pool["held"], pool["lent"], pool["reserving"]) == (1, 0, 0)
        assert pool["shortfall"].startswith("only ")
        assert pool["shortfall"].endswith("available; reserving 256 MiB would leave less than "
                                          f"{format_size(floor)}")
        wait_until(lambda: ", short: only " in (pen.notify.last("STATUS=") or ""),
                   "STATUS= to say what is short")
        assert "holdingpen: shortfall: memory: only " in pen.logged()

        # It serves on: status, and the chunk it still holds, as a descriptor.
        assert pen.run(["holdingpen", "status"]).returncode == 0
        last = borrow(pen, "memory", fd=True)
        st = os.fstat(last[1])
        assert st.st_size == size and st.st_blocks * 512 == size
        assert ask_borrow(pen, "memory")["error"] == "pool-empty"
        # Another try after 1 s, and another after 2 more: unless something else on the
        # machine freed memory meanwhile and a try succeeded (a shared machine does that).
        wait_until(lambda: len(retry_delays_s(pen)) >= 2 or pen.pool()["held"] == 1,
                   "another try", timeout_s=10)
        if pen.pool()["held"] == 0:
            assert retry_delays_s(pen)[:2] == [1, 2]

        let_go_at = time.monotonic()
        hog.stdin.close()                        # the hog lets go
        gave_back = json.loads(hog.stdout.readline())["gave_back"]   # to others, meanwhile
        assert hog.wait(30) == 0
        exit_s = time.monotonic() - let_go_at    # freeing gigabytes takes the kernel a while
        pcp_after = available_bytes() - meminfo("MemAvailable")
        delay_s = retry_delays_s(pen)[-1]
        wait_until(lambda: (lambda p: (p["held"], p["lent"]) == (1, 1))(pen.pool()),
                   "the memory to be taken back", timeout_s=delay_s + 5)
        recovered_s = time.monotonic() - let_go_at
        assert recovered_s <= exit_s + delay_s + 1
        assert pen.pool()["shortfall"] is None
        give_back(last)
        pen.wait_full()
        assert pen.held_memfd_bytes() == 2 * size
        assert vmstat("oom_kill") == oom_kills, "the OOM killer ran"
        figure(f"MemAvailable {available_at_start / 2**30:.1f} GiB; the hog took "
               f"{hogged['held'] / 2**30:.1f} GiB in {hogged['fill_s']:.1f} s "
               f"({hogged['held'] / 2**30 / hogged['fill_s']:.1f} GiB/s), leaving "
               f"MemAvailable {hogged['available'] // MiB} MiB (floor {floor // MiB} MiB); free pages "
               f"on per-CPU lists, unseen by MemAvailable: {pcp_before // MiB} MiB before, "
               f"{pcp_peak // MiB} MiB with the hog, {pcp_after // MiB} MiB after; shortfall reported "
               f"{reported_s * 1000:.0f} ms after the return; retries after "
               f"{retry_delays_s(pen)} s; a chunk lent as an fd meanwhile; the hog's exit took "
               f"{exit_s:.1f} s, 2/2 again {recovered_s:.1f} s after it let go (the retry delay then: "
               f"{delay_s} s); the hog gave {gave_back // MiB} MiB back to others meanwhile; "
               f"oom_kill {oom_kills} -> {vmstat('oom_kill')}")
    finally:
        if hog is not None:
            stop_helper(hog)
        assert pen.stop() == 0
