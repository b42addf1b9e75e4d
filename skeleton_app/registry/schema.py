"""The registry's schema: the versioned migrations shipped in `migrations/NNNN_*.sql`, the
check every connection makes (`check_schema`: exactly the version this code needs), and
`init_schema` (`skeleton db init`), which creates or upgrades it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from skeleton_app.errors import RegistryError
from skeleton_app.registry.connection import (
    DEFAULT_CONNECT_TIMEOUT,
    MIGRATION_STATEMENT_TIMEOUT_MS,
    Target,
    connect,
    parse_dsn,
    translate_error,
)

# pg_advisory_xact_lock key serialising `init_schema` across processes: the first 8 bytes of
# sha256("skeleton_app.schema") as a signed bigint. Any constant works if nothing else uses it.
SCHEMA_LOCK_KEY = 0x2F1A_5C3E_7B4D_0961
_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """What `init_schema` found and did."""

    before: int  # version found (0: no schema)
    after: int
    applied: tuple[str, ...]  # migration file names applied now


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> tuple[Migration, ...]:
    """The migrations shipped in the package, in order."""
    found: list[Migration] = []
    for entry in (resources.files("skeleton_app.registry") / "migrations").iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..N: {versions}")  # packaging bug
    return tuple(found)


def schema_version_required() -> int:
    return len(migrations())


def _current_version(conn: psycopg.Connection[Any]) -> int | None:
    """The applied schema version, or None when there is no schema_version table."""
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def _newer_error(target: Target, found: int, known: int) -> RegistryError:
    return RegistryError(
        f"registry {target}: the database schema is version {found}, newer than this"
        f" skeleton_app understands (version {known}): upgrade skeleton_app on this machine;"
        " refusing to use or change it"
    )


def check_schema(conn: psycopg.Connection[Any], target: Target) -> int:
    """Raise RegistryError unless the schema is exactly the version this code needs."""
    known = schema_version_required()
    found = _current_version(conn)
    if found is None or found == 0:
        raise RegistryError(
            f"registry {target}: database {target.dbname or '(default)'} has no skeleton"
            " schema: run `skeleton db init`"
        )
    if found > known:
        raise _newer_error(target, found, known)
    if found < known:
        raise RegistryError(
            f"registry {target}: the database schema is version {found}, this skeleton_app"
            f" needs version {known}: run `skeleton db init` to upgrade it"
        )
    return found


def init_schema(dsn: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> SchemaStatus:
    """Create or upgrade the schema. Idempotent, and safe to run from many shells at once.

    Everything happens in one transaction holding an advisory lock: a concurrent run waits,
    then finds the work done. A schema newer than this code is refused, untouched.
    """
    target = parse_dsn(dsn)
    known = migrations()
    with connect(dsn, connect_timeout=connect_timeout,
                 statement_timeout_ms=MIGRATION_STATEMENT_TIMEOUT_MS) as conn:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
                # Created under the lock: two concurrent CREATE TABLE IF NOT EXISTS can
                # otherwise both try to create it and one fails on a unique index.
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " version integer PRIMARY KEY,"
                    " name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                before = _current_version(conn) or 0
                if before > len(known):
                    raise _newer_error(target, before, len(known))
                applied: list[str] = []
                for migration in known[before:]:
                    # Migration files hold only static DDL shipped in the package.
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                    applied.append(migration.name)
        except psycopg.Error as exc:
            raise translate_error(exc, target, "cannot create the schema") from exc
    return SchemaStatus(before=before, after=len(known), applied=tuple(applied))
