"""What memory protection the live loans call for: the pure part of protected loans.

Theory of operation
-------------------
cgroup v2 protects a cgroup's memory only as far as every ancestor is
protected too, so a loan protects the chain of systemd units that holds its
borrower: for alice's `gatekeeper matlab` in a login session,

    user.slice -> user-2000.slice -> session-3.scope

each gets MemoryMin= raised by the loan's size, and the innermost unit (the
one holding the process) ManagedOOMPreference=avoid. A unit shared by several
loans gets the sum. These are the borrower's own units, maybe configured by
the administrator, so the value a unit had before we first touched it (its
"base") is remembered, kept across daemon restarts, added to, and put back
exactly when its last loan ends. Nothing here stops a unit or moves a
process: ending a loan only lowers numbers, so nothing is killed.

Only units of the shapes in PROTECTABLE are touched; the polkit rule
polkit/60-holdingpen-protect.rules grants the daemon exactly those.

The functions take plain values and return plain values; protect.py talks to
systemd. Two steps, because bases must be read from systemd the first time a
unit is touched:

    wanted = wanted_settings(borrowers)
    missing = units_without_base(wanted, bases)            # shell reads these
    changes, bases = plan(wanted, {**bases, **read})       # shell applies changes
"""

import re
from collections import namedtuple

MEMORY_MIN = "MemoryMin"
OOM_PREFERENCE = "ManagedOOMPreference"
OOM_AVOID = "avoid"
UNLIMITED = (1 << 64) - 1     # what systemd reports for MemoryMin=infinity
# Which settings we change on which units: every unit of the chain gets
# MemoryMin, the innermost also ManagedOOMPreference.
CHAIN_PROPERTIES = (MEMORY_MIN,)
LEAF_PROPERTIES = (MEMORY_MIN, OOM_PREFERENCE)

# The units a borrower of a console or remote session, or of a user's own
# systemd (a desktop's apps), can be in, as PID 1 names them. Anything else
# (system services, cron's, containers) is not ours to change.
PROTECTABLE = re.compile(r"^(user\.slice|user-[0-9]+\.slice|session-[0-9a-z]+\.scope"
                         r"|user@[0-9]+\.service)$")

Borrower = namedtuple("Borrower", "key chain size_bytes")
Borrower.__doc__ = """One live memory loan: key (the daemon's name for it, e.g. "loan.7"),
chain (unit names from the outermost slice to the unit holding the process,
from chain_of()), size_bytes (the loan's size)."""


class NotProtectable(Exception):
    """This borrower's memory cannot be protected; str() says why."""


def cgroup_path(proc_pid_cgroup):
    """The cgroup v2 path ("0::/user.slice/...") in the text of /proc/PID/cgroup.

    Raises:
        NotProtectable: the process is in no cgroup v2 hierarchy.
    """
    for line in proc_pid_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise NotProtectable("the process is in no cgroup v2 hierarchy")


def chain_of(path):
    """The system units, outermost first, that hold a process in cgroup `path`.

    PID 1's units end at the first one that is not a slice: below a service
    or scope (user@2000.service, say) the cgroups are another manager's,
    which we neither can nor need to change: the protection of
    user@2000.service reaches them (memory_recursiveprot).

    Raises:
        NotProtectable: the chain has a unit outside PROTECTABLE, or no unit.
    """
    chain = []
    for part in path.strip("/").split("/"):
        if not part:
            break
        if not PROTECTABLE.match(part):
            raise NotProtectable(f"the process is in {path}, and {part} is not a user's unit "
                                 "(only user.slice, user-UID.slice, session-ID.scope and "
                                 "user@UID.service are protected)")
        chain.append(part)
        if not part.endswith(".slice"):
            return tuple(chain)
    raise NotProtectable(f"the process is in {path}, not in a session or user service")


def wanted_settings(borrowers):
    """{unit: {property: value}} on top of the bases: MemoryMin is the sum of the
    loans whose chain has the unit, ManagedOOMPreference "avoid" on innermost units."""
    wanted = {}
    for borrower in borrowers:
        for unit in borrower.chain:
            settings = wanted.setdefault(unit, {MEMORY_MIN: 0})
            settings[MEMORY_MIN] += borrower.size_bytes
        wanted[borrower.chain[-1]][OOM_PREFERENCE] = OOM_AVOID
    return wanted


def properties_of(unit):
    """The properties we may change on unit (and so remember a base of)."""
    return LEAF_PROPERTIES if not unit.endswith(".slice") else CHAIN_PROPERTIES


def units_without_base(wanted, bases):
    """Units we are about to touch for the first time: their bases must be read."""
    return sorted(unit for unit in wanted if unit not in bases)


def plan(wanted, bases):
    """What to set, in which order, to go from what was set to what is wanted.

    Args:
        wanted: from wanted_settings().
        bases: {unit: {property: value}} before we touched it, for every unit we
            have changed and every unit in wanted (see units_without_base()).
    Returns:
        (changes, bases): changes is [(unit, {property: value})]: raised units
        outermost first (a scope's protection counts only as far as its slice's),
        then units put back, innermost first; bases is what to remember from
        now on (units no longer touched are forgotten).
    Raises:
        KeyError: a unit in wanted has no base.
    """
    raised, restored, kept = [], [], {}
    for unit, extra in wanted.items():
        base = bases[unit]
        kept[unit] = base
        # "infinity" is the largest 64-bit value: a sum must not pass it.
        memory_min = min(base.get(MEMORY_MIN, 0) + extra[MEMORY_MIN], UNLIMITED)
        raised.append((unit, {**extra, MEMORY_MIN: memory_min}))
    for unit, base in bases.items():
        if unit not in wanted:
            restored.append((unit, dict(base)))
    raised.sort(key=lambda change: _depth(change[0]))
    restored.sort(key=lambda change: _depth(change[0]), reverse=True)
    return raised + restored, kept


def _depth(unit):
    """How deep unit sits: a-b.slice is inside a.slice; a scope or service inside any slice."""
    if unit.endswith(".slice"):
        return unit.count("-")
    return 1 << 16


def borrowers_of(loans):
    """The Borrowers to protect: the loans whose borrower's units are known.

    Args:
        loans: [(key, chain or None, size_bytes)], one per live memory loan; the
            chain is None where the borrower is in no unit we may protect.
    Returns:
        [Borrower], in the order given.
    """
    return [Borrower(key, tuple(chain), size_bytes) for key, chain, size_bytes in loans if chain]
