"""Fixtures of the integration tier."""

import pytest

from lockjobs import Jobs


@pytest.fixture
def jobs(env):
    """Start real processes; any still running at the end are killed."""
    j = Jobs(env)
    yield j
    j.stop()
