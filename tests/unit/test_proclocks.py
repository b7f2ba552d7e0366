"""Parsing the kernel's lock table, including lines it must skip."""

import os

from holdingpen.lock.proclocks import flocks_on, parse

TABLE = """\
1: FLOCK  ADVISORY  WRITE 2723 fe:00:2146402 0 EOF
1: -> FLOCK  ADVISORY  READ 2727 fe:00:2146402 0 EOF
1:  -> FLOCK  ADVISORY  WRITE 2726 fe:00:2146402 0 EOF
2: POSIX  ADVISORY  READ 900 08:01:77 0 EOF
3: OFDLCK ADVISORY  WRITE -1 00:1a:5 0 EOF
4: LEASE  ACTIVE    READ 12 00:1a:6 0 EOF
garbage
5: FLOCK ADVISORY WRITE notapid fe:00:1 0 EOF
6: FLOCK ADVISORY WRITE 1 fe:00 0 EOF
7: FLOCK ADVISORY NONE 1 fe:00:1 0 EOF
8: ->
"""


def test_parse_keeps_order_and_fields():
    locks = [(lk.kind, lk.write, lk.pid, lk.dev, lk.ino, lk.waiting) for lk in parse(TABLE)]
    assert locks == [
        ("FLOCK", True, 2723, (0xfe, 0), 2146402, False),
        ("FLOCK", False, 2727, (0xfe, 0), 2146402, True),
        ("FLOCK", True, 2726, (0xfe, 0), 2146402, True),
        ("POSIX", False, 900, (8, 1), 77, False),
        ("OFDLCK", True, -1, (0, 0x1a), 5, False),
        ("LEASE", False, 12, (0, 0x1a), 6, False),
    ]


def test_flocks_on_matches_device_and_inode(tmp_path):
    f = tmp_path / "lock"
    f.touch()
    st = os.stat(f)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    text = (f"1: FLOCK  ADVISORY  WRITE 5 {dev}:{st.st_ino} 0 EOF\n"
            f"2: POSIX  ADVISORY  WRITE 6 {dev}:{st.st_ino} 0 EOF\n"
            f"3: FLOCK  ADVISORY  WRITE 7 {dev}:{st.st_ino + 1} 0 EOF\n"
            f"4: FLOCK  ADVISORY  WRITE 8 ff:ff:{st.st_ino} 0 EOF\n")
    assert [lk.pid for lk in flocks_on(parse(text), st)] == [5]
