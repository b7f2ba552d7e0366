"""What protection the live loans call for: loans and bases in, unit settings out."""

import pytest

from holdingpen.pen.protection import (MEMORY_MIN, OOM_PREFERENCE, UNLIMITED, Borrower,
                                       NotProtectable, borrowers_of, cgroup_path, chain_of, plan,
                                       units_without_base, wanted_settings)

MiB = 1 << 20
SESSION = ("user.slice", "user-2000.slice", "session-3.scope")
DESKTOP = ("user.slice", "user-2000.slice", "user@2000.service")
BOB = ("user.slice", "user-2001.slice", "session-c1.scope")
NONE = {MEMORY_MIN: 0}
NONE_LEAF = {MEMORY_MIN: 0, OOM_PREFERENCE: "none"}


# ---- which units hold a process ----

HYBRID = """\
12:memory:/user.slice/user-2000.slice/session-3.scope
1:name=systemd:/user.slice/user-2000.slice/session-3.scope
0::/user.slice/user-2000.slice/session-3.scope
"""


@pytest.mark.parametrize("text, path", [
    ("0::/user.slice/user-2000.slice/session-3.scope\n", "/user.slice/user-2000.slice/session-3.scope"),
    (HYBRID, "/user.slice/user-2000.slice/session-3.scope"),
    ("0::/\n", "/"),
])
def test_cgroup_path(text, path):
    assert cgroup_path(text) == path


def test_cgroup_path_of_a_v1_only_process():
    with pytest.raises(NotProtectable, match="no cgroup v2"):
        cgroup_path("4:memory:/user.slice\n1:name=systemd:/user.slice\n")


@pytest.mark.parametrize("path, chain", [
    ("/user.slice/user-2000.slice/session-3.scope", SESSION),
    ("/user.slice/user-2001.slice/session-c1.scope", BOB),
    # A desktop's app: below user@2000.service the cgroups are the user's manager's.
    ("/user.slice/user-2000.slice/user@2000.service/app.slice/app-gnome-matlab-42.scope", DESKTOP),
    ("/user.slice/user-2000.slice/user@2000.service/init.scope", DESKTOP),
])
def test_chain_of(path, chain):
    assert chain_of(path) == chain


@pytest.mark.parametrize("path, why", [
    ("/system.slice/cron.service", "system.slice is not a user's unit"),
    ("/user.slice/user-2000.slice/user-runtime-dir@2000.service",
     "user-runtime-dir@2000.service is not a user's unit"),
    ("/machine.slice/machine-x.scope", "machine.slice is not"),
    ("/init.scope", "init.scope is not"),
    ("/", "not in a session or user service"),
    ("/user.slice/user-2000.slice", "not in a session or user service"),
    ("/../payload", ".. is not"),          # outside our cgroup namespace
])
def test_chain_of_refuses(path, why):
    with pytest.raises(NotProtectable, match=why):
        chain_of(path)


# ---- what each unit should get ----

@pytest.mark.parametrize("borrowers, wanted", [
    ([], {}),
    ([Borrower("loan.1", SESSION, 640 * MiB)],
     {"user.slice": {MEMORY_MIN: 640 * MiB}, "user-2000.slice": {MEMORY_MIN: 640 * MiB},
      "session-3.scope": {MEMORY_MIN: 640 * MiB, OOM_PREFERENCE: "avoid"}}),
    # Two loans in one session: the sum, all the way up.
    ([Borrower("loan.1", SESSION, 64 * MiB), Borrower("loan.2", SESSION, 64 * MiB)],
     {"user.slice": {MEMORY_MIN: 128 * MiB}, "user-2000.slice": {MEMORY_MIN: 128 * MiB},
      "session-3.scope": {MEMORY_MIN: 128 * MiB, OOM_PREFERENCE: "avoid"}}),
    # Two users: their own units get their own loan, user.slice both.
    ([Borrower("loan.1", SESSION, 64 * MiB), Borrower("loan.2", BOB, 256 * MiB)],
     {"user.slice": {MEMORY_MIN: 320 * MiB}, "user-2000.slice": {MEMORY_MIN: 64 * MiB},
      "session-3.scope": {MEMORY_MIN: 64 * MiB, OOM_PREFERENCE: "avoid"},
      "user-2001.slice": {MEMORY_MIN: 256 * MiB},
      "session-c1.scope": {MEMORY_MIN: 256 * MiB, OOM_PREFERENCE: "avoid"}}),
    # One user in a session and on the desktop.
    ([Borrower("loan.1", SESSION, 64 * MiB), Borrower("loan.2", DESKTOP, 64 * MiB)],
     {"user.slice": {MEMORY_MIN: 128 * MiB}, "user-2000.slice": {MEMORY_MIN: 128 * MiB},
      "session-3.scope": {MEMORY_MIN: 64 * MiB, OOM_PREFERENCE: "avoid"},
      "user@2000.service": {MEMORY_MIN: 64 * MiB, OOM_PREFERENCE: "avoid"}}),
])
def test_wanted_settings(borrowers, wanted):
    assert wanted_settings(borrowers) == wanted


