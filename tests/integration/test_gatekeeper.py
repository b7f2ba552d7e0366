"""gatekeeper as users meet it: it becomes CMD, and says why when it cannot borrow."""

import os
import subprocess

import pytest

PEN_CONFIG = {"memory_count": 1}


def test_gatekeeper_becomes_cmd(pen):
    job = subprocess.Popen(["gatekeeper", "sh", "-c", "echo $$"], env=pen.env,
                           stdout=subprocess.PIPE, text=True)
    out, _ = job.communicate(timeout=30)
    assert int(out) == job.pid                 # exec, no process of ours in between
    assert job.returncode == 0


@pytest.mark.parametrize("status", [0, 3, 255])
def test_exit_status_is_cmds(pen, status):
    assert pen.run(["gatekeeper", "sh", "-c", f"exit {status}"]).returncode == status


def test_an_empty_pool_runs_cmd_anyway_unless_strict(pen):
    holder = subprocess.Popen(["gatekeeper", "sh", "-c", "echo holding; read _; exit 0"],
                              env=pen.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "holding\n"
    try:
        done = pen.run(["gatekeeper", "sh", "-c", "echo ran"])
        assert (done.returncode, done.stdout) == (0, "ran\n")
        assert done.stderr == ("gatekeeper: the one memory reservation is lent (pool-empty); "
                               "running sh without a reservation\n")
        quiet = pen.run(["gatekeeper", "-q", "true"])
        assert (quiet.returncode, quiet.stderr) == (0, "")
        strict = pen.run(["gatekeeper", "--strict", "sh", "-c", "echo ran"])
        assert (strict.returncode, strict.stdout) == (69, "")
        assert strict.stderr == "gatekeeper: the one memory reservation is lent (pool-empty)\n"
    finally:
        holder.stdin.close()
        holder.wait(30)
        holder.stdout.close()


def test_no_daemon(bindir, shared_tmp):
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}",
               HOLDINGPEN_SOCKET=str(shared_tmp / "nobody-here.sock"))
    done = subprocess.run(["gatekeeper", "sh", "-c", "exit 5"], env=env, capture_output=True, text=True)
    assert done.returncode == 5
    assert done.stderr == (f"gatekeeper: nothing listens at {shared_tmp}/nobody-here.sock (no such file); "
                           "give the daemon's socket with --socket or $HOLDINGPEN_SOCKET (the default is "
                           "/run/holdingpen.socket); running sh without a reservation\n")
    strict = subprocess.run(["gatekeeper", "--strict", "true"], env=env, capture_output=True, text=True)
    assert strict.returncode == 69
    status = subprocess.run(["holdingpen", "status"], env=env, capture_output=True, text=True)
    assert status.returncode == 69
    assert status.stderr.startswith("holdingpen: nothing listens at")


def test_socket_option_beats_the_environment(pen, shared_tmp):
    env = dict(pen.env, HOLDINGPEN_SOCKET=str(shared_tmp / "wrong.sock"))
    done = subprocess.run(["gatekeeper", "--strict", "--socket", pen.socket, "true"], env=env)
    assert done.returncode == 0


# (argv, exit code, first line of stderr)
USAGE = [
    (["gatekeeper"], 64, "gatekeeper: no command given"),
    (["gatekeeper", "--kind"], 64, "gatekeeper: option --kind needs a value (KIND)"),
    (["gatekeeper", "--frob", "true"], 64, "gatekeeper: unknown option --frob"),
    (["gatekeeper", "no-such-command-anywhere"], 127,
     "gatekeeper: no-such-command-anywhere: command not found"),
    (["holdingpen"], 64, "holdingpen: no command given"),
    (["holdingpen", "frob"], 64, "holdingpen: unknown command 'frob'"),
    (["holdingpen", "status", "--jason"], 64, "holdingpen status: unknown option --jason"),
]


@pytest.mark.parametrize("argv, code, first", USAGE)
def test_command_lines(pen, argv, code, first):
    done = pen.run(argv)
    assert done.returncode == code
    assert done.stderr.splitlines()[0] == first
    assert pen.pool()["lent"] == 0             # nothing borrowed for a command that cannot run


def test_a_command_that_cannot_run(pen, shared_tmp):
    script = shared_tmp / "not-executable"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    done = pen.run(["gatekeeper", str(script)])
    assert (done.returncode, done.stderr) == (126, f"gatekeeper: cannot run {script}: Permission denied\n")
