"""The state memfd that says what each stored descriptor is: it survives SIGKILL mid-write."""

import json
import os
import random
import signal
import time

import pytest

from holdingpen.pen import config, fdstore


def facts(n, width=100, mark=0):
    return {**{f"loan.{i}": {"command": "x" * width} for i in range(n)}, "mark": mark}


def test_what_is_written_is_read():
    fd = os.memfd_create("state")
    try:
        assert fdstore._read_state(fd) == {}
        rng = random.Random(7)
        for n in [0, 1, 300, 2, 1000, 0, 50] + [rng.randrange(500) for _ in range(200)]:
            written = facts(n, rng.randrange(300))
            fdstore._write_state(fd, json.dumps(written).encode())
            assert fdstore._read_state(fd) == written
        assert os.fstat(fd).st_size < 3 * len(json.dumps(facts(1000, 300)))   # it does not grow
    finally:
        os.close(fd)


def test_a_sigkill_in_the_middle_of_writes_never_leaves_it_empty():
    """States of many pages, rewritten in a loop by a child killed at a random moment."""
    rng = random.Random(11)
    broken = 0
    for _ in range(100):
        fd = os.memfd_create("state")
        fdstore._write_state(fd, json.dumps(facts(5)).encode())
        pid = os.fork()
        if pid == 0:
            mark = 0
            while True:
                mark += 1
                fdstore._write_state(fd, json.dumps(facts(200 + mark % 300, 120, mark)).encode())
        time.sleep(rng.random() * 0.01)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        state = fdstore._read_state(fd)
        broken += not (state and "mark" in state and all(k.startswith("loan.") for k in state
                                                         if k != "mark"))
        os.close(fd)
    assert broken == 0


# ---- the last good configuration, kept in the state for a restart with a bad file ----

def stored(notify_log):
    def notify(message, fds=None):
        notify_log.append((message, list(fds or [])))
        return True
    return notify


def test_the_last_good_configuration_comes_back_with_what_it_holds():
    log = []
    store = fdstore.FdStore(stored(log), {})
    [(message, [state_fd])] = log
    assert message == "FDSTORE=1\nFDNAME=state"
    chunk_fd = os.memfd_create("chunk")
    good = config.parse(b'[memory]\nsize = "1M"\n', "/etc/holdingpen/holdingpen.toml")
    store.keep_config(good)
    store.add("chunk.1", chunk_fd, {"pool": "memory"})
    try:
        # What the next start is handed: the state, and the chunk.
        passed = {state_fd: "state", chunk_fd: "chunk.1"}
        assert fdstore.kept(passed) == (True, {"source": good.source, "text": good.text})
        again = config.last_good(fdstore.kept(passed)[1])
        assert again.pools == good.pools and again.source == good.source
        assert fdstore.FdStore(stored([]), passed).passed == [("chunk.1", chunk_fd, {"pool": "memory"})]
        # The state alone is nothing held: a bad file then refuses to start.
        assert fdstore.kept({state_fd: "state"}) == (False, good_dict(good))
    finally:
        os.close(chunk_fd)
        os.close(state_fd)


def good_dict(cfg):
    return {"source": cfg.source, "text": cfg.text}


# (what the last run left in the state, whether a chunk or loan came back, what kept() says)
KEPT = [
    ("an older daemon's state: no configuration", {"loan.1": {"pool": "memory"}}, True, (True, None)),
    ("a configuration, nothing held", {"config": {"source": "f", "text": ""}}, False,
     (False, {"source": "f", "text": ""})),
    ("a configuration that is not an object", {"config": "x"}, True, (True, None)),
    ("no state at all", None, True, (True, None)),
]


@pytest.mark.parametrize("state, held, expected", [k[1:] for k in KEPT], ids=[k[0] for k in KEPT])
def test_kept(state, held, expected):
    passed = {}
    fds = []
    if state is not None:
        fds.append(os.memfd_create("state"))
        fdstore._write_state(fds[-1], json.dumps(state).encode())
        passed[fds[-1]] = "state"
    if held:
        fds.append(os.memfd_create("loan"))
        passed[fds[-1]] = "loan.1"
    try:
        assert fdstore.kept(passed) == expected
    finally:
        for fd in fds:
            os.close(fd)


def test_counters_are_kept_with_the_loans_for_the_next_run():
    """What the next run reads is what this one kept: in the state memfd, which
    systemd hands back (here: passed on by hand), loans and counts alike."""
    sent = []
    store = fdstore.FdStore(lambda message, fds=None: sent.append((message, fds)), {})
    assert store.counters is None
    (message, [state_fd]), = sent
    assert message == "FDSTORE=1\nFDNAME=state"
    loan_r, loan_w = os.pipe()
    try:
        store.add("loan.1", loan_r, {"pool": "memory"})
        store.keep_counters({"since": 1.5, "borrows": {"memory": 1}})
        store.remove("loan.1")        # the loans change; the counts stay
        store.add("loan.2", loan_r, {"pool": "memory"})

        again = fdstore.FdStore(lambda message, fds=None: None, {state_fd: "state", loan_r: "loan.2"})
        assert again.counters == {"since": 1.5, "borrows": {"memory": 1}}
        assert again.passed == [("loan.2", loan_r, {"pool": "memory"})]   # not a descriptor's
    finally:
        for fd in (state_fd, loan_r, loan_w):
            os.close(fd)
