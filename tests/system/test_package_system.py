"""The Debian package's life on one machine: install, upgrade, remove, purge.

A container of its own (the session's one must stay installed), and the
steps in file order, each starting where the one before left the machine.
"""

import json
import os
import subprocess
import time

import pytest

from holdingpen import install

from conftest import (CHECKOUT, INSTALL_TIMEOUT_S, SRC_IN_CONTAINER, install_from_readme,
                      platform_problem)
from daemonctl import SERVICE, SOCKET, borrowing, counts, show, wait_for
from nspawn import Container

CONFIG = "/etc/holdingpen/holdingpen.toml"
BAD_CONFIG = '[memory]\nsize = "lots"\n'
UPGRADE_SRC = "/tmp/holdingpen-upgrade"
# Where the package, its scripts and systemd on its behalf write. Not all of
# / : the container's lower layer is the live host, which others change.
COMPARED = ["/etc", "/lib/systemd", "/usr/bin", "/usr/sbin", "/usr/lib/python3",
            "/usr/lib/tmpfiles.d", "/usr/share/doc", "/usr/share/polkit-1", "/usr/local",
            "/var/lib", "/run"]
# Left out: dpkg's and apt's own records (dpkg-query checks those), systemd's
# and journald's runtime state, adduser's lock file (adduser leaves it), and
# agetty's note that it should reread /etc/issue (written on its own time).
NOT_COMPARED = ["/var/lib/apt", "/var/lib/dpkg", "/var/lib/PackageKit", "/var/lib/systemd/timers",
                "/var/lib/systemd/random-seed", "/run/systemd", "/run/user", "/run/log",
                "/run/udev", "/run/dbus", "/run/utmp", "/run/adduser", "/run/agetty.reload"]


@pytest.fixture(scope="module")
def machine():
    """A booted container without holdingpen, and what its file system held then."""
    problem = platform_problem()
    if problem:
        pytest.skip(problem)
    with Container(f"pkg{os.getpid()}", binds=[f"{CHECKOUT}:{SRC_IN_CONTAINER}"]) as c:
        yield c, file_system(c)


def file_system(ct):
    """Every path under COMPARED, with its type, mode and owner."""
    prune = " -o ".join(f"-path {p}" for p in NOT_COMPARED)
    out = ct.run(["sh", "-c", f"find {' '.join(COMPARED)} \\( {prune} \\) -prune -o "
                  "-printf '%p %y %m %u %g\\n'"], timeout_s=120).stdout
    return set(out.splitlines())


def package_status(ct):
    return ct.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "holdingpen"],
                  check=False).stdout


def status(ct):
    return json.loads(ct.run(["holdingpen", "status", "--json"]).stdout)


def test_install_the_readme_way(machine, figure):
    ct, _ = machine
    start = time.monotonic()
    install_from_readme(ct)
    figure(f"build and install of the package in a container: {time.monotonic() - start:.1f} s")
    assert package_status(ct).startswith("install ok installed ")
    for unit in (SOCKET, SERVICE):
        assert ct.run(["systemctl", "is-enabled", unit]).stdout == "enabled\n"
        assert ct.run(["systemctl", "is-active", unit]).stdout == "active\n"
    assert counts(status(ct)) == {"memory": (1, 1, 0)}
    assert ct.path("/run/perflock").is_file()
    assert ct.run(["getent", "passwd", "holdingpen"]).returncode == 0
    assert ct.run(["getent", "group", "holdingpen"]).returncode == 0


def test_shipped_configuration_is_the_defaults(machine):
    ct, _ = machine
    shipped = ct.path(CONFIG).read_text()
    assert all(line == "" or line.startswith("#") for line in shipped.splitlines())
    assert ct.run(["systemctl", "status", "--no-pager", SERVICE],
                  check=False).stdout.count("memory 1/1 held (256 MiB)") == 1


