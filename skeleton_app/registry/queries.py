"""The SQL over the `nodes` table shared by PostgresRegistry and the seed's functions
(registry.compat): the columns read, the operator's upsert, a daemon's self-registration.
Bind parameters only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb

from skeleton_app.errors import UsageError
from skeleton_app.nodes import Node
from skeleton_app.registry.records import NodeSpec, shown

NODE_COLUMNS = (
    "id, name, host, ssh_port, ssh_user, api_port, roles, labels, app_dir, capabilities,"
    " enabled, registered_at, updated_at, last_seen, daemon_state, daemon_pid, started_at,"
    " code_version, metrics, approved,"
    " extract(epoch FROM now() - last_seen)::float8 AS seen_ago"
)


def as_spec(
    node: Node | NodeSpec,
    labels: Mapping[str, str] | None,
    capabilities: Mapping[str, Any] | None,
) -> NodeSpec:
    try:
        if isinstance(node, Node):
            return NodeSpec.from_node(node, labels=labels, capabilities=capabilities)
        changes: dict[str, Any] = {}
        if labels is not None:
            changes["labels"] = labels
        if capabilities is not None:
            changes["capabilities"] = capabilities
        return dataclasses.replace(node, **changes) if changes else node
    except ValueError as exc:
        raise UsageError(f"invalid node {shown(node.id)}: {exc}") from None


UPSERT_SQL = """
INSERT INTO nodes (id, name, host, ssh_port, ssh_user, api_port, roles, app_dir, labels,
                   capabilities, approved)
VALUES (%(id)s, %(name)s, %(host)s, %(port)s, %(user)s, %(api_port)s, %(roles)s::text[],
        %(app_dir)s, coalesce(%(labels)s::jsonb, '{}'), coalesce(%(capabilities)s::jsonb, '{}'),
        true)
ON CONFLICT (id) DO UPDATE SET
    approved = true,
    name = EXCLUDED.name, host = EXCLUDED.host, ssh_port = EXCLUDED.ssh_port,
    ssh_user = EXCLUDED.ssh_user, api_port = EXCLUDED.api_port, roles = EXCLUDED.roles,
    app_dir = EXCLUDED.app_dir,
    labels = coalesce(%(labels)s::jsonb, nodes.labels),
    capabilities = coalesce(%(capabilities)s::jsonb, nodes.capabilities),
    updated_at = now()
RETURNING (xmax = 0) AS inserted
"""


def upsert_params(spec: NodeSpec) -> dict[str, Any]:
    return {
        "id": spec.id, "name": spec.name, "host": spec.host, "port": spec.port,
        "user": spec.user, "api_port": spec.api_port, "roles": list(spec.roles),
        "app_dir": spec.app_dir,
        "labels": Jsonb(dict(spec.labels)) if spec.labels is not None else None,
        "capabilities": (
            Jsonb(dict(spec.capabilities)) if spec.capabilities is not None else None
        ),
    }


# Targets: enabled AND approved (a pending self-registration is never one).
SELECT_NODES_SQL = (
    f"SELECT {NODE_COLUMNS} FROM nodes WHERE (enabled AND approved) OR NOT %(enabled_only)s"
    " ORDER BY id"
)

# A daemon registering itself: a new row lands pending (the column default; a node role may
# not even write `approved`), an existing row only gets the node's own facts. host, app_dir,
# roles, enabled stay what the operator made them.
REGISTER_SELF_SQL = """
INSERT INTO nodes (id, name, host, ssh_port, ssh_user, api_port, capabilities)
VALUES (%(id)s, %(name)s, %(host)s, %(port)s, %(user)s, %(api_port)s,
        coalesce(%(capabilities)s::jsonb, '{}'))
ON CONFLICT (id) DO UPDATE SET
    capabilities = coalesce(%(capabilities)s::jsonb, nodes.capabilities),
    updated_at = now()
RETURNING (xmax = 0) AS inserted
"""
