"""How `./scripts/test` spreads the suite over pytest-xdist workers (`-n N --dist loadgroup`).

A unit of work is a whole test module (so a module's fixtures are made once, on one worker),
or an `xdist_group`: every test marked `pytest.mark.xdist_group("NAME")`, whatever its
module, runs on one worker, one after the other (e.g. "sudo": the tests that change the
machine-wide password of the test hosts' login user). Units start longest first, so that
no long module is left to run alone at the end; a module's weight is its measured run time
below (seconds under load, set-up included), or a guess by its directory for a new one.

Imported only by tests/conftest.py's `pytest_xdist_make_scheduler` when xdist is loaded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling
from xdist.workermanage import WorkerController

# Seconds per module (set-up included, from the JUnit XML of a full run with 3 workers on 2
# cores that other suites kept busy; modules under 15 s left out): only the order matters,
# so an old figure does little harm. Refresh when a module grows a lot.
MEASURED: dict[str, float] = {
    "tests/integration/test_docs.py": 494,
    "tests/integration/test_frontends.py": 353,
    "tests/integration/test_jobs_e2e.py": 272,
    "tests/registry/test_containment_registry.py": 268,
    "tests/integration/test_deploy.py": 256,
    "tests/integration/test_testbed.py": 214,
    "tests/registry/test_agent.py": 194,
    "tests/integration/test_releases.py": 189,
    "tests/registry/test_registry.py": 150,
    "tests/registry/test_registry_e2e.py": 138,
    "tests/integration/test_daemon.py": 118,
    "tests/integration/test_interrupt.py": 114,
    "tests/integration/test_models.py": 109,
    "tests/integration/test_security_review.py": 104,
    "tests/integration/test_exec_parity.py": 99,
    "tests/integration/test_exec.py": 97,
    "tests/integration/test_copy_fetch.py": 97,
    "tests/registry/test_registry_cli.py": 94,
    "tests/integration/test_output_formats.py": 83,
    "tests/integration/test_deploy_diff.py": 82,
    "tests/integration/test_bootstrap.py": 82,
    "tests/integration/test_selection_cli.py": 76,
    "tests/integration/test_secrets.py": 68,
    "tests/integration/test_fab_hosts.py": 65,
    "tests/integration/test_jobs_dispatch.py": 64,
    "tests/integration/test_models_hostile.py": 56,
    "tests/unit/test_completion.py": 52,
    "tests/integration/test_retry_failed.py": 50,
    "tests/integration/test_models_routing.py": 43,
    "tests/registry/test_jobs_queue.py": 38,
    "tests/unit/test_config.py": 35,
    "tests/scripts/test_daemon_script.py": 34,
    "tests/integration/test_fab_journal.py": 31,
    "tests/scripts/test_scripts.py": 29,
    "tests/unit/test_nodes.py": 27,
    "tests/integration/test_logs.py": 20,
    "tests/integration/test_ssh_config.py": 18,
    "tests/unit/test_jobs_dispatcher.py": 18,
    "tests/unit/test_jobs_node.py": 17,
    "tests/integration/test_jobs_node.py": 17,
    "tests/integration/test_transfers.py": 16,
}

# A new module's weight until it is measured: integration modules wait on real hosts.
BY_DIRECTORY = {"tests/integration/": 30.0, "tests/registry/": 10.0, "tests/scripts/": 5.0}
OTHER = 1.0


def module_weight(module: str, tests: int) -> float:
    """The expected run time of a module (its path) with `tests` tests in this run."""
    if module in MEASURED:
        return MEASURED[module]
    guess = next((w for prefix, w in BY_DIRECTORY.items() if module.startswith(prefix)), OTHER)
    return guess + 0.01 * tests  # among equals, the module with more tests first


def unit_weight(nodeids: Iterable[str]) -> float:
    """A unit's expected run time: its modules' (a group may span several)."""
    modules = Counter(nodeid.split("::", 1)[0] for nodeid in nodeids)
    return sum(module_weight(module, tests) for module, tests in modules.items())


class ModuleScheduling(LoadGroupScheduling):  # type: ignore[misc]  # xdist is untyped
    """loadgroup, with a module as the default group and the longest units first."""

    def __init__(self, config: pytest.Config, log: Any | None = None) -> None:
        super().__init__(config, log)
        self._ordered = False

    def _split_scope(self, nodeid: str) -> str:
        if nodeid.rfind("@") > nodeid.rfind("]"):  # `test_x[param]@group`: an xdist_group
            return nodeid.rsplit("@", 1)[-1]
        return nodeid.split("::", 1)[0]

    def _assign_work_unit(self, node: WorkerController) -> None:
        # The work queue is complete before the first unit goes out (schedule() fills it,
        # then assigns): order it once, heaviest first.
        if not self._ordered:
            self._ordered = True
            units = sorted(self.workqueue.items(), key=lambda kv: -unit_weight(kv[1]))
            self.workqueue.clear()
            self.workqueue.update(units)
        super()._assign_work_unit(node)
