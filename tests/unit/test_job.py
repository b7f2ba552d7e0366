"""Job exit statuses, as the shell reports them: CMD's code, 128+N for signal N, 126, 127.

Real children: a fork costs a millisecond.
"""

import os
import signal
import subprocess
import sys

import pytest

from holdingpen.common import job

SH = "/bin/sh"


def status_of_child(end):
    """The raw waitpid() status of a forked child that ends by end()."""
    pid = os.fork()
    if pid == 0:
        try:
            end()
        finally:
            os._exit(99)
    return os.waitpid(pid, 0)[1]


def die_of(signum):
    def end():
        if signum != signal.SIGKILL:
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        signal.pause()
    return end


# (how the child ends, the exit status we report)
EXITS = [
    (lambda: os._exit(0), 0),
    (lambda: os._exit(3), 3),
    (lambda: os._exit(255), 255),
    (die_of(signal.SIGKILL), 137),
    (die_of(signal.SIGTERM), 143),
    (die_of(signal.SIGINT), 130),
    (die_of(signal.SIGHUP), 129),
]


@pytest.mark.parametrize("end, expected", EXITS)
def test_exit_status(end, expected):
    assert job.exit_status(status_of_child(end)) == expected


# (argv, the status Job.run() returns, what the child says on stderr)
RUNS = [
    ([SH, "-c", "exit 0"], 0, ""),
    ([SH, "-c", "exit 7"], 7, ""),
    ([SH, "-c", "kill -TERM $$"], 143, ""),
    ([SH, "-c", "kill -KILL $$"], 137, ""),
    (["/nonexistent/cmd"], 127, "test: /nonexistent/cmd: command not found\n"),
    (["NOT_EXECUTABLE"], 126, "test: cannot run NOT_EXECUTABLE: Permission denied\n"),
]


def run_job(argv):
    """Job(...).run() in a fresh Python, so that its signal mask and children are its own."""
    code = ("import sys; from holdingpen.common import job; "
            "sys.exit(job.Job('test', sys.argv[1], sys.argv[1:]).run())")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


@pytest.mark.parametrize("argv, status, stderr", RUNS)
def test_run_returns_the_commands_status(tmp_path, argv, status, stderr):
    text = tmp_path / "text"
    text.write_text("not a program\n")
    text.chmod(0o644)
    argv = [str(text) if word == "NOT_EXECUTABLE" else word for word in argv]
    done = run_job(argv)
    stderr = stderr.replace("NOT_EXECUTABLE", str(text))
    assert (done.returncode, done.stderr) == (status, stderr)


def test_cancel_never_starts_the_command(tmp_path):
    witness = tmp_path / "ran"
    j = job.Job("test", SH, [SH, "-c", f"touch {witness}"])
    j.cancel()
    assert not witness.exists()
    with pytest.raises(ChildProcessError):     # already reaped by cancel()
        os.waitpid(j.pid, os.WNOHANG)
