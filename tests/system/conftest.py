"""The system tier: the checkout installed, as README.md says, in a booted container.

One container serves the whole session (boot about a second; building and
installing the package about 10 s), so tests must leave it as they found it:
stop their background jobs and restore any file they remove.
"""

import os
import shutil
from pathlib import Path

import pytest

from helpers import readme_install_command  # noqa: F401  (test_polkit_system and the benchmarks take it from here)
from nspawn import Container, sweep_stale

CHECKOUT = Path(__file__).resolve().parents[2]
SRC_IN_CONTAINER = "/opt/src"
# Ordinary users; uids from 2000 because the overlay shares the host's
# /etc/passwd, where 1000 is taken.
USERS = {"alice": 2000, "bob": 2001, "carol": 2002}
# alice is in the group holdingpen (the shipped polkit rule lets its members
# borrow from anywhere); bob and carol are not: they may borrow only from an
# active console session.
BORROWERS = ("alice",)

CONFIG_DIR = "/etc/holdingpen"
INSTALL_TIMEOUT_S = 600    # the build and apt, on a loaded 2-core machine



def platform_problem():
    """Why this machine cannot run the tier, or None."""
    if os.geteuid() != 0:
        return "system tests need root: they boot a container with systemd-nspawn"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn not found: apt-get install systemd-container"
    return None




def install_from_readme(container, checkout=SRC_IN_CONTAINER, check=True):
    """Run README.md's install command, as root, in checkout inside container."""
    command = readme_install_command(CHECKOUT / "README.md")
    return container.run(["sh", "-c", f"cd {checkout} && {command}"], check=check,
                         timeout_s=INSTALL_TIMEOUT_S)


def remove_config(container):
    """Remove /etc/holdingpen, as the tests expect no configuration at the start.

    They write the one they need. The package's file is all comments, the
    same as none (test_package_system checks that), and dpkg keeps a deleted
    conffile deleted.
    """
    container.run(["rm", "-r", CONFIG_DIR])


@pytest.fixture(scope="session")
def ct():
    """A booted container with holdingpen installed and users alice, bob, carol."""
    problem = platform_problem()
    if problem:
        pytest.skip(problem)
    try:
        readme_install_command(CHECKOUT / "README.md")
    except (LookupError, FileNotFoundError) as e:
        pytest.fail(str(e))
    sweep_stale()
    with Container(f"pt{os.getpid()}", binds=[f"{CHECKOUT}:{SRC_IN_CONTAINER}"]) as c:
        install_from_readme(c)
        remove_config(c)
        for name, uid in USERS.items():
            groups = ["-G", "holdingpen"] if name in BORROWERS else []
            c.run(["useradd", "-m", "-u", str(uid), *groups, name])
        yield c
