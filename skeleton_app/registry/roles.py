"""Each node's own database role (migration 0002): `issue_credentials` creates or re-keys it,
`node_of_login` tells the daemon whose role a DSN logs in as.

Row-level security confines a node's role to its own row, and column rights to the columns a
daemon owns (heartbeat, metrics, daemon state, capabilities): a compromised node cannot
rewrite another node's row, nor its own host, app_dir, roles or approval.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from skeleton_app.errors import RegistryError, UsageError
from skeleton_app.nodes import validate_node_id
from skeleton_app.registry.session import PostgresSession

# What a node's own database role may write (migration 0002, `issue_credentials`): its
# heartbeat and facts. host, app_dir, enabled, roles, approved are the operator's columns.
_NODE_INSERT_COLUMNS = ("id", "name", "host", "ssh_port", "ssh_user", "api_port",
                        "capabilities", "last_seen", "metrics", "daemon_state", "daemon_pid",
                        "started_at", "code_version")
_NODE_UPDATE_COLUMNS = ("capabilities", "last_seen", "metrics", "daemon_state", "daemon_pid",
                        "started_at", "code_version", "updated_at")
NODE_ROLE_PREFIX = "skeleton_node_"


def _node_grants(role: sql.Identifier) -> list[sql.Composed]:
    """What a node's role may do; RLS (migration 0002) narrows every one to its own row."""
    def columns(names: Sequence[str]) -> sql.Composed:
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)

    return [
        sql.SQL("GRANT SELECT ON schema_version TO {}").format(role),
        sql.SQL("GRANT SELECT ON nodes TO {}").format(role),
        sql.SQL("GRANT INSERT ({}) ON nodes TO {}").format(columns(_NODE_INSERT_COLUMNS), role),
        sql.SQL("GRANT UPDATE ({}) ON nodes TO {}").format(columns(_NODE_UPDATE_COLUMNS), role),
        # Its own heartbeat history (migration 0004): written, down-sampled and pruned by
        # the daemon itself.
        sql.SQL("GRANT SELECT, INSERT, DELETE ON node_metrics TO {}").format(role),
    ]


def node_role_name(dbname: str, node_id: str) -> str:
    """The login role of node `node_id` in database `dbname`. Roles are cluster-wide in
    PostgreSQL: the database is part of the name, so two registries on one server never
    share a node's role (and node ids longer than a role name can be still fit)."""
    digest = hashlib.sha256(f"{dbname}\0{node_id}".encode()).hexdigest()[:24]
    return NODE_ROLE_PREFIX + digest


def node_dsn(dsn: str, role: str, password: str) -> str:
    """`dsn` with the node's role and password in place of the operator's."""
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params.update(user=role, password=password)
    return make_conninfo(**{k: str(v) for k, v in params.items()})


class NodeRoles(PostgresSession):
    """The per-node roles part of PostgresRegistry."""

    def node_of_login(self) -> tuple[str, str | None]:
        """(this connection's role, the node it belongs to): None when the role is not a
        node's own (`issue_credentials`), e.g. the operator's, which may write every row."""
        with self._session("cannot check the registry role") as conn:
            row = conn.execute("SELECT current_user::text,"
                               " skeleton_node_of(current_user)").fetchone()
        if row is None:  # a SELECT without FROM always returns its row
            raise RegistryError(f"registry {self._target}: cannot check the registry role")
        return str(row[0]), None if row[1] is None else str(row[1])

    def issue_credentials(self, node_id: str) -> str:
        """Create (or re-key) node `node_id`'s own login role and return its DSN.

        The role may read and insert its own row only (row-level security, migration 0002)
        and write only the columns a daemon owns (`_NODE_UPDATE_COLUMNS`). A new random
        password each call: the previous DSN stops working. Needs CREATEROLE.
        """
        try:
            validate_node_id(node_id)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        password = secrets.token_urlsafe(24)
        with self._session(f"cannot create credentials for {node_id}") as conn, \
                conn.transaction():
            found = conn.execute("SELECT current_database()").fetchone()
            role = node_role_name(str(found[0]) if found else "", node_id)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                  (role,)).fetchone()
            # Utility statements take no bind parameters: the role is a quoted identifier
            # and the password a quoted literal (psycopg.sql), never text pasted in.
            verb = sql.SQL("ALTER" if exists else "CREATE")
            conn.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                verb, sql.Identifier(role), sql.Literal(password)))
            conn.execute(
                "INSERT INTO node_roles (role, node_id) VALUES (%s, %s)"
                " ON CONFLICT (role) DO UPDATE SET node_id = EXCLUDED.node_id",
                (role, node_id),
            )
            for statement in _node_grants(sql.Identifier(role)):
                conn.execute(statement)
        return node_dsn(self._dsn, role, password)
