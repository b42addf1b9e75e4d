"""Shared fixtures: real test hosts (skeleton_app.testing.testbed) and the settings that reach them.

    testbed        session-wide, 6 hosts (node-01..node-06); every test may use it, and a
                   test that breaks a host must restore it (the fault injectors all undo)
    make_testbed   factory for a test's own extra testbed: make_testbed(2, db=True)
    settings       load_config() of the session testbed's config.yaml, environment ignored
    node_python    the session hosts' own `app/.venv/bin/python`, made once by
                   `cluster bootstrap` (what a test's real daemon runs with)

Each testbed claims a free instance (its own subnet, bridge and namespace names) and a fresh
state dir, so suites running side by side, inside or outside a containing namespace, never
collide. Teardown always goes through `testbed.down()`, also when a test fails.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skeleton_app.config import Settings, load_config
from skeleton_app.testing import localdb
from skeleton_app.testing import testbed as tb_mod
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import bootstrap_testbed

pytest_plugins = ["tests.support.db_fixtures"]  # PostgreSQL: postgres, db_dsn, registry, ...

SESSION_HOSTS = 6


@pytest.fixture(scope="session", autouse=True)
def _own_cache_dir() -> Iterator[Path]:
    """The deploy hash cache of this session's many temporary trees (and the last-run
    state file) go to a directory of the session's own, not to the user's ~/.cache and
    ~/.local/state; the CLI subprocesses inherit it. It also keeps the hosts' first
    bootstrapped .venv (bootstrap_testbed) and, in a directory PostgreSQL may traverse, one
    initdb result that every new throwaway PostgreSQL of the session copies (localdb's
    $SKELETON_PG_TEMPLATE_DIR)."""
    with tempfile.TemporaryDirectory(prefix="skeleton-cache-") as tmp, \
            tempfile.TemporaryDirectory(prefix="skeleton-pg-template-", dir="/tmp") as pg_tmp:
        Path(pg_tmp).chmod(0o755)
        mp = pytest.MonkeyPatch()
        mp.setenv("XDG_CACHE_HOME", tmp)
        mp.setenv("XDG_STATE_HOME", tmp)  # the last-run file of `--node @failed`
        mp.setenv(localdb.TEMPLATE_ENV, pg_tmp)
        # Warm mode's keeper (skeleton_app/keeper) never lands in the user's runtime dir.
        (Path(tmp) / "run").mkdir(mode=0o700)
        mp.setenv("XDG_RUNTIME_DIR", str(Path(tmp) / "run"))
        yield Path(tmp)
        mp.undo()


def _fresh_state_dir() -> Path:
    # Directly under /tmp, not pytest's tmp_path (mode 0700 under /tmp/pytest-of-root):
    # PostgreSQL runs as `postgres` inside it and must be able to traverse it.
    path = Path(tempfile.mkdtemp(prefix="skeleton-testbed-pytest-", dir="/tmp"))
    path.chmod(0o755)
    return path


def _up(count: int | None, **kwargs: Any) -> Testbed:
    state_dir = _fresh_state_dir()
    try:
        # instance=None: claim a free one; the bridge is created atomically, so two suites
        # starting at the same moment get different instances.
        bed = tb_mod.up(count, instance=None, state_dir=state_dir, **kwargs)
        # No keeper in the suite (ssh.persist 0): many tests break hosts or count handshakes,
        # and a keeper living across tests would make one test's result depend on the last.
        # tests/integration/test_keeper.py turns it on in configs of its own.
        text = bed.config_path.read_text()
        bed.config_path.write_text(text.replace("\nssh:\n", "\nssh:\n  persist: 0\n", 1))
        return bed
    except BaseException:
        # `up` cleans up after itself; only our empty directory may remain.
        if state_dir.is_dir() and not any(state_dir.iterdir()):
            state_dir.rmdir()
        raise


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    """Six real SSH hosts for the whole session (needs root: fails clearly without)."""
    bed = _up(SESSION_HOSTS)
    try:
        yield bed
    finally:
        tb_mod.down(bed.state_dir, instance=bed.instance)


@pytest.fixture
def make_testbed() -> Iterator[Callable[..., Testbed]]:
    """A factory for testbeds owned by one test: `make_testbed(2, rate="50mbit", db=True)`."""
    made: list[Testbed] = []

    def make(count: int | None = None, **kwargs: Any) -> Testbed:
        if count is None and not kwargs.get("names"):
            count = 2  # small: a test's own testbed is about up/down, not about scale
        bed = _up(count, **kwargs)
        made.append(bed)
        return bed

    try:
        yield make
    finally:
        errors: list[Exception] = []
        for bed in reversed(made):
            try:
                tb_mod.down(bed.state_dir, instance=bed.instance)
            except Exception as exc:  # tear the others down too, then report the first
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def settings(testbed: Testbed) -> Settings:
    """The session testbed's config, exactly as `--config STATE/config.yaml` would load it,
    with no SKELETON_* variables from the developer's environment leaking in."""
    return load_config(testbed.config_path, env={})


@pytest.fixture(scope="session")
def node_python(testbed: Testbed) -> str:
    """The session hosts' own virtualenv Python, bootstrapped once for the session."""
    return bootstrap_testbed(testbed)


# Markers by what a test needs (registered in pyproject.toml), so `pytest -m "not root"` runs
# the part that needs no namespaces or sshd hosts in seconds.
_ROOT_FIXTURES = {"testbed", "make_testbed", "settings", "node_python"}
_PG_FIXTURES = {"postgres", "make_postgres", "empty_dsn", "db_dsn", "registry",
                "schema_template"}
_ROOT_DIRS = {"integration"}
_PG_DIRS = {"registry"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = set(Path(str(item.path)).relative_to(Path(__file__).parent).parts[:-1])
        fixtures = set(getattr(item, "fixturenames", ()))
        if parts & _ROOT_DIRS or fixtures & _ROOT_FIXTURES:
            item.add_marker(pytest.mark.root)
        if parts & _PG_DIRS or fixtures & _PG_FIXTURES:
            item.add_marker(pytest.mark.postgres)
