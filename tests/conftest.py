"""Fixtures shared by every tier: the commands, as the installer writes them."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from holdingpen import install  # noqa: E402  (needs the path above)


@pytest.fixture(scope="session")
def bindir():
    """The commands: launchers as the package installs them, with the checkout first on sys.path.

    World-readable, so that tests can run them as other users too.
    """
    path = Path(tempfile.mkdtemp(prefix="holdingpen-bin."))
    path.chmod(0o755)
    install.write_launchers(path, REPO, sys.executable, install.entry_points(REPO))
    yield path
    for launcher in path.iterdir():
        launcher.unlink()
    path.rmdir()


@pytest.fixture
def shared_tmp():
    """A temporary directory every user may use (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="holdingpen-test."))
    path.chmod(0o1777)
    yield path
    import shutil
    shutil.rmtree(path)


@pytest.fixture
def lock(shared_tmp):
    """A fresh lock file, mode 0666 as tmpfiles.d makes /run/perflock."""
    path = shared_tmp / "perflock"
    path.touch()
    path.chmod(0o666)
    return path


@pytest.fixture
def env(bindir, lock):
    """The environment for running the commands against the test's lock file."""
    return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", PERFLOCK_LOCK=str(lock))


# ---- figures: what reliability tests reached, printed at the end of every run ----

_FIGURES = []


@pytest.fixture
def figure(request):
    """figure(text): a line about what this test reached, shown in the run's summary.

    e.g. figure("100 SIGKILLs: pool exact after each, 0 leaked reservations")
    """
    def record(text):
        _FIGURES.append(f"{request.node.nodeid}: {text}")
    return record


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("figures reached")
        for line in _FIGURES:
            terminalreporter.write_line(line)
