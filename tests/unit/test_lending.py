"""command_of: a loan's command as the kernel says, while its pid is still the borrower's."""

import os
import subprocess

from holdingpen.pen.lending import command_of
from holdingpen.pen.peer import Peer


def start_time(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def test_the_command_of_a_live_or_exited_but_unreaped_process_and_none_once_it_is_not_ours():
    child = subprocess.Popen(["sleep", "30"])
    try:
        peer = Peer(child.pid, os.getuid(), os.getgid(), "python3", start_time(child.pid))
        assert command_of(peer) == "sleep"
        # Another process's start time: the pid is not the borrower's.
        assert command_of(Peer(child.pid, 0, 0, "x", start_time(child.pid) + 1)) is None
        assert command_of(Peer(child.pid, 0, 0, "x", None)) is None
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)    # a zombie, not reaped
        assert command_of(peer) == "sleep"
    finally:
        child.kill()
        child.wait()
    assert command_of(peer) is None       # reaped: nothing to read


def test_a_fake_proc_is_read_as_the_kernels():
    import tempfile
    with tempfile.TemporaryDirectory() as proc:
        os.mkdir(f"{proc}/42")
        with open(f"{proc}/42/comm", "w") as f:
            f.write("matlab\n")
        with open(f"{proc}/42/stat", "w") as f:
            f.write("42 (a) b) S " + " ".join(["0"] * 18) + " 777 0\n")
        assert command_of(Peer(42, 0, 0, "gatekeeper", 777), proc) == "matlab"
        assert command_of(Peer(42, 0, 0, "gatekeeper", 778), proc) is None
        assert command_of(Peer(43, 0, 0, "gatekeeper", 777), proc) is None