def test_units_without_base():
    wanted = wanted_settings([Borrower("loan.1", SESSION, MiB)])
    assert units_without_base(wanted, {}) == sorted(SESSION)
    assert units_without_base(wanted, {"user.slice": NONE}) == ["session-3.scope",
                                                                "user-2000.slice"]


# ---- from what was set to what is wanted ----

ONE = [Borrower("loan.1", SESSION, 64 * MiB)]
BASES = {"user.slice": NONE, "user-2000.slice": NONE, "session-3.scope": NONE_LEAF}
RAISED = [("user.slice", {MEMORY_MIN: 64 * MiB}), ("user-2000.slice", {MEMORY_MIN: 64 * MiB}),
          ("session-3.scope", {MEMORY_MIN: 64 * MiB, OOM_PREFERENCE: "avoid"})]
PUT_BACK = [("session-3.scope", NONE_LEAF), ("user-2000.slice", NONE),
            ("user.slice", NONE)]


@pytest.mark.parametrize("borrowers, bases, changes, kept", [
    # Nothing lent, nothing touched: nothing to do.
    ([], {}, [], {}),
    # A loan begins: outermost first, so the scope's protection is never cut by its slice.
    (ONE, BASES, RAISED, BASES),
    # It ends: every setting as it was, innermost first; nothing remembered.
    ([], BASES, PUT_BACK, {}),
    # The administrator's own protection stays, with the loan on top, and comes back after.
    (ONE, {**BASES, "user.slice": {MEMORY_MIN: 512 * MiB}},
     [("user.slice", {MEMORY_MIN: 576 * MiB}), *RAISED[1:]],
     {**BASES, "user.slice": {MEMORY_MIN: 512 * MiB}}),
    ([], {"session-3.scope": {MEMORY_MIN: MiB, OOM_PREFERENCE: "omit"}},
     [("session-3.scope", {MEMORY_MIN: MiB, OOM_PREFERENCE: "omit"})], {}),
    # MemoryMin=infinity stays infinity.
    (ONE, {**BASES, "user.slice": {MEMORY_MIN: UNLIMITED}},
     [("user.slice", {MEMORY_MIN: UNLIMITED}), *RAISED[1:]],
     {**BASES, "user.slice": {MEMORY_MIN: UNLIMITED}}),
    # bob's loan ends while alice's goes on: bob's units back, user.slice lowered.
    (ONE, {**BASES, "user-2001.slice": NONE, "session-c1.scope": NONE_LEAF},
     RAISED + [("session-c1.scope", NONE_LEAF), ("user-2001.slice", NONE)], BASES),
])
def test_plan(borrowers, bases, changes, kept):
    assert plan(wanted_settings(borrowers), bases) == (changes, kept)


def test_plan_needs_every_base():
    with pytest.raises(KeyError):
        plan(wanted_settings(ONE), {"user.slice": NONE})


# ---- which loans are protected ----

@pytest.mark.parametrize("loans, borrowers", [
    ([], []),
    ([("loan.1", SESSION, 64 * MiB)], [Borrower("loan.1", SESSION, 64 * MiB)]),
    # A list (as systemd's store keeps it) becomes a tuple; the order is kept.
    ([("loan.2", list(DESKTOP), MiB), ("loan.1", SESSION, 2 * MiB)],
     [Borrower("loan.2", DESKTOP, MiB), Borrower("loan.1", SESSION, 2 * MiB)]),
    # In no unit of a user's (chain None), or an empty chain: nothing to protect.
    ([("loan.1", None, MiB), ("loan.2", (), MiB), ("loan.3", BOB, MiB)],
     [Borrower("loan.3", BOB, MiB)]),
])
def test_borrowers_of(loans, borrowers):
    assert borrowers_of(loans) == borrowers
