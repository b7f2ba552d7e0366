"""Can the machine spare a reservation? /proc/meminfo text in, decisions out."""

import os

import pytest

from holdingpen.pen import headroom
from holdingpen.pen.headroom import floor_bytes, has_swap, memory_shortfall, parse_meminfo, read_meminfo

MiB = 1048576
GiB = 1073741824

# The head of a real /proc/meminfo (Debian 12, 16 GB, with swap), spacing and all.
REAL = """\
MemTotal:       16318412 kB
MemFree:         8421836 kB
MemAvailable:   12702104 kB
Buffers:          310052 kB
Cached:          4177192 kB
SwapCached:            0 kB
SwapTotal:       2097148 kB
SwapFree:        2097148 kB
Shmem:            403676 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
DirectMap1G:     2097152 kB
"""


def test_parse_real_meminfo():
    fields = parse_meminfo(REAL)
    assert fields["MemTotal"] == 16710053888          # 16318412 KiB
    assert fields["MemAvailable"] == 13006954496
    assert fields["SwapTotal"] == 2147479552
    assert fields["SwapCached"] == 0
    assert fields["HugePages_Total"] == 0             # a count, not kB: taken as it is
    assert fields["Hugepagesize"] == 2097152
    assert len(fields) == 13


HOSTILE = [
    ("empty", "", {}),
    ("only newlines", "\n\n\n", {}),
    ("no colon", "MemTotal 5 kB", {}),
    ("no value", "MemTotal:", {}),
    ("blank value", "MemTotal:    \n", {}),
    ("a word", "MemTotal: lots kB", {}),
    ("negative", "MemTotal: -5 kB", {}),
    ("a fraction", "MemTotal: 1.5 kB", {}),
    ("hex", "MemTotal: 0x10 kB", {}),
    ("a superscript digit", "MemTotal: \u00b2 kB", {}),         # "²".isdigit() is true, int() refuses it
    ("5000 digits", "MemTotal: " + "9" * 5000 + " kB", {}),   # past Python's int-from-text limit
    ("binary junk", "\x00\x01\xff:\x00", {}),
    ("no unit", "MemTotal: 5", {"MemTotal": 5}),
    ("no space", "MemTotal:5 kB", {"MemTotal": 5120}),
    ("tabs", "MemTotal:\t5\tkB", {"MemTotal": 5120}),
    ("CRLF", "MemTotal: 5 kB\r\nMemAvailable: 1 kB\r\n", {"MemTotal": 5120, "MemAvailable": 1024}),
    ("good lines around bad ones", "MemTotal: 8 kB\nMemFree: ? kB\nSwapTotal: 0 kB\n",
     {"MemTotal": 8192, "SwapTotal": 0}),
]


