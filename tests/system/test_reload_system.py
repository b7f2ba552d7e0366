"""Reloads and the configuration, as an administrator meets them under real systemd.

`systemctl reload holdingpen` with a bad file fails and the journal says why,
while the daemon keeps its running configuration; a [[disk]] pool outside
/tmp and /var/tmp names the drop-in that makes it work. Each test leaves the
shared container as the installer left it: no config file, no drop-in, the
default pool, the daemon running.
"""

import json

import pytest

from daemonctl import SERVICE, events, journal, journal_mark, show, wait_for

CONFIG_DIR = "/etc/holdingpen"
CONFIG_PATH = f"{CONFIG_DIR}/holdingpen.toml"
DROP_IN_DIR = f"/etc/systemd/system/{SERVICE}.d"
DROP_IN_PATH = f"{DROP_IN_DIR}/srv.conf"
DEFAULT_STATUS_TEXT = "memory 1/1 held (256 MiB)"   # no config file
GOOD = '[memory]\nsize = "64M"\ncount = 2\n'
GOOD_STATUS_TEXT = "memory 2/2 held (128 MiB)"
POOL_DIR = "/srv/holdingpen"      # outside /tmp and /var/tmp, which alone the service may write
SRV = f'[memory]\nsize = "64M"\ncount = 1\n\n[[disk]]\npath = "{POOL_DIR}"\nsize = "1M"\ncount = 1\n'


def status(ct):
    return json.loads(ct.run(["holdingpen", "status", "--json"], user="carol").stdout)


def status_text(ct):
    return show(ct, "StatusText")["StatusText"]


def messages(entries):
    return [e["MESSAGE"] for e in entries if isinstance(e.get("MESSAGE"), str)]


@pytest.fixture
def config(ct):
    """write(text) puts the config file in place; afterwards: no file, no drop-in, the default pool."""
    assert not ct.path(CONFIG_PATH).exists(), f"{CONFIG_PATH} left by an earlier test"

    def write(text):
        ct.path(CONFIG_DIR).mkdir(exist_ok=True)
        ct.path(CONFIG_PATH).write_text(text)
    yield write
    ct.path(CONFIG_PATH).unlink(missing_ok=True)
    ct.run(["rm", "-rf", POOL_DIR])
    if ct.path(CONFIG_DIR).exists():
        ct.path(CONFIG_DIR).rmdir()
    if ct.path(DROP_IN_PATH).exists():
        ct.path(DROP_IN_PATH).unlink()
        ct.path(DROP_IN_DIR).rmdir()
        ct.run(["systemctl", "daemon-reload"])
    ct.run(["systemctl", "stop", SERVICE])          # empties the store: the default pool afresh
    ct.run(["systemctl", "reset-failed", SERVICE])
    ct.run(["systemctl", "start", SERVICE])
    wait_for("the default pool again", lambda: status_text(ct),
             lambda text: text == DEFAULT_STATUS_TEXT)


def test_the_units_point_at_our_documentation(ct):
    for unit in (SERVICE, "holdingpen.socket"):
        assert show(ct, "Documentation", unit=unit)["Documentation"] == \
            "file:/usr/share/doc/holdingpen/README.md"


# (what is wrong with the file, the line that says so)
BAD = [
    (GOOD.replace("2", '"many"'),
     f"{CONFIG_PATH}: memory.count: expected a whole number from 0 to 1024, not 'many'"),
    (GOOD + '[[disk]]\npath = "/srv/nowhere"\nsize = "1M"\n',
     f"{CONFIG_PATH}: disk[0].path: /srv/nowhere does not exist; create the directory or name "
     "one that exists"),
]


@pytest.mark.parametrize("text, problem", BAD)
def test_a_reload_with_a_bad_file_fails_says_why_and_keeps_the_running_config(ct, config, text,
                                                                              problem):
    main_pid = show(ct, "MainPID")["MainPID"]
    before = status(ct)["pools"]
    mark = journal_mark(ct)
    config(text)

    done = ct.run(["systemctl", "reload", SERVICE], check=False)

    assert done.returncode != 0, "systemctl reload said nothing was wrong"
    assert "holdingpen.service" in done.stderr
    said = messages(journal(ct, after=mark))
    assert f"holdingpen: {problem}" in said, said                    # the check, on its stderr
    assert f"reload refused, keeping the running configuration: {problem}" in said   # the daemon
    assert not any(m.startswith("Reloaded") for m in said), said
    assert any(m.startswith("Reload failed") for m in said), said
    assert "config-refused" in events(journal(ct, after=mark))
    wait_for("active again", lambda: show(ct, "ActiveState", "MainPID"),
             lambda svc: svc == {"ActiveState": "active", "MainPID": main_pid})
    assert status(ct)["pools"] == before
    check = ct.run(["holdingpen", "check"], check=False)
    assert (check.returncode, check.stderr) == (78, f"holdingpen: {problem}\n")


def test_a_reload_with_a_good_file_succeeds(ct, config):
    mark = journal_mark(ct)
    config(GOOD)

    ct.run(["systemctl", "reload", SERVICE])

    wait_for("the new pool", lambda: status_text(ct), lambda text: text == GOOD_STATUS_TEXT)
    said = messages(journal(ct, after=mark))
    assert f"holdingpen: {CONFIG_PATH} is good: memory 2 x 64 MiB" in said, said
    assert "reloaded" in events(journal(ct, after=mark))
    assert ct.run(["holdingpen", "check"]).stdout == \
        f"holdingpen: {CONFIG_PATH} is good: memory 2 x 64 MiB\n"


def test_a_disk_pool_outside_tmp_names_the_drop_in_that_fixes_it(ct, config):
    ct.run(["install", "-d", "-o", "holdingpen", "-m", "0700", POOL_DIR])
    config(SRV)
    ct.run(["systemctl", "reload", SERVICE])       # the directory exists: the file is good

    def pool():
        return next(p for p in status(ct)["pools"] if p["name"] == f"disk:{POOL_DIR}")
    short = wait_for(f"a shortfall on {POOL_DIR}", lambda: pool()["shortfall"])
    assert short == (f"cannot reserve space in {POOL_DIR}: Read-only file system; to let the "
                     "service write there, add a drop-in (systemctl edit holdingpen) with "
                     f"[Service] ReadWritePaths={POOL_DIR}, then systemctl restart holdingpen")

    # The fix it names, done as it says.
    ct.path(DROP_IN_DIR).mkdir(exist_ok=True)
    ct.path(DROP_IN_PATH).write_text(f"[Service]\nReadWritePaths={POOL_DIR}\n")
    ct.run(["systemctl", "daemon-reload"])
    ct.run(["systemctl", "restart", SERVICE])
    held = wait_for(f"the {POOL_DIR} pool held", pool,
                    lambda p: p["held"] == 1 and p["shortfall"] is None)
    assert held["count"] == 1
