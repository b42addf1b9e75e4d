"""The seed's Python API over a caller's own psycopg connection: `await
register_node_in_db(db, {...})` and `await get_nodes_from_db(db)`, and their sync twins
(docs/examples.md). Same validation and SQL as PostgresRegistry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import class_row

from skeleton_app.nodes import Node
from skeleton_app.registry.connection import translate_error
from skeleton_app.registry.queries import SELECT_NODES_SQL, UPSERT_SQL, upsert_params
from skeleton_app.registry.records import NodeDefaults, NodeRow, parse_node, validate_rows

# The package's logger, as before the split: warnings about skipped rows keep their name.
log = logging.getLogger("skeleton_app.registry")


def _conn_target(db: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    try:
        return f"{db.info.host}:{db.info.port}"
    except psycopg.Error:
        return "(closed connection)"


def _default_defaults() -> NodeDefaults:
    from skeleton_app.config import Settings  # values layer: no cycle, no I/O

    return NodeDefaults.from_settings(Settings())


def _log_warnings(warnings: Sequence[str]) -> None:
    for warning in warnings:
        log.warning("%s", warning)


async def register_node_in_db(
    db: psycopg.AsyncConnection[Any],
    info: Mapping[str, Any],
    *,
    defaults: NodeDefaults | None = None,
) -> Node:
    """Upsert one node from a dict (`id`, `host`, optional `port`, `user`, `roles`, `app_dir`,
    `api_port`, `name`, `labels`, `capabilities`) on the caller's async connection.

    Runs in its own transaction (a savepoint if the caller has one open). Returns the node as
    commands will see it.
    """
    spec = parse_node(info)
    try:
        async with db.transaction():
            await db.execute(UPSERT_SQL, upsert_params(spec))
    except psycopg.Error as exc:
        raise translate_error(exc, _conn_target(db), f"cannot register node {spec.id}") from exc
    return spec.resolve(defaults or _default_defaults())


async def get_nodes_from_db(
    db: psycopg.AsyncConnection[Any],
    *,
    enabled_only: bool = True,
    defaults: NodeDefaults | None = None,
) -> list[Node]:
    """Registered (enabled) nodes, validated; invalid rows are skipped and logged as warnings."""
    try:
        async with db.cursor(row_factory=class_row(NodeRow)) as cur:
            await cur.execute(SELECT_NODES_SQL, {"enabled_only": enabled_only})
            rows = await cur.fetchall()
    except psycopg.Error as exc:
        raise translate_error(exc, _conn_target(db), "cannot list nodes") from exc
    entries, warnings = validate_rows(rows, defaults or _default_defaults())
    _log_warnings(warnings)
    return [e.node for e in entries]


def register_node_in_db_sync(
    db: psycopg.Connection[Any],
    info: Mapping[str, Any],
    *,
    defaults: NodeDefaults | None = None,
) -> Node:
    """The sync twin of `register_node_in_db`."""
    spec = parse_node(info)
    try:
        with db.transaction():
            db.execute(UPSERT_SQL, upsert_params(spec))
    except psycopg.Error as exc:
        raise translate_error(exc, _conn_target(db), f"cannot register node {spec.id}") from exc
    return spec.resolve(defaults or _default_defaults())


def get_nodes_from_db_sync(
    db: psycopg.Connection[Any],
    *,
    enabled_only: bool = True,
    defaults: NodeDefaults | None = None,
) -> list[Node]:
    """The sync twin of `get_nodes_from_db`."""
    try:
        with db.cursor(row_factory=class_row(NodeRow)) as cur:
            rows = cur.execute(SELECT_NODES_SQL, {"enabled_only": enabled_only}).fetchall()
    except psycopg.Error as exc:
        raise translate_error(exc, _conn_target(db), "cannot list nodes") from exc
    entries, warnings = validate_rows(rows, defaults or _default_defaults())
    _log_warnings(warnings)
    return [e.node for e in entries]