@pytest.mark.parametrize("why, text, fields", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_parse_hostile_meminfo(why, text, fields):
    assert parse_meminfo(text) == fields


def test_read_meminfo_from_a_proc_directory(tmp_path):
    (tmp_path / "meminfo").write_text(REAL)
    assert read_meminfo(str(tmp_path)) == parse_meminfo(REAL)


FLOOR = [
    ({}, 134217728),                                   # 128 MiB when MemTotal is unknown
    ({"MemTotal": 1 * GiB}, 134217728),                # 5% is 51.2 MiB: at least 128 MiB
    ({"MemTotal": 2560 * MiB}, 134217728),             # 5% is exactly 128 MiB
    ({"MemTotal": 2560 * MiB + 20}, 134217729),        # one byte over
    ({"MemTotal": 8 * GiB}, 429496729),                # 409.6 MiB, rounded down
    ({"MemTotal": 20 * GiB}, 1073741824),              # 1 GiB
    ({"MemTotal": 16710053888}, 835502694),            # the REAL machine: 835502694.4
    ({"MemTotal": 2 << 40}, 109951162777),             # 2 TiB: 109951162777.6
]


@pytest.mark.parametrize("meminfo, floor", FLOOR)
def test_floor_bytes(meminfo, floor):
    assert floor_bytes(meminfo) == floor


SHORTFALL = [
    ("plenty", {"MemTotal": 16 * GiB, "MemAvailable": 8 * GiB}, 2 * GiB, None),
    ("exactly at the floor", {"MemTotal": 20 * GiB, "MemAvailable": 3 * GiB}, 2 * GiB, None),
    ("one byte under the floor", {"MemTotal": 20 * GiB, "MemAvailable": 3 * GiB - 1}, 2 * GiB,
     "only 3.0 GiB available; reserving 2.0 GiB would leave less than 1.0 GiB"),
    ("below", {"MemTotal": 8 * GiB, "MemAvailable": 1 * GiB}, 768 * MiB,
     "only 1.0 GiB available; reserving 768 MiB would leave less than 409.6 MiB"),
    ("just enough", {"MemTotal": 8 * GiB, "MemAvailable": 1 * GiB}, 512 * MiB, None),
    ("more than is available", {"MemTotal": 8 * GiB, "MemAvailable": 1 * GiB}, 2 * GiB,
     "only 1.0 GiB available; reserving 2.0 GiB would leave less than 409.6 MiB"),
    ("a small machine: the 128 MiB floor", {"MemTotal": 1 * GiB, "MemAvailable": 300 * MiB}, 256 * MiB,
     "only 300 MiB available; reserving 256 MiB would leave less than 128 MiB"),
    ("a small machine, just enough", {"MemTotal": 1 * GiB, "MemAvailable": 384 * MiB}, 256 * MiB, None),
    ("no MemTotal: the 128 MiB floor", {"MemAvailable": 384 * MiB}, 256 * MiB, None),
    ("no MemTotal, short", {"MemAvailable": 384 * MiB - 1}, 256 * MiB,
     "only 384.0 MiB available; reserving 256 MiB would leave less than 128 MiB"),
    ("nothing available", {"MemTotal": 8 * GiB, "MemAvailable": 0}, 256 * MiB,
     "only 0 B available; reserving 256 MiB would leave less than 409.6 MiB"),
    # A kernel that does not say (before 3.14): trust the allocation to fail if it must.
    ("no MemAvailable line", {"MemTotal": 8 * GiB, "MemFree": 0}, 4 * GiB, None),
    ("an empty file", {}, 1 << 40, None),
]


@pytest.mark.parametrize("why, meminfo, size_bytes, shortfall", SHORTFALL, ids=[s[0] for s in SHORTFALL])
def test_memory_shortfall(why, meminfo, size_bytes, shortfall):
    assert memory_shortfall(meminfo, size_bytes) == shortfall


def test_memory_shortfall_from_real_text():
    meminfo = parse_meminfo(REAL)            # 12.1 GiB available, floor 796.8 MiB
    assert memory_shortfall(meminfo, 8 * GiB) is None
    assert memory_shortfall(meminfo, 12 * GiB) == (
        "only 12.1 GiB available; reserving 12 GiB would leave less than 796.8 MiB")


SWAP = [
    ({}, False),
    ({"SwapTotal": 0}, False),
    ({"SwapTotal": 1024}, True),
    (parse_meminfo(REAL), True),
    (parse_meminfo(REAL.replace("2097148 kB", "0 kB")), False),
]


@pytest.mark.parametrize("meminfo, swap", SWAP)
def test_has_swap(meminfo, swap):
    assert has_swap(meminfo) is swap


ZONEINFO = """\
Node 0, zone   Normal
  pages free     100
  pagesets
    cpu: 0
              count:    51019
              high:     51182
    cpu: 1
              count:    18079
              high:     34993
Node 0, zone  Movable
              count:    x
"""


def test_parse_pcp_pages():
    assert headroom.parse_pcp_pages(ZONEINFO) == 51019 + 18079
    assert headroom.parse_pcp_pages("") == 0


def test_read_meminfo_counts_the_per_cpu_free_lists(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 100 kB\n")
    (tmp_path / "zoneinfo").write_text("  pagesets\n              count:    3\n")
    page = os.sysconf("SC_PAGE_SIZE")
    assert headroom.read_meminfo(str(tmp_path))["MemAvailable"] == 100 * 1024 + 3 * page
    (tmp_path / "zoneinfo").unlink()               # a kernel without it: MemAvailable as it is
    assert headroom.read_meminfo(str(tmp_path))["MemAvailable"] == 100 * 1024
