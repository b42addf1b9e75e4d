"""The connection a PostgresRegistry holds: opened on first use, schema-checked, reopened
after a failure, shared by threads under one lock. The base of the registry's parts
(registry.postgres, .roles, .runs), which all run their SQL through `_session`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

import psycopg

from skeleton_app.errors import RegistryError
from skeleton_app.registry.connection import (
    DEFAULT_CONNECT_TIMEOUT,
    Target,
    connect,
    parse_dsn,
    translate_error,
)
from skeleton_app.registry.records import NodeDefaults
from skeleton_app.registry.schema import check_schema


class PostgresSession:
    """One connection to the registry database, opened on first use and reopened after a
    failure, so a long-running daemon survives a database restart. Thread-safe.
    """

    def __init__(
        self,
        dsn: str,
        *,
        defaults: NodeDefaults,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        application_name: str = "skeleton",
    ):
        self._target = parse_dsn(dsn)  # a malformed DSN fails here, before anything runs
        self._dsn = dsn
        self._defaults = defaults
        self._connect_timeout = connect_timeout
        self._application_name = application_name
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.RLock()

    @property
    def source(self) -> str:
        return f"postgresql {self._target}/{self._target.dbname}"

    @property
    def target(self) -> Target:
        return self._target

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def ping(self) -> None:
        """Connect (if needed) and check the schema; RegistryError when unusable."""
        with self._session("cannot connect"):
            pass

    @contextmanager
    def _session(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        """The live connection; psycopg errors become RegistryError, broken links are dropped."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                conn = connect(self._dsn, connect_timeout=self._connect_timeout,
                               application_name=self._application_name)
                try:
                    check_schema(conn, self._target)
                except RegistryError:
                    conn.close()
                    raise
                except psycopg.Error as exc:
                    conn.close()
                    raise translate_error(exc, self._target, action) from exc
                self._conn = conn
            try:
                yield self._conn
            except psycopg.Error as exc:
                if self._conn.broken or isinstance(exc, psycopg.OperationalError):
                    # Reconnect (and re-check the schema) on the next call.
                    self._conn.close()
                    self._conn = None
                raise translate_error(exc, self._target, action) from exc
