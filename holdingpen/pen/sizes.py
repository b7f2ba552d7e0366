"""Sizes in bytes, as people write them: 2G, 512M, 10 GiB, 1048576."""

import re
from fractions import Fraction

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# The largest file offset: fallocate takes no more, and a larger int makes the
# os module raise OverflowError (not OSError), which no caller expects.
MAX_SIZE_BYTES = (1 << 63) - 1
# Plain decimals only: int() and float() would also take "1_000", "+5", "٣",
# "nan" or "1.0e3" (while refusing "1e3").
_NUMBER = re.compile(r"[0-9]+\.?[0-9]*|\.[0-9]+")


def parse_size(text):
    """Bytes for "2G", "512M", "10GiB", "1.5G" or a bare integer; K, M, G, T are binary.

    Raises:
        ValueError: not a size, not a positive whole number of bytes, or over MAX_SIZE_BYTES.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a size like \"2G\", not {text!r}")
    if isinstance(text, int):
        number, unit = text, ""
    elif isinstance(text, str):
        s = text.strip().upper().replace(" ", "")
        if s[-3:] in ("KIB", "MIB", "GIB", "TIB"):
            s = s[:-2]
        elif s.endswith("B"):
            s = s[:-1]     # "4KB", and "512B" (format_size writes "512 B")
        unit = s[-1:] if s[-1:] in _UNITS and s[-1:] else ""
        digits = s[:len(s) - len(unit)]
        try:
            if not _NUMBER.fullmatch(digits):
                raise ValueError
            number = Fraction(digits)     # exact: a float would round large sizes
        except ValueError:                # also past Python's 4300-digit limit
            raise ValueError(f"expected a size like \"2G\", not {text!r}") from None
    else:
        raise ValueError(f"expected a size like \"2G\", not {text!r}")
    size = number * _UNITS[unit]
    if size <= 0 or size.denominator != 1:
        raise ValueError(f"a size must be a positive whole number of bytes, not {text!r}")
    if size > MAX_SIZE_BYTES:
        raise ValueError(f"a size must be at most {MAX_SIZE_BYTES} bytes (8 EiB), not {text!r}")
    return int(size)


def format_size(size_bytes):
    """Short and exact enough for people: 512 B, 64 MiB, 2.0 GiB, 1.5 TiB."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size_bytes >= scale:
            value = size_bytes / scale
            return f"{value:.0f} {unit}" if value == int(value) and value >= 10 else f"{value:.1f} {unit}"
    return f"{size_bytes} B"
