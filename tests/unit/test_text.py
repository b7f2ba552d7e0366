"""The wording of durations and of who holds the machine."""

import shlex

import pytest
from hypothesis import given, strategies as st

from holdingpen.common.text import age, holders, shell_words


@pytest.mark.parametrize("seconds, text", [
    (-1, "0.0s"), (0.42, "0.4s"), (9.94, "9.9s"), (10, "10s"), (59.9, "59s"),
    (60, "1m00s"), (192, "3m12s"), (3599, "59m59s"), (3600, "1h00m"), (7500, "2h05m"),
    (86400, "1d00h"), (3 * 86400 + 4 * 3600 + 59, "3d04h"),
])
def test_age(seconds, text):
    assert age(seconds) == text


def row(user, mode, state, pid=1, since=0.0, command="cmd", message=""):
    return {"pid": pid, "user": user, "mode": mode, "state": state, "since": since,
            "command": command, "message": message}


@pytest.mark.parametrize("rows, text", [
    ([], None),
    ([row("bob", "exclusive", "waiting")], None),
    ([row("alice", "exclusive", "holding", 42, 100.0, "./bench --all")],
     "alice holds it exclusively (pid 42, 3m12s: ./bench --all)"),
    ([row("alice", "shared", "holding", 7, 292.0, "make", "docs"), row("bob", "shared", "holding"),
      row("carol", "shared", "holding"), row("dave", "exclusive", "waiting")],
     "alice and 2 other jobs hold it shared (pid 7, 0.0s: make [docs])"),
    ([row("alice", "shared", "holding", 7, 292.0), row("bob", "shared", "holding")],
     "alice and 1 other job hold it shared (pid 7, 0.0s: cmd)"),
])
def test_holders(rows, text):
    assert holders(rows, now=292.0) == text


@pytest.mark.parametrize("argv, line", [
    (["./bench", "--all"], "./bench --all"),
    (["sh", "-c", "exit 3"], "sh -c 'exit 3'"),
    (["echo", ""], "echo ''"),
    (["echo", "it's"], "echo 'it'\"'\"'s'"),
    (["caf\u00e9"], "'caf\u00e9'"),        # shlex's safe set is ASCII
    ([], ""),
])
def test_shell_words(argv, line):
    assert shell_words(argv) == line


@given(st.lists(st.text()))
def test_shell_words_is_shlex_join(argv):
    assert shell_words(argv) == shlex.join(argv)
