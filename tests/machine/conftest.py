"""The machine tier: the checkout installed, as README.md says, in a throw-away
Debian 12 VM (qemu, 2 CPUs, 3 GiB, 2 GiB swap), and the console user's big
program run under gatekeeper beside another user's thrashing job.

One boot serves the whole tier; the guest measures, the tests here assert.
"""

from pathlib import Path

import pytest

import vm

CHECKOUT = Path(__file__).resolve().parents[2]
SCENARIOS = vm.TIER_SCENARIOS
# Boot + install + three scenarios take about 10 minutes under TCG on a busy
# 2-core host; past this qemu is killed and the tier fails.
VM_TIMEOUT_S = 1800


@pytest.fixture(scope="session")
def machine(request):
    """The Outcome of one VM run of SCENARIOS (image built first if not cached)."""
    problem = vm.platform_problem()
    if problem:
        pytest.skip(problem)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")

    def log(text):
        if reporter:
            reporter.write_line(text)
    try:
        return vm.run_scenarios(CHECKOUT, SCENARIOS, VM_TIMEOUT_S, log=log)
    except (vm.VMError, LookupError) as e:
        pytest.fail(str(e))
