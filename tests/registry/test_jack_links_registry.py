"""The JackTrip link records in PostgreSQL (migration 0006, registry/jack_links.py): put,
load, delete in either direction, one link per pair of nodes, bad rows skipped with a
warning, and node roles get no access to the table (operator-owned)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import errors as pg_errors

from skeleton_app.errors import RegistryError
from skeleton_app.jack_link_records import LinkRecord
from skeleton_app.nodes import Node
from skeleton_app.registry import PostgresRegistry
from skeleton_app.registry.jack_links import PostgresLinkStore
from tests.support.db_fixtures import TEST_DEFAULTS


def _record(hub: str = "node-01", client: str = "node-02", offset: int = 0) -> LinkRecord:
    return LinkRecord(hub, client, 2, offset, 4, 1, datetime(2026, 12, 6, 21, 0, tzinfo=UTC),
                      "op@controller")


def test_put_load_delete(db_dsn: str) -> None:
    with PostgresLinkStore(db_dsn, defaults=TEST_DEFAULTS) as store:
        assert store.load() == ((), ())
        store.put(_record())
        store.put(_record("node-03", "node-01", offset=1))
        assert store.load() == ((_record(), _record("node-03", "node-01", offset=1)), ())
        # One link per pair: made again the other way round, it replaces the old one.
        store.put(_record("node-02", "node-01", offset=5))
        records, _ = store.load()
        assert _record("node-02", "node-01", offset=5) in records and _record() not in records
        assert store.delete("node-01", "node-02") is True  # either order
        assert store.delete("node-01", "node-02") is False
        assert store.load() == ((_record("node-03", "node-01", offset=1),), ())


def test_a_bad_row_is_skipped_with_a_warning(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO jack_links VALUES ('node-01', 'bad id!', 2, 0, 4, 1, now(),"
                     " 'x')")
    with PostgresLinkStore(db_dsn, defaults=TEST_DEFAULTS) as store:
        store.put(_record("node-03", "node-04"))
        records, warnings = store.load()
    assert records == (_record("node-03", "node-04"),)
    assert len(warnings) == 1 and "client: not a node id" in warnings[0], warnings


def test_a_node_role_cannot_read_or_write_the_links(registry: PostgresRegistry,
                                                    db_dsn: str) -> None:
    registry.upsert_node(Node(id="node-02", host="10.0.0.2"))
    node_dsn = registry.issue_credentials("node-02")
    with PostgresLinkStore(db_dsn, defaults=TEST_DEFAULTS) as store:
        store.put(_record())
    with psycopg.connect(node_dsn, connect_timeout=5, autocommit=True) as conn:
        for statement in ("SELECT * FROM jack_links", "DELETE FROM jack_links",
                          "INSERT INTO jack_links VALUES ('a', 'b', 2, 0, 4, 1, now(), 'x')"):
            with pytest.raises(pg_errors.InsufficientPrivilege):
                conn.execute(statement.encode())
    with PostgresLinkStore(node_dsn, defaults=TEST_DEFAULTS) as node, \
            pytest.raises(RegistryError, match="permission denied"):
        node.load()
    with PostgresLinkStore(db_dsn, defaults=TEST_DEFAULTS) as store:
        assert store.load() == ((_record(),), ())
