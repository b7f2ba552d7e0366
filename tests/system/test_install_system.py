"""The README's install command: idempotent, and undone by --uninstall.

Runs before the perflock tests (file order) and leaves the container
installed as it found it.
"""

import pytest

from conftest import CHECKOUT, SRC_IN_CONTAINER, readme_install_command

COMMANDS = [f"/usr/local/bin/{c}" for c in ("gatekeeper", "holdingpen", "perflock", "pls", "wholock")]
UNITS = [f"/usr/local/lib/systemd/system/{u}" for u in (
    "holdingpen.service", "holdingpen.socket",
    "holdingpen-lock-metrics.service", "holdingpen-lock-metrics.timer")]
POLKIT = ["/usr/share/polkit-1/actions/org.holdingpen.borrow.policy",
          "/usr/share/polkit-1/rules.d/50-holdingpen.rules",
          "/usr/share/polkit-1/rules.d/60-holdingpen-protect.rules"]
LIBDIR = "/usr/local/lib/holdingpen"
TMPFILES = "/usr/local/lib/tmpfiles.d/perflock.conf"


def install(ct, *args):
    command = " ".join([readme_install_command(CHECKOUT / "README.md"), *args])
    return ct.run(["sh", "-c", f"cd {SRC_IN_CONTAINER} && {command}"])


def manifest(ct):
    return ct.path(f"{LIBDIR}/MANIFEST").read_text().split()


def test_installing_again_updates_in_place(ct):
    before = sorted(manifest(ct))
    release = ct.run(["readlink", f"{LIBDIR}/current"]).stdout.strip()
    install(ct)
    assert sorted(manifest(ct)) == before
    assert sorted(before) == sorted(COMMANDS + UNITS + POLKIT + [TMPFILES])
    # A new release replaced the old one, which is gone.
    assert ct.run(["readlink", f"{LIBDIR}/current"]).stdout.strip() != release
    assert ct.run(["sh", "-c", f"ls {LIBDIR}"]).stdout.split() == \
        ["MANIFEST", "current", ct.run(["readlink", f"{LIBDIR}/current"]).stdout.strip()]
    assert ct.run(["perflock", "-n", "true"], user="alice").returncode == 0


def test_uninstall_removes_every_installed_file(ct):
    installed = manifest(ct)
    try:
        done = install(ct, "--uninstall")
        assert "holdingpen is uninstalled" in done.stdout
        for path in installed + [LIBDIR]:
            assert not ct.path(path).exists(), f"{path} is left after --uninstall"
        missing = ct.run(["perflock", "true"], user="alice", check=False)
        assert missing.returncode == 127      # the shell: command not found
    finally:
        install(ct)
    assert ct.run(["perflock", "-n", "true"], user="alice").returncode == 0


def test_install_needs_root(ct):
    done = ct.run(["sh", "-c", f"cd {SRC_IN_CONTAINER} && python3 -m holdingpen.install"],
                  user="bob", check=False)
    assert done.returncode == 77
    assert done.stderr == ("holdingpen.install: must run as root: "
                           "sudo python3 -m holdingpen.install\n")


@pytest.mark.parametrize("args", [["--frobnicate"], ["uninstall"]])
def test_install_usage(ct, args):
    done = ct.run(["sh", "-c", f"cd {SRC_IN_CONTAINER} && python3 -m holdingpen.install {' '.join(args)}"],
                  check=False)
    assert done.returncode == 64
    assert done.stderr.startswith("usage: python3 -m holdingpen.install [--uninstall]")
