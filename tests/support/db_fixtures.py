"""PostgreSQL fixtures (registered from conftest.py through `pytest_plugins`).

    postgres       session-wide throwaway PostgreSQL on 127.0.0.1 (skeleton_app.testing.localdb)
    empty_dsn      a fresh, empty database in it for one test (dropped afterwards)
    db_dsn         a fresh database with the schema created by `init_schema`: a copy of
                   one database the session ran `init_schema` on (`schema_template`), so a
                   test does not pay for the migrations (1-3 s on a busy machine)
    registry       a PostgresRegistry on db_dsn
    make_postgres  factory for a test's own server, for tests that stop and restart it

No skip when PostgreSQL is missing: the suite's setup installs it, and a registry that is
never tested is a registry that does not work.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skeleton_app.registry import NodeDefaults, PostgresRegistry, init_schema
from skeleton_app.testing import localdb
from skeleton_app.testing.localdb import LocalPostgres

TEST_DEFAULTS = NodeDefaults(user="skeleton", port=22, app_dir="/srv/app", api_port=8765)


def _base_dir() -> Path:
    # Directly under /tmp, not pytest's tmp_path (mode 0700 under /tmp/pytest-of-root):
    # PostgreSQL runs as `postgres` and must be able to traverse every parent.
    return Path(tempfile.mkdtemp(prefix="skeleton-pg-pytest-", dir="/tmp"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    base = _base_dir()
    try:
        pg = localdb.start_postgres(base)
        yield pg
    finally:
        localdb.stop_postgres(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_postgres() -> Iterator[Callable[..., LocalPostgres]]:
    """`make_postgres(listen=..., port=...)`: a server of the test's own, stopped at the end."""
    bases: list[Path] = []

    def make(**kwargs: object) -> LocalPostgres:
        base = _base_dir()
        bases.append(base)
        return localdb.start_postgres(base, **kwargs)  # type: ignore[arg-type]

    try:
        yield make
    finally:
        for base in bases:
            localdb.stop_postgres(base)
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def empty_dsn(postgres: LocalPostgres) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = postgres.create_database(name)
    try:
        yield dsn
    finally:
        postgres.drop_database(name)


@pytest.fixture(scope="session")
def schema_template(postgres: LocalPostgres) -> str:
    """Name of a database of the session server holding exactly what `init_schema` makes;
    nobody connects to it after that (PostgreSQL copies only unused templates)."""
    name = "t_schema_template"
    init_schema(postgres.create_database(name))
    return name


@pytest.fixture
def db_dsn(postgres: LocalPostgres, schema_template: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = postgres.create_database(name, template=schema_template)
    try:
        yield dsn
    finally:
        postgres.drop_database(name)


@pytest.fixture
def registry(db_dsn: str) -> Iterator[PostgresRegistry]:
    with PostgresRegistry(db_dsn, defaults=TEST_DEFAULTS, connect_timeout=5) as reg:
        yield reg