def test_upgrade_keeps_the_pool_and_every_loan(machine):
    ct, _ = machine
    version = package_status(ct).split()[-1]
    # A newer checkout: this one, with a higher version at the top of the changelog.
    ct.run(["cp", "-r", SRC_IN_CONTAINER, UPGRADE_SRC])
    ct.run(["sed", "-i", f"1s/({version})/({version}+1)/", f"{UPGRADE_SRC}/debian/changelog"])
    # ... in which the package was built already, as README.md's fleet recipe does.
    ct.run(["sh", "-c", f"cd {UPGRADE_SRC} && PATH=/usr/sbin:/usr/bin:/sbin:/bin "
            "dpkg-buildpackage -b --no-sign >/dev/null"], timeout_s=INSTALL_TIMEOUT_S)
    with borrowing(ct, "root") as job:
        assert counts(status(ct)) == {"memory": (1, 0, 1)}
        before = show(ct, "MainPID", "NFileDescriptorStore")
        socket_since = show(ct, "ActiveEnterTimestampMonotonic", unit=SOCKET)
        install_from_readme(ct, UPGRADE_SRC)
        assert package_status(ct) == f"install ok installed {version}+1"
        after = show(ct, "MainPID", "NFileDescriptorStore")
        assert after["MainPID"] != before["MainPID"]            # restarted on the new code,
        assert after["NFileDescriptorStore"] == before["NFileDescriptorStore"]  # nothing lost
        assert show(ct, "ActiveEnterTimestampMonotonic", unit=SOCKET) == socket_since
        reply = status(ct)
        assert counts(reply) == {"memory": (1, 0, 1)}
        assert [loan["pid"] for loan in reply["loans"]] == [job.pid]
        assert job.proc.poll() is None
    # The loan ends after the upgrade: the new daemon makes the reservation again.
    wait_for("the pool whole again", lambda: counts(status(ct)), lambda c: c == {"memory": (1, 1, 0)})


@pytest.mark.parametrize("how", ["installer", "postinst"])
def test_bad_configuration_stops_the_upgrade_before_any_restart(machine, how):
    # Needs `holdingpen check` (exit 78 and one line naming file, key and fix).
    ct, _ = machine
    shipped = ct.path(CONFIG).read_text()
    main_pid = show(ct, "MainPID")["MainPID"]
    version = package_status(ct).split()[-1]
    ct.path(CONFIG).write_text(BAD_CONFIG)
    try:
        if how == "installer":
            done = install_from_readme(ct, check=False)
        else:
            done = ct.run(["/var/lib/dpkg/info/holdingpen.postinst", "configure", version],
                          check=False)
        assert done.returncode != 0
        assert CONFIG in done.stderr and "memory.size" in done.stderr
        assert show(ct, "MainPID")["MainPID"] == main_pid        # not restarted on it
        assert package_status(ct) == f"install ok installed {version}"
    finally:
        ct.path(CONFIG).write_text(shipped)
        if show(ct, "MainPID")["MainPID"] != main_pid:
            ct.run(["systemctl", "restart", SERVICE], check=False)


def test_remove_stops_everything_and_keeps_the_configuration(machine):
    ct, _ = machine
    config = ct.path(CONFIG).read_text()
    ct.run(["apt-get", "remove", "-y", "-q", "holdingpen"], timeout_s=300)
    assert package_status(ct).startswith("deinstall ok config-files ")
    assert ct.path(CONFIG).read_text() == config
    for unit in (SOCKET, SERVICE):
        assert ct.run(["systemctl", "is-active", unit], check=False).stdout == "inactive\n"
        assert not ct.path(f"/lib/systemd/system/{unit}").exists()
    assert not ct.path("/run/holdingpen.socket").exists()
    assert ct.run(["sh", "-c", "command -v gatekeeper perflock"], check=False).stdout == ""
    # A job may still hold the machine lock: it stays until purge or the next boot.
    assert ct.path("/run/perflock").is_file()


def test_purge_leaves_nothing_but_the_accounts(machine):
    ct, before = machine
    ct.run(["apt-get", "purge", "-y", "-q", "holdingpen"], timeout_s=300)
    assert ct.run(["dpkg-query", "-W", "holdingpen"], check=False).returncode != 0
    after = file_system(ct)
    assert (sorted(after - before), sorted(before - after)) == ([], [])
    # Debian keeps system accounts: files and rules may still name them.
    assert ct.run(["getent", "passwd", "holdingpen"]).returncode == 0
    assert ct.run(["getent", "group", "holdingpen"]).returncode == 0


@pytest.fixture
def fresh_machine():
    problem = platform_problem()
    if problem:
        pytest.skip(problem)
    with Container(f"new{os.getpid()}", binds=[f"{CHECKOUT}:{SRC_IN_CONTAINER}"]) as c:
        yield c


def test_a_borrowers_group_made_beforehand_is_kept(fresh_machine):
    ct = fresh_machine
    # An ordinary group, as an administrator makes one for the borrowers.
    ct.run(["groupadd", "-g", "3000", "holdingpen"])
    ct.run(["useradd", "-m", "-u", "2000", "-G", "holdingpen", "alice"])
    install_from_readme(ct)
    assert ct.run(["getent", "group", "holdingpen"]).stdout == "holdingpen:x:3000:alice\n"
    assert ct.run(["systemctl", "is-active", SERVICE]).stdout == "active\n"


