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

Parallel runs: `./scripts/test` runs pytest-xdist (`-n 3 --dist loadgroup`; `-n 0` or
`-p no:xdist` for one process, e.g. under a debugger). Every worker is a pytest session of
its own: its own `testbed` (own instance, subnet, bridge, state dir), `postgres`, cache and
state dirs ($XDG_CACHE_HOME, $XDG_STATE_HOME); they share only what is safe to share (the
hosts' first bootstrapped .venv and the initdb template, in the run's directory,
$SKELETON_TEST_RUN_DIR). A whole module runs on one worker (tests/support/xdist_schedule.py),
so a module fixture is made once. For a new test file that means:
  - use the fixtures above; never a fixed path under /tmp, $HOME or /etc, a fixed port on
    the controller (127.0.0.1), or a fixed testbed instance: take tmp_path, port 0, make_testbed;
  - a fixed port or path *on the hosts* is fine (every worker has its own hosts), except the
    hosts' shared /tmp, /run and /var: name files there uniquely (uuid);
  - anything machine-wide (the login user's password, /etc/sudoers.d: `sudo_rules`) goes in
    `pytestmark = pytest.mark.xdist_group("sudo")` (one worker, one after the other);
    `sudo_rules` also holds a machine-wide lock, so it is safe anyway, only slower;
  - a test that times something runs next to other busy workers: poll with a deadline,
    never assert a tight bound measured on a quiet machine; one that needs the CPUs to
    itself (burns them on purpose) is `@pytest.mark.solo`: the other workers pause.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skeleton_app.config import Settings, load_config
from skeleton_app.testing import localdb
from skeleton_app.testing import testbed as tb_mod
from skeleton_app.testing.testbed import Testbed
from tests.support import solo
from tests.support.helpers import RUN_DIR_ENV, bootstrap_testbed

pytest_plugins = ["tests.support.db_fixtures"]  # PostgreSQL: postgres, db_dsn, registry, ...

SESSION_HOSTS = 6
_RUN_DIR_KEY = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """In the main process only (the xdist controller, or the one process without xdist):
    the run's directory, shared by its workers (they inherit the environment)."""
    config.addinivalue_line("markers", "xdist_group(name): run on one xdist worker")
    config.addinivalue_line("markers", "solo: the suite's other workers pause meanwhile")
    if hasattr(config, "workerinput") or RUN_DIR_ENV in os.environ:
        return
    run_dir = Path(tempfile.mkdtemp(prefix="skeleton-test-run-", dir="/tmp"))
    # PostgreSQL (as `postgres`) must traverse it to reach the template inside.
    run_dir.chmod(0o755)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    config.stash[_RUN_DIR_KEY] = run_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    run_dir = config.stash.get(_RUN_DIR_KEY, None)
    if run_dir is not None:
        os.environ.pop(RUN_DIR_ENV, None)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` (what ./scripts/test passes): whole modules and xdist_groups as
    units, longest first (tests/support/xdist_schedule.py). Other --dist modes as xdist has
    them."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from tests.support.xdist_schedule import ModuleScheduling

    return ModuleScheduling(config, log)


@pytest.fixture(autouse=True)
def _solo_gate(request: pytest.FixtureRequest) -> Iterator[None]:
    """`@pytest.mark.solo` tests run alone among the run's workers (tests/support/solo.py)."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir or not Path(run_dir).is_dir():
        yield
        return
    with solo.gate(Path(run_dir), request.node.get_closest_marker("solo") is not None):
        yield


@pytest.fixture(scope="session", autouse=True)
def _own_cache_dir() -> Iterator[Path]:
    """The deploy hash cache of this session's many temporary trees (and the last-run
    state file) go to a directory of the session's own (one per xdist worker), not to the
    user's ~/.cache and ~/.local/state; the CLI subprocesses inherit it. The run's directory
    (shared by the workers) keeps the hosts' first bootstrapped .venv (bootstrap_testbed)
    and one initdb result that every new throwaway PostgreSQL of the run copies (localdb's
    $SKELETON_PG_TEMPLATE_DIR)."""
    pg_template = Path(os.environ[RUN_DIR_ENV]) / "pg-template"
    pg_template.mkdir(mode=0o755, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skeleton-cache-") as tmp:
        mp = pytest.MonkeyPatch()
        mp.setenv("XDG_CACHE_HOME", tmp)
        mp.setenv("XDG_STATE_HOME", tmp)  # the last-run file of `--node @failed`
        mp.setenv(localdb.TEMPLATE_ENV, str(pg_template))
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
