"""What an administrator meets at the command line: holdingpen check, --help, wrong sockets, bad kinds."""

import socket
import subprocess

import pytest

from pen import Pen, write_config


@pytest.fixture
def pen(bindir, shared_tmp):
    p = Pen(bindir, shared_tmp, write_config(shared_tmp / "pool.toml", memory_count=1))
    p.wait_full()
    yield p
    assert p.stop() == 0


def run(env, argv):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["floppy", "Memory", "disk:", "disk:var/tmp", "", "memory:"])
def test_a_kind_that_is_none_is_a_usage_error_at_once(pen, kind):
    done = pen.run(["gatekeeper", "--kind", kind, "sh", "-c", "echo ran"])
    assert (done.returncode, done.stdout) == (64, "")
    assert done.stderr.splitlines()[0] == (
        f"gatekeeper: option --kind: expected memory, disk or disk:PATH (an absolute path), "
        f"not {kind!r}")
    assert pen.pool()["lent"] == 0


@pytest.mark.parametrize("kind", ["-kfloppy", "-k floppy"])
def test_the_short_option_too(pen, kind):
    done = pen.run(["gatekeeper", *kind.split(), "true"])
    assert done.returncode == 64


def test_a_kind_the_daemon_does_not_have_is_its_answer_not_a_usage_error(pen):
    done = pen.run(["gatekeeper", "--strict", "--kind", "disk:/var/tmp", "true"])
    assert done.returncode == 69
    assert done.stderr.endswith("(unknown-kind)\n")


def test_status_at_a_path_where_nothing_is(env, shared_tmp):
    nowhere = shared_tmp / "nope"
    done = run(env, ["holdingpen", "status", "--socket", str(nowhere)])
    assert (done.returncode, done.stderr) == (69, (
        f"holdingpen: nothing listens at {nowhere} (no such file); give the daemon's socket with "
        "--socket or $HOLDINGPEN_SOCKET (the default is /run/holdingpen.socket)\n"))
    done = run(env, ["gatekeeper", "--strict", "--socket", str(nowhere), "true"])
    assert done.returncode == 69
    assert done.stderr.startswith(f"gatekeeper: nothing listens at {nowhere} (no such file)")


def test_status_at_a_socket_nobody_listens_on(env, shared_tmp):
    stale = shared_tmp / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:      # bound, never listening: as a stopped daemon leaves it
        s.bind(str(stale))
        done = run(env, ["holdingpen", "status", "--socket", str(stale)])
    assert (done.returncode, done.stderr) == (69, (
        f"holdingpen: the holdingpen daemon is not running ({stale}); "
        "start it with: systemctl restart holdingpen.socket\n"))


def test_help_says_commands_options_and_exit_codes(env):
    done = run(env, ["holdingpen", "--help"])
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    for command in ("serve", "status", "check"):
        assert any(line.startswith(f"  {command}  ") for line in lines), command
    for option in ("--config PATH", "--socket PATH", "--json", "--help"):
        assert any(option in line for line in lines), option
    assert "78 a bad configuration" in done.stdout
    assert run(env, ["holdingpen", "check", "--help"]).stdout == done.stdout


GOOD = '[memory]\nsize = "64M"\ncount = 2\n'


# (the file's text, or None for no file; exit status; the line on stdout or stderr)
CHECKS = [
    (GOOD, 0, "holdingpen: {path} is good: memory 2 x 64 MiB"),
    ("", 0, "holdingpen: {path} is good: memory 1 x 256 MiB"),
    (GOOD + '[[disk]]\npath = "{tmp}"\nsize = "1G"\n', 0,
     "holdingpen: {path} is good: memory 2 x 64 MiB; disk:{tmp} 1 x 1.0 GiB"),
    (GOOD.replace("2", '"many"'), 78,
     "holdingpen: {path}: memory.count: expected a whole number from 0 to 1024, not 'many'"),
    (GOOD + '[[disk]]\npath = "{tmp}/nowhere"\nsize = "1G"\n', 78,
     "holdingpen: {path}: disk[0].path: {tmp}/nowhere does not exist; create the directory or "
     "name one that exists"),
    ("[memory\n", 78, "holdingpen: {path}: not valid TOML: Expected ']' at the end of a table "
                      "declaration (at line 1, column 8)"),
    (None, 78, "holdingpen: {path}: no such file"),
]


@pytest.mark.parametrize("text, code, line", CHECKS)
def test_check(env, shared_tmp, text, code, line):
    path = shared_tmp / "holdingpen.toml"
    if text is not None:
        path.write_text(text.format(tmp=shared_tmp))
    done = run(env, ["holdingpen", "check", "--config", str(path)])
    expected = line.format(path=path, tmp=shared_tmp) + "\n"
    assert (done.returncode, done.stdout if code == 0 else done.stderr) == (code, expected)
    assert (done.stderr if code == 0 else done.stdout) == ""