# A machine as the installer of earlier versions left it: a copy of the
# package and launchers in /usr/local, its units enabled and running.
OLD_LIBDIR = "/usr/local/lib/holdingpen"
OLD_FILES = ["/usr/local/bin/gatekeeper", "/usr/local/bin/holdingpen", "/usr/local/bin/perflock",
             "/usr/local/bin/pls", "/usr/local/bin/wholock",
             "/usr/local/lib/systemd/system/holdingpen.service",
             "/usr/local/lib/systemd/system/holdingpen.socket",
             "/usr/local/lib/tmpfiles.d/perflock.conf",
             "/usr/share/polkit-1/actions/org.holdingpen.borrow.policy",
             "/usr/share/polkit-1/rules.d/50-holdingpen.rules"]
OLD_INSTALL = f"""set -e
mkdir -p {OLD_LIBDIR}/release.1 /usr/local/lib/systemd/system /usr/local/lib/tmpfiles.d
cp -r {SRC_IN_CONTAINER}/holdingpen {OLD_LIBDIR}/release.1/
ln -s release.1 {OLD_LIBDIR}/current
cd {SRC_IN_CONTAINER}
python3 -c 'from holdingpen import install as i; i.write_launchers("/usr/local/bin", "{OLD_LIBDIR}/current", "/usr/bin/python3", i.entry_points("."))'
sed 's|^ExecStart=.*|ExecStart=/usr/local/bin/holdingpen serve|' units/holdingpen.service \
    > /usr/local/lib/systemd/system/holdingpen.service
cp units/holdingpen.socket /usr/local/lib/systemd/system/
cp tmpfiles.d/perflock.conf /usr/local/lib/tmpfiles.d/
cp polkit/*.policy /usr/share/polkit-1/actions/
cp polkit/*.rules /usr/share/polkit-1/rules.d/
printf '%s\n' {' '.join(OLD_FILES)} > {OLD_LIBDIR}/MANIFEST
groupadd --system holdingpen
useradd --system --gid nogroup --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin holdingpen
systemd-tmpfiles --create /usr/local/lib/tmpfiles.d/perflock.conf
systemctl daemon-reload
systemctl enable --now holdingpen.socket holdingpen.service
"""


@pytest.fixture
def old_machine():
    problem = platform_problem()
    if problem:
        pytest.skip(problem)
    with Container(f"old{os.getpid()}", binds=[f"{CHECKOUT}:{SRC_IN_CONTAINER}"]) as c:
        c.run(["sh", "-c", OLD_INSTALL])
        yield c


def test_an_old_installation_moves_over_keeping_its_loans(old_machine):
    ct = old_machine
    assert show(ct, "FragmentPath")["FragmentPath"] == \
        "/usr/local/lib/systemd/system/holdingpen.service"
    with borrowing(ct, "root") as job:
        before = show(ct, "MainPID", "NFileDescriptorStore")
        install_from_readme(ct)
        after = show(ct, "MainPID", "NFileDescriptorStore", "FragmentPath", "ExecStart")
        assert after["FragmentPath"] == "/lib/systemd/system/holdingpen.service"
        assert after["ExecStart"].startswith("{ path=/usr/bin/holdingpen ;")
        assert after["MainPID"] != before["MainPID"]
        assert after["NFileDescriptorStore"] == before["NFileDescriptorStore"]
        reply = status(ct)
        assert counts(reply) == {"memory": (1, 0, 1)}
        assert [loan["pid"] for loan in reply["loans"]] == [job.pid]
    left = ct.run(["find", "/usr/local", "-name", "*holdingpen*", "-o", "-name", "perflock*",
                   "-o", "-name", "gatekeeper", "-o", "-name", "pls", "-o", "-name", "wholock"])
    assert left.stdout == ""
    links = ct.run(["sh", "-c", "readlink /etc/systemd/system/*.wants/holdingpen.*"]).stdout
    assert sorted(links.split()) == ["/lib/systemd/system/holdingpen.service",
                                     "/lib/systemd/system/holdingpen.socket"]
    wait_for("the pool whole again", lambda: counts(status(ct)), lambda c: c == {"memory": (1, 1, 0)})


def test_lintian_finds_nothing_wrong(tmp_path, figure):
    problem = platform_problem()
    if problem:
        pytest.skip(problem)
    start = time.monotonic()
    deb = install.build(CHECKOUT, tmp_path)
    figure(f"dpkg-buildpackage of the package: {time.monotonic() - start:.1f} s")
    # Errors and warnings; each warning we accept is overridden, with its
    # reason, in debian/holdingpen.lintian-overrides.
    done = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)],
                          capture_output=True, text=True, env=install.ENV)
    tags = [line for line in done.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert (done.returncode, tags) == (0, [])
