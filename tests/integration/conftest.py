"""Fixtures of the integration tier."""

import pytest

from lockjobs import Jobs
from pen import start_pen


@pytest.fixture
def jobs(env):
    """Start real processes; any still running at the end are killed."""
    j = Jobs(env)
    yield j
    j.stop()


@pytest.fixture
def pen(request, bindir, shared_tmp):
    """A Holding Pen daemon by hand, its pools full: write_config(**PEN_CONFIG) of the
    test's module (start_pen); it must stop cleanly at the end."""
    p = start_pen(bindir, shared_tmp, **getattr(request.module, "PEN_CONFIG", {}))
    yield p
    assert p.stop() == 0
