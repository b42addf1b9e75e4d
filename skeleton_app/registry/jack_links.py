"""The JackTrip link records in PostgreSQL (table `jack_links`, migration 0006): the
`LinkStore` of `skeleton jack link|unlink|mesh` when a registry is configured. Its own
connection (PostgresSession: opened on first use, schema-checked, every psycopg error a
RegistryError); rows are read back through `record_from_mapping`'s checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg.rows import dict_row

from skeleton_app.jack_link_records import LinkRecord, record_from_mapping
from skeleton_app.registry.records import NodeDefaults
from skeleton_app.registry.session import PostgresSession

if TYPE_CHECKING:
    from skeleton_app.config import Settings

_COLUMNS = "hub, client, channels, port_offset, queue, buffer_strategy, made_at, made_by"


class PostgresLinkStore(PostgresSession):
    """`LinkStore` over the registry's `jack_links` table."""

    def load(self) -> tuple[tuple[LinkRecord, ...], tuple[str, ...]]:
        with self._session("cannot read the JackTrip links") as conn:
            cur = conn.cursor(row_factory=dict_row)
            rows = cur.execute(f"SELECT {_COLUMNS} FROM jack_links ORDER BY hub, client"
                               ).fetchall()
        good: list[LinkRecord] = []
        warnings: list[str] = []
        for row in rows:
            try:
                good.append(record_from_mapping(row))
            except ValueError as exc:
                warnings.append(f"jack_links row {str(row.get('hub'))[:40]!r} ->"
                                f" {str(row.get('client'))[:40]!r} skipped: {exc}")
        return tuple(good), tuple(warnings)

    def put(self, record: LinkRecord) -> None:
        with self._session("cannot record the JackTrip link") as conn, conn.transaction():
            # The pair is unique in either direction: the old row of this pair goes first.
            conn.execute("DELETE FROM jack_links WHERE least(hub, client) = least(%s, %s)"
                         " AND greatest(hub, client) = greatest(%s, %s)",
                         (record.hub, record.client, record.hub, record.client))
            conn.execute(f"INSERT INTO jack_links ({_COLUMNS})"
                         " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                         (record.hub, record.client, record.channels, record.port_offset,
                          record.queue, record.buffer_strategy, record.made_at,
                          record.made_by))

    def delete(self, a: str, b: str) -> bool:
        with self._session("cannot remove the JackTrip link") as conn:
            cur = conn.execute("DELETE FROM jack_links WHERE least(hub, client) = least(%s, %s)"
                               " AND greatest(hub, client) = greatest(%s, %s)", (a, b, a, b))
            return cur.rowcount > 0


def open_link_store(settings: Settings) -> PostgresLinkStore:
    """The store over `registry.dsn` (connects on first use)."""
    assert settings.registry.dsn  # the caller picks the file store without one
    return PostgresLinkStore(settings.registry.dsn,
                             defaults=NodeDefaults.from_settings(settings),
                             connect_timeout=settings.registry.connect_timeout,
                             application_name="skeleton-jack")
