"""The voice jobs queue in PostgreSQL (migration 0003): `PostgresJobStore`, the `JobStore`
the dispatcher and the `Cluster.jobs` facade (ops/jobs) are written against, its LISTEN
(`PostgresJobListener`), and `open_job_store(settings)`.

The store is made of two parts over the one connection of PostgresSession (opened on first
use, schema-checked, reopened after a failure, every psycopg error a RegistryError):
job_table.py (submit, read, cancel, retry) and job_leases.py (claim, fenced leases, end,
loss, clean-up, heartbeats). Rows are read back through job_rows.py's checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from skeleton_app.errors import UsageError
from skeleton_app.registry.connection import (
    DEFAULT_CONNECT_TIMEOUT,
    Target,
    connect,
    translate_error,
)
from skeleton_app.registry.job_leases import CLAIM_LOCK_KEY, JobLeases
from skeleton_app.registry.job_records import NOTIFY_CHANNEL, JobEvent, JobListener, JobStore
from skeleton_app.registry.job_rows import event_from_payload
from skeleton_app.registry.records import NodeDefaults

if TYPE_CHECKING:
    from skeleton_app.config import Settings

__all__ = ["CLAIM_LOCK_KEY", "PostgresJobListener", "PostgresJobStore", "open_job_store"]


class PostgresJobListener:
    """`LISTEN skeleton_jobs` on a connection of its own (autocommit: a notification is
    delivered between transactions only). Used by one thread."""

    def __init__(self, conn: psycopg.Connection[Any], target: Target):
        self._conn = conn
        self._target = target

    def wait(self, timeout: float) -> list[JobEvent]:
        """The events that arrived, waiting at most `timeout` s for the first one. A payload
        that is not a JobEvent (anyone may NOTIFY on the channel) is dropped."""
        try:
            got = list(self._conn.notifies(timeout=max(0.0, timeout), stop_after=1))
            if got:  # and whatever else is already there, without waiting
                got += self._conn.notifies(timeout=0.0)
        except psycopg.Error as exc:
            raise translate_error(exc, self._target, "lost the jobs notifications") from exc
        events: list[JobEvent] = []
        for notify in got:
            if notify.channel == NOTIFY_CHANNEL:
                event = event_from_payload(notify.payload)
                if event is not None:
                    events.append(event)
        return events

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PostgresJobListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PostgresJobStore(JobLeases):
    """The queue (JobStore). Thread-safe: one connection under a lock; `listen()` opens
    another per listener."""

    def __init__(self, dsn: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 application_name: str = "skeleton-jobs", defaults: NodeDefaults | None = None):
        # The queue reads no node rows: the session's node defaults are never used here.
        super().__init__(dsn, defaults=defaults or NodeDefaults(user="-"),
                         connect_timeout=connect_timeout, application_name=application_name)

    def listen(self) -> PostgresJobListener:
        # Checked like the store's own connection: listening to a schema without the
        # trigger would wait forever for nothing.
        with self._session("cannot listen for jobs"):
            pass
        conn = connect(self._dsn, connect_timeout=self._connect_timeout,
                       application_name=self._application_name)
        try:
            # LISTEN takes no bind parameter: the channel is a quoted identifier.
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
        except psycopg.Error as exc:
            conn.close()
            raise translate_error(exc, self._target, "cannot listen for jobs") from exc
        return PostgresJobListener(conn, self._target)


if TYPE_CHECKING:
    def _conforms(store: PostgresJobStore,
                  listener: PostgresJobListener) -> tuple[JobStore, JobListener]:
        """mypy checks here that the classes implement the protocols, signature by signature."""
        return store, listener


def open_job_store(settings: Settings, *,
                   application_name: str = "skeleton-jobs") -> PostgresJobStore:
    """The queue in the configured registry database (registry.dsn / SKELETON_DATABASE_URL).
    Connects lazily, on first use. UsageError when no database is configured: the queue has
    no static fallback (every submitter and dispatcher must share it)."""
    if not settings.registry.dsn:
        raise UsageError("the jobs queue needs a database: set registry.dsn or"
                         " SKELETON_DATABASE_URL")
    return PostgresJobStore(settings.registry.dsn,
                            connect_timeout=settings.registry.connect_timeout,
                            application_name=application_name)
