"""Sizes in bytes, as people write them: 2G, 512M, 10 GiB, 1048576."""

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text):
    """Bytes for "2G", "512M", "10GiB", "1.5G" or a bare integer; K, M, G, T are binary.

    Raises:
        ValueError: not a size, or not a positive whole number of bytes.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a size like \"2G\", not {text!r}")
    if isinstance(text, int):
        number, unit = text, ""
    elif isinstance(text, str):
        s = text.strip().upper().replace(" ", "")
        if s.endswith("IB"):
            s = s[:-2]
        elif s.endswith("B") and len(s) > 1 and s[-2] in _UNITS:
            s = s[:-1]
        unit = s[-1:] if s[-1:] in _UNITS and s[-1:] else ""
        try:
            number = float(s[:len(s) - len(unit)]) if "." in s else int(s[:len(s) - len(unit)])
        except ValueError:
            raise ValueError(f"expected a size like \"2G\", not {text!r}") from None
    else:
        raise ValueError(f"expected a size like \"2G\", not {text!r}")
    size = number * _UNITS[unit]
    if not 0 < size < float("inf") or size != int(size):   # also refuses nan
        raise ValueError(f"a size must be a positive whole number of bytes, not {text!r}")
    return int(size)


def format_size(size_bytes):
    """Short and exact enough for people: 512 B, 64 MiB, 2.0 GiB, 1.5 TiB."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size_bytes >= scale:
            value = size_bytes / scale
            return f"{value:.0f} {unit}" if value == int(value) and value >= 10 else f"{value:.1f} {unit}"
    return f"{size_bytes} B"
