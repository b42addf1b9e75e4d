"""PostgresRegistry: nodes register themselves (the daemon, skeleton_app.agent), operators
manage them (`skeleton nodes ...`), every cluster operation records a run.

One class made of parts, each over the one connection of `PostgresSession`: the node rows
and daemon reports here, the per-node roles (registry.roles) and the run journal
(registry.runs). psycopg 3, bind parameters only, a connect timeout always, rows typed into
dataclasses.

Who writes what (migration 0002): the operator's role owns the tables; each node's daemon
should hold a role of its own (`issue_credentials`). A row a daemon creates (`register_self`)
is pending, never a target, until `approve`; operator writes (`upsert_node`) approve.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from skeleton_app.errors import RegistryError, UsageError
from skeleton_app.nodes import Node
from skeleton_app.registry.metrics_history import MetricsHistory, insert_sample
from skeleton_app.registry.metrics_retention import MetricsRetention
from skeleton_app.registry.queries import (
    NODE_COLUMNS,
    REGISTER_SELF_SQL,
    SELECT_NODES_SQL,
    UPSERT_SQL,
    as_spec,
    upsert_params,
)
from skeleton_app.registry.records import (
    DAEMON_STATES,
    FieldError,
    NodeEntry,
    NodeRow,
    NodeSpec,
    check_json_object,
    check_text,
    row_to_entry,
    shown,
    validate_rows,
)
from skeleton_app.registry.roles import NodeRoles
from skeleton_app.registry.runs import RunJournal
from skeleton_app.registry.session import PostgresSession


class NodeTable(PostgresSession):
    """The `nodes` rows: what operators manage and daemons report."""

    # -- nodes

    def list_entries(
        self, *, enabled_only: bool = False
    ) -> tuple[tuple[NodeEntry, ...], tuple[str, ...]]:
        with self._session("cannot list nodes") as conn, conn.cursor(
            row_factory=class_row(NodeRow)
        ) as cur:
            rows = cur.execute(SELECT_NODES_SQL, {"enabled_only": enabled_only}).fetchall()
        entries, warnings = validate_rows(rows, self._defaults)
        return tuple(entries), tuple(warnings)

    def list_nodes(self, *, enabled_only: bool = True) -> tuple[tuple[Node, ...], tuple[str, ...]]:
        """Registered (and by default enabled) nodes, fresh heartbeat or not; bad rows skipped."""
        entries, warnings = self.list_entries(enabled_only=enabled_only)
        return tuple(e.node for e in entries), warnings

    def get_entry(self, node_id: str) -> NodeEntry | None:
        """One node's validated row; None if absent. A bad row raises RegistryError."""
        with self._session("cannot read node") as conn, conn.cursor(
            row_factory=class_row(NodeRow)
        ) as cur:
            row = cur.execute(
                f"SELECT {NODE_COLUMNS} FROM nodes WHERE id = %s", (node_id,)
            ).fetchone()
        if row is None:
            return None
        try:
            return row_to_entry(row, self._defaults)
        except FieldError as exc:
            raise RegistryError(f"registry {self._target}: node row {shown(node_id)}: {exc}") \
                from None

    def upsert_node(
        self,
        node: Node | NodeSpec,
        *,
        labels: Mapping[str, str] | None = None,
        capabilities: Mapping[str, Any] | None = None,
    ) -> bool:
        """Insert or update a node by id (atomic: concurrent upserts leave one row, no error).

        Returns True when the row was created. `enabled` and `registered_at` of an existing
        row are kept: re-registering never re-enables a node an operator disabled. Labels and
        capabilities given as None keep their stored value.
        """
        spec = as_spec(node, labels, capabilities)
        with self._session(f"cannot register node {spec.id}") as conn:
            row = conn.execute(UPSERT_SQL, upsert_params(spec)).fetchone()
        return bool(row and row[0])

    def register_self(
        self, node: Node, *, capabilities: Mapping[str, Any] | None = None
    ) -> bool:
        """The daemon's registration of its own node: True when the row was created (it is
        then pending until an operator approves it). An existing row keeps its host,
        app_dir, roles and state: only the node's capabilities are refreshed."""
        spec = as_spec(node, None, capabilities)
        with self._session(f"cannot register node {spec.id}") as conn:
            row = conn.execute(REGISTER_SELF_SQL, upsert_params(spec)).fetchone()
        return bool(row and row[0])

    def approve(self, node_id: str) -> bool:
        """Make a pending node a target (`skeleton nodes approve ID`). False: no such node."""
        with self._session("cannot approve node") as conn:
            cur = conn.execute(
                "UPDATE nodes SET approved = true, updated_at = now() WHERE id = %s",
                (node_id,),
            )
            return cur.rowcount > 0

    def remove_node(self, node_id: str) -> bool:
        # Not validated: an operator must be able to delete a row whose id is garbage.
        with self._session("cannot remove node") as conn, conn.transaction():
            cur = conn.execute("DELETE FROM nodes WHERE id = %s", (node_id,))
            removed = cur.rowcount > 0
            # The node's role can no longer log in; its node_roles entry stays, so that it
            # would still be confined to its (gone) row.
            for (role,) in conn.execute("SELECT role FROM node_roles WHERE node_id = %s",
                                        (node_id,)).fetchall():
                conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
            return removed

    def set_enabled(self, node_id: str, enabled: bool) -> bool:
        with self._session("cannot update node") as conn:
            cur = conn.execute(
                "UPDATE nodes SET enabled = %s, updated_at = now() WHERE id = %s",
                (enabled, node_id),
            )
            return cur.rowcount > 0

    def enable(self, node_id: str) -> bool:
        return self.set_enabled(node_id, True)

    def disable(self, node_id: str) -> bool:
        return self.set_enabled(node_id, False)

    def heartbeat(
        self,
        node_id: str,
        *,
        metrics: Mapping[str, Any],
        daemon_state: str = "running",
        code_version: str | None = None,
        daemon_pid: int | None = None,
        started_at: datetime | None = None,
    ) -> bool:
        """Record that the node's daemon is alive. False when the node is not registered
        (removed meanwhile, or a fresh database): the daemon then registers again.
        """
        if daemon_state not in DAEMON_STATES:
            raise ValueError(f"invalid daemon state {daemon_state!r}")
        try:
            checked = check_json_object("metrics", metrics)
            if code_version is not None:
                check_text("code_version", code_version, limit=100)
        except FieldError as exc:
            raise UsageError(f"invalid heartbeat from {shown(node_id)}: {exc}") from None
        with self._session(f"cannot record heartbeat of {node_id}") as conn, \
                conn.transaction():
            cur = conn.execute(
                "UPDATE nodes SET last_seen = now(), metrics = %s, daemon_state = %s,"
                " code_version = coalesce(%s, code_version),"
                " daemon_pid = coalesce(%s, daemon_pid),"
                " started_at = coalesce(%s, started_at)"
                " WHERE id = %s",
                (Jsonb(checked), daemon_state, code_version, daemon_pid, started_at, node_id),
            )
            if cur.rowcount == 0:
                return False
            insert_sample(conn, node_id, checked)  # the history (migration 0004)
            return True

    def mark_stopped(self, node_id: str) -> bool:
        with self._session(f"cannot mark {node_id} stopped") as conn:
            cur = conn.execute(
                "UPDATE nodes SET daemon_state = 'stopped', daemon_pid = NULL,"
                " last_seen = now() WHERE id = %s",
                (node_id,),
            )
            return cur.rowcount > 0

    def heartbeats(self, node_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What the daemons last reported, for `cluster status`: per node id, `last_seen`
        (epoch seconds), `seen_ago`, `daemon_state`, `code_version`, `daemon_pid`.

        `last_seen` is derived from the age measured by the database's clock, so a
        controller whose clock is off from the database's still computes the right age.
        Rows failing validation are left out (their fields are untrusted).
        """
        with self._session("cannot read heartbeats") as conn, conn.cursor(
            row_factory=class_row(NodeRow)
        ) as cur:
            rows = cur.execute(
                f"SELECT {NODE_COLUMNS} FROM nodes WHERE id = ANY(%s::text[])",
                (list(node_ids),),
            ).fetchall()
        entries, _ = validate_rows(rows, self._defaults)
        now = time.time()
        return {
            e.node.id: {
                "last_seen": None if e.seen_ago is None else now - e.seen_ago,
                "seen_ago": e.seen_ago,
                "daemon_state": e.daemon_state,
                "daemon_pid": e.daemon_pid,
                "code_version": e.code_version,
            }
            for e in entries
        }

    def record_status(self, node_id: str, status: Mapping[str, Any]) -> bool:
        """Keep the controller's latest status probe of a node (not a heartbeat)."""
        try:
            checked = check_json_object("status", status)
        except FieldError as exc:
            raise UsageError(f"invalid status of {shown(node_id)}: {exc}") from None
        with self._session(f"cannot record the status of {node_id}") as conn:
            cur = conn.execute(
                "UPDATE nodes SET last_status = %s, status_at = now() WHERE id = %s",
                (Jsonb(checked), node_id),
            )
            return cur.rowcount > 0

    # -- runs


class PostgresRegistry(NodeTable, NodeRoles, RunJournal, MetricsHistory, MetricsRetention):
    """The registry in PostgreSQL. One connection, opened on first use and reopened after
    a failure, so a long-running daemon survives a database restart. Thread-safe.
    """
