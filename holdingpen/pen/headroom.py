"""Can the machine spare another reservation? Decided from /proc/meminfo and statvfs.

Reserving memory the machine needs would push it towards the OOM killer, the
very thing the pool is there to prevent, so a memory reservation is made only
if MemAvailable stays above a floor afterwards: 5% of MemTotal, at least
128 MiB. Disk space needs no floor: fallocate either gets the blocks or fails.
"""

import os

MIN_FLOOR_BYTES = 128 << 20
FLOOR_FRACTION = 0.05


def parse_meminfo(text):
    """{field: bytes} from /proc/meminfo text ("MemAvailable:  123 kB")."""
    fields = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            try:
                value = int(parts[0])
            except ValueError:    # "²" is a digit to isdigit(), not to int(); or over 4300 digits
                continue
            fields[name] = value * (1024 if parts[1:] == ["kB"] else 1)
    return fields


def parse_pcp_pages(zoneinfo):
    """Free pages the kernel keeps on its per-CPU lists ("count:" under "pagesets")."""
    pages = 0
    for line in zoneinfo.splitlines():
        fields = line.split()
        if fields[:1] == ["count:"] and len(fields) > 1 and fields[1].isascii() and fields[1].isdigit():
            pages += int(fields[1])
    return pages


def read_meminfo(proc="/proc"):
    """/proc/meminfo, with MemAvailable counting the per-CPU free lists too.

    Linux keeps freed pages on per-CPU lists (up to gigabytes just after a big
    free) and leaves them out of MemAvailable; they are free all the same, and
    without them a reservation is refused for seconds after memory came free.
    """
    with open(os.path.join(proc, "meminfo")) as f:
        meminfo = parse_meminfo(f.read())
    try:
        with open(os.path.join(proc, "zoneinfo")) as f:
            pcp_bytes = parse_pcp_pages(f.read()) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pcp_bytes = 0
    if "MemAvailable" in meminfo:
        meminfo["MemAvailable"] += pcp_bytes
    return meminfo


def floor_bytes(meminfo):
    return max(MIN_FLOOR_BYTES, int(meminfo.get("MemTotal", 0) * FLOOR_FRACTION))


def memory_shortfall(meminfo, size_bytes):
    """None if size_bytes can be reserved now, else why not (for STATUS and the journal)."""
    available = meminfo.get("MemAvailable")
    if available is None:
        return None    # a kernel too old to say: trust fallocate
    floor = floor_bytes(meminfo)
    if available - size_bytes >= floor:
        return None
    from holdingpen.pen.sizes import format_size
    return (f"only {format_size(available)} available; reserving {format_size(size_bytes)} "
            f"would leave less than {format_size(floor)}")


def has_swap(meminfo):
    return meminfo.get("SwapTotal", 0) > 0
