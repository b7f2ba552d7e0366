"""The state memfd that says what each stored descriptor is: it survives SIGKILL mid-write."""

import json
import os
import random
import signal
import time

from holdingpen.pen import fdstore


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
