"""Events: the journal fields each event carries, the stderr line, and where they go."""

import io
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from holdingpen.pen import events

README = Path(__file__).resolve().parents[2] / "README.md"
ALICE = SimpleNamespace(uid=2000, pid=4242, comm="matlab")

# (event, what is passed besides the message, the fields besides MESSAGE_ID)
CASES = [
    ("started", {}, {"HOLDINGPEN_EVENT": "started", "PRIORITY": "6"}),
    ("lent", {"kind": "memory", "size_bytes": 2 << 30, "peer": ALICE},
     {"HOLDINGPEN_EVENT": "lent", "PRIORITY": "6", "HOLDINGPEN_KIND": "memory",
      "HOLDINGPEN_BYTES": "2147483648", "HOLDINGPEN_CLIENT_UID": "2000",
      "HOLDINGPEN_CLIENT_PID": "4242", "HOLDINGPEN_CLIENT_COMM": "matlab"}),
    ("shortfall", {"kind": "disk:/var/tmp", "size_bytes": 0},
     {"HOLDINGPEN_EVENT": "shortfall", "PRIORITY": "4", "HOLDINGPEN_KIND": "disk:/var/tmp",
      "HOLDINGPEN_BYTES": "0"}),
    ("config-refused", {"source": "/etc/holdingpen/holdingpen.toml"},
     {"HOLDINGPEN_EVENT": "config-refused", "PRIORITY": "3",
      "HOLDINGPEN_SOURCE": "/etc/holdingpen/holdingpen.toml"}),
    ("refused", {"peer": ALICE, "why": None},
     {"HOLDINGPEN_EVENT": "refused", "PRIORITY": "5", "HOLDINGPEN_CLIENT_UID": "2000",
      "HOLDINGPEN_CLIENT_PID": "4242", "HOLDINGPEN_CLIENT_COMM": "matlab",
      "HOLDINGPEN_WHY": "None"}),
    ("bad-client", {"count": 3}, {"HOLDINGPEN_EVENT": "bad-client", "PRIORITY": "5",
                                  "HOLDINGPEN_COUNT": "3"}),
]


@pytest.mark.parametrize("event, given, fields", CASES)
def test_fields(event, given, fields):
    said = []
    events.Events(lambda message, f: said.append((message, f)))(event, "what happened", **given)
    assert said == [("what happened", {**fields, "MESSAGE_ID": events.MESSAGE_IDS[event]})]


def test_an_unknown_event_is_a_bug_not_an_entry():
    said = []
    with pytest.raises(KeyError):
        events.Events(lambda message, f: said.append(f))("lnet", "a typo")
    assert said == []


def test_message_ids_are_distinct_128_bit_ids():
    ids = list(events.MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch("[0-9a-f]{32}", i) for i in ids)


def test_the_readme_lists_every_event_and_no_other():
    text = README.read_text()
    listed = re.search(r"`HOLDINGPEN_EVENT` \(([^)]*)\)", text).group(1)
    assert set(re.findall(r"`([a-z-]+)`", listed)) == set(events.MESSAGE_IDS)


def test_stderr_line():
    out = io.StringIO()
    events.Events(lambda m, f: events.stderr_sink(m, f, out))("reserved", "memory 1/2 held")
    assert out.getvalue() == "holdingpen: reserved: memory 1/2 held\n"


@pytest.fixture
def stderr_file(tmp_path):
    fd = os.open(tmp_path / "stderr", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC)
    yield fd, os.fstat(fd)
    os.close(fd)


# (what $JOURNAL_STREAM says, given the file's st_dev and st_ino; whether it is the journal)
STREAMS = [
    (lambda st: f"{st.st_dev}:{st.st_ino}", True),
    (lambda st: f"{st.st_dev}:{st.st_ino + 1}", False),    # another stream: stderr was redirected
    (lambda st: None, False),                              # not started by systemd
    (lambda st: "", False),
    (lambda st: "8:x", False),
    (lambda st: f"{st.st_dev}:{st.st_ino}:0", False),
]


@pytest.mark.parametrize("stream, is_journal", STREAMS)
def test_stderr_is_the_journal_only_when_journal_stream_names_it(stderr_file, stream, is_journal):
    fd, st = stderr_file
    value = stream(st)
    environ = {} if value is None else {"JOURNAL_STREAM": value}
    assert events.stderr_is_journal(environ, fd) is is_journal
    sink = events.default_events(environ, fd).sink
    assert sink is (events.journal_sink if is_journal else events.stderr_sink)


def test_a_closed_stderr_is_not_the_journal(stderr_file):
    fd, st = stderr_file
    closed = os.dup(fd)
    os.close(closed)
    assert events.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, closed) is False
