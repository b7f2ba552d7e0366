"""The README's install command: a Debian package, installed with apt and running.

Checks the session's container as conftest.py installed it, and leaves it so.
The package's whole life (upgrade, remove, purge) is test_package_system.py.
"""

import json

import pytest

from conftest import CONFIG_DIR, SRC_IN_CONTAINER, install_from_readme
from daemonctl import SERVICE, SOCKET, counts, show

COMMANDS = ["gatekeeper", "holdingpen", "perflock", "pls", "wholock"]
PACKAGED = [f"/usr/bin/{c}" for c in COMMANDS] + [
    "/lib/systemd/system/holdingpen.service",
    "/lib/systemd/system/holdingpen.socket",
    "/lib/systemd/system/holdingpen-lock-metrics.service",
    "/lib/systemd/system/holdingpen-lock-metrics.timer",
    "/usr/lib/tmpfiles.d/perflock.conf",
    "/usr/share/polkit-1/actions/org.holdingpen.borrow.policy",
    "/usr/share/polkit-1/rules.d/50-holdingpen.rules",
    "/usr/share/polkit-1/rules.d/60-holdingpen-protect.rules",
    "/etc/holdingpen/holdingpen.toml",
    "/usr/share/doc/holdingpen/README.md",     # Documentation= points here
    "/usr/lib/python3/dist-packages/holdingpen/cli/gatekeeper.py",
]


def test_installed_as_a_debian_package(ct):
    status = ct.run(["dpkg-query", "-W", "-f=${Status} ${Architecture}", "holdingpen"]).stdout
    assert status == "install ok installed all"
    listed = ct.run(["dpkg", "-L", "holdingpen"]).stdout.splitlines()
    assert set(PACKAGED) <= set(listed)
    assert not any(path.startswith("/usr/local") for path in listed)
    assert "/usr/lib/python3/dist-packages/holdingpen/install.py" not in listed
    conffiles = ct.run(["dpkg-query", "-W", "-f=${Conffiles}", "holdingpen"]).stdout
    assert conffiles.split()[0] == "/etc/holdingpen/holdingpen.toml"
    # apt took the libraries from Debian.
    depends = ct.run(["dpkg-query", "-W", "-f=${Depends}", "holdingpen"]).stdout
    for library in ("python3-psutil", "python3-systemd", "python3-jeepney", "polkitd"):
        assert library in depends
    assert not ct.path("/usr/local/lib/holdingpen").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_are_the_small_launchers_on_debians_python(ct, command):
    found = ct.run(["sh", "-c", f'readlink -f "$(command -v {command})"'], user="bob").stdout
    assert found == f"/usr/bin/{command}\n"      # /bin is /usr/bin on Debian 12
    launcher = ct.path(f"/usr/bin/{command}").read_text().splitlines()
    # Isolated mode, and nothing imported before the command's own module (start-up cost).
    assert launcher[0] == "#!/usr/bin/python3 -I"
    assert [line for line in launcher if line.startswith(("import", "from"))][0] == "import sys"
    assert ct.run([command, "--help"], user="bob").returncode == 0


def test_units_enabled_and_running_with_the_pool_held(ct):
    for unit in (SOCKET, SERVICE):
        assert ct.run(["systemctl", "is-enabled", unit]).stdout.strip() == "enabled"
        assert ct.run(["systemctl", "is-active", unit]).stdout.strip() == "active"
    assert show(ct, "FragmentPath")["FragmentPath"] == "/lib/systemd/system/holdingpen.service"
    assert show(ct, "ExecStart")["ExecStart"].startswith("{ path=/usr/bin/holdingpen ;")
    reply = json.loads(ct.run(["holdingpen", "status", "--json"]).stdout)
    assert counts(reply) == {"memory": (1, 1, 0)}
    assert show(ct, "NFileDescriptorStore")["NFileDescriptorStore"] != "0"


def test_perflock_lock_and_accounts_made_at_install(ct):
    assert ct.run(["stat", "-c", "%a %U", "/run/perflock", "/run/perflock.d"]).stdout == \
        "666 root\n1777 root\n"
    user = ct.run(["getent", "passwd", "holdingpen"]).stdout.strip().split(":")
    assert int(user[2]) < 1000 and user[6] == "/usr/sbin/nologin"    # a system user
    group = ct.run(["getent", "group", "holdingpen"]).stdout.strip().split(":")
    assert int(group[2]) < 1000 and "alice" in group[3].split(",")
    # polkitd keeps its rules private; the package's directory must not open them up.
    assert ct.run(["stat", "-c", "%a %U", "/usr/share/polkit-1/rules.d"]).stdout == "700 polkitd\n"


def test_installing_again_restarts_the_daemon_keeping_the_pool(ct):
    before = show(ct, "MainPID", "NFileDescriptorStore")
    done = install_from_readme(ct)
    assert done.stdout.endswith("holdingpen is installed and running\n")
    after = show(ct, "MainPID", "NFileDescriptorStore")
    assert after["MainPID"] != before["MainPID"]
    assert after["NFileDescriptorStore"] == before["NFileDescriptorStore"]
    assert counts(json.loads(ct.run(["holdingpen", "status", "--json"]).stdout)) == \
        {"memory": (1, 1, 0)}
    # conftest deleted the conffile; dpkg keeps it deleted, as an admin
    # would wish, and only makes its directory again, which we remove.
    assert list(ct.path(CONFIG_DIR).iterdir()) == []
    ct.path(CONFIG_DIR).rmdir()
    assert ct.run(["perflock", "-n", "true"], user="alice").returncode == 0


def test_install_needs_root(ct):
    done = ct.run(["sh", "-c", f"cd {SRC_IN_CONTAINER} && python3 -m holdingpen.install"],
                  user="bob", check=False)
    assert done.returncode == 77
    assert done.stderr == ("holdingpen.install: must run as root: "
                           "sudo python3 -m holdingpen.install\n")


@pytest.mark.parametrize("args, message", [
    (["--frobnicate"], "usage: python3 -m holdingpen.install   (remove: apt remove holdingpen)\n"),
    (["--uninstall"], "holdingpen.install: holdingpen is a Debian package now: remove it with "
                      "'apt remove holdingpen' (keeps /etc/holdingpen) or 'apt purge holdingpen'\n"),
])
def test_install_usage(ct, args, message):
    done = ct.run(["sh", "-c", f"cd {SRC_IN_CONTAINER} && python3 -m holdingpen.install "
                   f"{' '.join(args)}"], check=False)
    assert (done.returncode, done.stderr) == (64, message)
