"""Sizes as people write them, driven directly: parse_size and format_size."""

import pytest

from holdingpen.pen.sizes import format_size, parse_size

# Expected values are written out in bytes, not computed from the units.
GOOD = [
    (1, 1),
    (4096, 4096),
    (2147483648, 2147483648),
    ("1", 1),
    ("4096", 4096),
    ("1K", 1024),
    ("1k", 1024),
    ("4KB", 4096),
    ("4 KiB", 4096),
    ("512M", 536870912),
    ("512MB", 536870912),
    ("2G", 2147483648),
    ("2 g", 2147483648),
    (" 2G ", 2147483648),
    ("10GiB", 10737418240),
    ("10 GiB", 10737418240),
    ("10gib", 10737418240),
    ("1.5G", 1610612736),
    ("1.0G", 1073741824),
    ("0.5K", 512),
    ("1T", 1099511627776),
    ("1.5T", 1649267441664),
    ("512B", 512),                # what format_size writes for small sizes
    ("512 B", 512),
    ("8388607T", 9223370937343148032),                        # just under the largest
    (9223372036854775807, 9223372036854775807),               # the largest file offset
    ("9223372036854775807", 9223372036854775807),
]


@pytest.mark.parametrize("text, size_bytes", GOOD)
def test_parse_size(text, size_bytes):
    assert parse_size(text) == size_bytes
    assert type(parse_size(text)) is int


BAD = [
    "", " ", "G", "B", "GiB", "KB", ".",
    "0", "0G", "0.0G", "-1", "-1G", "-0",
    "1.3",                        # not a whole number of bytes
    "0.1G",                       # 107374182.4 bytes
    "1.0000000001K",
    "nan", "NaN", "inf", "-inf", "infinity", "nanG",
    "1e3", "1E3", "1.0e3", "1.5e3G", "1e3G",   # no exponents, with or without a point
    "0x10", "1_000", "+5", "٣", "２G",   # decimal digits only, as ASCII
    "2X", "2P", "2GG", "G2", "2 G 2", "2iB", "2..5G", "1.5.G",
    "1,5G",
    "8388608T",                   # 2**63: more than a file offset can hold
    "9223372036854775808",
    "99999999999999999999999999999999G",
    "9" * 5000,                   # past Python's int-from-text limit: still a ValueError
    True, False, None, [], {}, b"2G",
    1.5, 2.0, float("nan"), float("inf"),
    0, -1, 2 ** 63, 10 ** 30,
]


@pytest.mark.parametrize("text", BAD, ids=lambda t: repr(t)[:40])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError) as e:
        parse_size(text)
    message = str(e.value)
    assert "\n" not in message
    assert repr(text)[:50] in message        # it says what it was given


FORMAT = [
    (0, "0 B"),
    (1, "1 B"),
    (512, "512 B"),
    (1023, "1023 B"),
    (1024, "1.0 KiB"),
    (1536, "1.5 KiB"),
    (10240, "10 KiB"),
    (67108864, "64 MiB"),
    (268435456, "256 MiB"),
    (429496729, "409.6 MiB"),
    (1073741824, "1.0 GiB"),
    (2147483648, "2.0 GiB"),
    (10200547328, "9.5 GiB"),
    (10737418240, "10 GiB"),
    (11274289152, "10.5 GiB"),
    (1649267441664, "1.5 TiB"),
    (2251799813685248, "2048 TiB"),
]


@pytest.mark.parametrize("size_bytes, text", FORMAT)
def test_format_size(size_bytes, text):
    assert format_size(size_bytes) == text


@pytest.mark.parametrize("size_bytes", [1, 512, 1024, 1536, 67108864, 2147483648, 10737418240,
                                        11274289152, 1649267441664])
def test_what_format_size_writes_exactly_parses_back(size_bytes):
    assert parse_size(format_size(size_bytes)) == size_bytes
