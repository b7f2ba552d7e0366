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
