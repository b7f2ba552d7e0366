"""Command lines: argv in, options or a usage error out; the commands' usage exits."""

import pytest

from holdingpen.cli import perflock as perflock_cmd, wholock as wholock_cmd
from holdingpen.common.cmdline import UsageError, find_program, parse

DEFAULTS = {"shared": False, "nonblock": False, "timeout_s": None, "conflict_exit": None,
            "message": None, "quiet": False, "lock": None, "help": False}

# (argv, options that differ from DEFAULTS, command)
GOOD = [
    (["make"], {}, ["make"]),
    (["ls", "-l", "-s"], {}, ["ls", "-l", "-s"]),                 # options stop at the command
    (["-s", "-n", "true"], {"shared": True, "nonblock": True}, ["true"]),
    (["-sn", "true"], {"shared": True, "nonblock": True}, ["true"]),
    (["-w", "5", "x"], {"timeout_s": 5.0}, ["x"]),
    (["-w0.5", "x"], {"timeout_s": 0.5}, ["x"]),
    (["--timeout=2", "x"], {"timeout_s": 2.0}, ["x"]),
    (["--timeout", "2", "x"], {"timeout_s": 2.0}, ["x"]),
    (["-qnw1", "x"], {"quiet": True, "nonblock": True, "timeout_s": 1.0}, ["x"]),
    (["-E", "9", "x"], {"conflict_exit": 9}, ["x"]),
    (["--conflict-exit-code=0", "x"], {"conflict_exit": 0}, ["x"]),
    (["-m", "nightly run", "x"], {"message": "nightly run"}, ["x"]),
    (["--message=", "x"], {"message": ""}, ["x"]),
    (["--lock", "/tmp/l", "--", "-n"], {"lock": "/tmp/l"}, ["-n"]),  # -- ends options
    (["--", "--", "x"], {}, ["--", "x"]),
    (["-", "x"], {}, ["-", "x"]),                                 # "-" is a word, not an option
    ([], {}, []),
]


@pytest.mark.parametrize("argv, changed, command", GOOD)
def test_good_command_lines(argv, changed, command):
    assert parse(perflock_cmd.OPTIONS, argv) == ({**DEFAULTS, **changed}, command)


# (argv, the message)
BAD = [
    (["-x", "true"], "unknown option -x"),
    (["--frobnicate", "true"], "unknown option --frobnicate"),
    (["-sx", "true"], "unknown option -x"),
    (["-w"], "option -w needs a value (SECONDS)"),
    (["--timeout"], "option --timeout needs a value (SECONDS)"),
    (["-w", "soon", "x"], "option -w: expected a number of seconds, not 'soon'"),
    (["-w", "-1", "x"], "option -w: expected a number of seconds, not '-1'"),
    (["-w", "nan", "x"], "option -w: expected a number of seconds, not 'nan'"),
    (["-w", "inf", "x"], "option -w: expected a number of seconds, not 'inf'"),
    (["-E", "256", "x"], "option -E: expected an exit code from 0 to 255, not '256'"),
    (["-E", "-1", "x"], "option -E: expected an exit code from 0 to 255, not '-1'"),
    (["--shared=yes", "x"], "option --shared takes no value"),
]


@pytest.mark.parametrize("argv, message", BAD)
def test_bad_command_lines(argv, message):
    with pytest.raises(UsageError) as e:
        parse(perflock_cmd.OPTIONS, argv)
    assert str(e.value) == message


# Whole commands: (main, argv) -> (exit code, first line of stderr, stdout starts with)
def perflock(argv):
    return perflock_cmd.run("perflock", argv, shared=False)


def pls(argv):
    return perflock_cmd.run("pls", argv, shared=True)


EXITS = [
    (perflock, ["-x", "true"], 64, "perflock: unknown option -x", ""),
    (perflock, [], 64, "perflock: no command given", ""),
    (pls, ["-w"], 64, "pls: option -w needs a value (SECONDS)", ""),
    (perflock, ["--help"], 0, "", "usage: perflock"),
    (pls, ["-h"], 0, "", "usage: pls"),
    (perflock, ["no-such-command-anywhere"], 127,
     "perflock: no-such-command-anywhere: command not found", ""),
    (wholock_cmd.main, ["extra"], 64, "wholock: unexpected argument 'extra'", ""),
    (wholock_cmd.main, ["--jason"], 64, "wholock: unknown option --jason", ""),
    (wholock_cmd.main, ["--help"], 0, "", "usage: wholock"),
]


@pytest.mark.parametrize("main, argv, code, stderr, stdout", EXITS)
def test_usage_exits(main, argv, code, stderr, stdout, capsys):
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert err.split("\n")[0] == stderr
    assert out.startswith(stdout)
    if code == 64:
        assert "usage:" in err    # the usage follows the error


# (name, PATH, found)
LOOKUPS = [
    ("sh", "/nonexistent:/bin", "/bin/sh"),
    ("sh", "/nonexistent", None),
    ("./x", "/bin", "./x"),               # a name with a slash is not looked up
    ("bin", "/", None),                   # a directory is not a program
]


@pytest.mark.parametrize("name, search_path, found", LOOKUPS)
def test_find_program(name, search_path, found):
    assert find_program(name, search_path) == found
