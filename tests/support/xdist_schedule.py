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

from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling
from xdist.workermanage import WorkerController

# Seconds per unit in a full run with 3 workers on 2 busy cores (from its JUnit XML):
# only the order matters, so an old figure does no harm; refresh when a module grows a lot.
MEASURED: dict[str, float] = {}

# A new module's weight until it is measured: integration modules wait on real hosts.
BY_DIRECTORY = {"tests/integration/": 30.0, "tests/registry/": 10.0, "tests/scripts/": 5.0}
OTHER = 1.0


def weight(scope: str, tests: int) -> float:
    """The expected run time of a unit (a module path or a group name)."""
    if scope in MEASURED:
        return MEASURED[scope]
    guess = next((w for prefix, w in BY_DIRECTORY.items() if scope.startswith(prefix)), OTHER)
    return guess + 0.01 * tests  # among equals, the unit with more tests first


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
            units = sorted(self.workqueue.items(), key=lambda kv: -weight(kv[0], len(kv[1])))
            self.workqueue.clear()
            self.workqueue.update(units)
        super()._assign_work_unit(node)
