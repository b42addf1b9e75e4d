"""The node registry: where cluster commands find their nodes, and where runs are journaled.

Two implementations of one `Registry` protocol (protocol.py), picked by
`open_registry(settings)` (journal.py):

- `PostgresRegistry` (postgres.py): nodes register themselves (the daemon,
  skeleton_app.agent), operators manage them (`skeleton nodes ...`), every cluster operation
  records a run. Made of parts over one connection (session.py): node rows and daemon
  reports (postgres.py), each node's own role (roles.py), the run journal (runs.py).
- `StaticRegistry` (static.py): the `nodes:` list of config.yaml when no DSN is configured.

The rest, by what it holds:

- records.py: the values (NodeSpec, NodeRow, NodeEntry, RunRecord, NodeDefaults) and the field
  checks every row read goes through (rows are untrusted input; a bad row is skipped with a
  warning naming the row and the field).
- connection.py: parse_dsn, connect, and the one translation of psycopg errors into
  `RegistryError` (exit 3) naming host:port: nothing above this package sees psycopg's
  exceptions, and the DSN itself never appears in a message (it may hold a password).
- schema.py + migrations/NNNN_*.sql: the versioned schema, `init_schema` (`skeleton db init`).
- queries.py: the SQL over `nodes` shared by PostgresRegistry and compat.py.
- journal.py: `open_registry`, and `record_result` (what every front end does
  after an operation).
- exchange.py: `nodes:` lists in and out (`skeleton nodes import` / `export`).
- compat.py: the seed's `await register_node_in_db(db, {...})` / `await get_nodes_from_db(db)`
  over the caller's own psycopg connection, and their sync twins.

Importing this package imports psycopg (~30 ms): callers that may run without a database
(the CLI, cluster.py, ops/status.py) import it inside the function that needs it.
"""

from skeleton_app.registry.compat import (
    get_nodes_from_db,
    get_nodes_from_db_sync,
    register_node_in_db,
    register_node_in_db_sync,
)
from skeleton_app.registry.connection import (
    DEFAULT_CONNECT_TIMEOUT,
    MIGRATION_STATEMENT_TIMEOUT_MS,
    STATEMENT_TIMEOUT_MS,
    Target,
    connect,
    parse_dsn,
)
from skeleton_app.registry.exchange import (
    ImportResult,
    export_nodes,
    import_nodes,
    node_entries,
    parse_node_entries,
)
from skeleton_app.registry.journal import open_registry, record_result
from skeleton_app.registry.postgres import PostgresRegistry
from skeleton_app.registry.protocol import Registry
from skeleton_app.registry.records import (
    DAEMON_STATES,
    MAX_JSON_BYTES,
    FieldError,
    NodeDefaults,
    NodeEntry,
    NodeRow,
    NodeSpec,
    RunNodeRecord,
    RunRecord,
    parse_node,
    row_to_entry,
    validate_rows,
)
from skeleton_app.registry.roles import NODE_ROLE_PREFIX, node_dsn, node_role_name
from skeleton_app.registry.runs import OUTPUT_TAIL_CHARS, default_who
from skeleton_app.registry.schema import (
    SCHEMA_LOCK_KEY,
    Migration,
    SchemaStatus,
    check_schema,
    init_schema,
    migrations,
    schema_version_required,
)
from skeleton_app.registry.static import StaticRegistry

__all__ = [
    "DAEMON_STATES",
    "DEFAULT_CONNECT_TIMEOUT",
    "MAX_JSON_BYTES",
    "MIGRATION_STATEMENT_TIMEOUT_MS",
    "NODE_ROLE_PREFIX",
    "OUTPUT_TAIL_CHARS",
    "SCHEMA_LOCK_KEY",
    "STATEMENT_TIMEOUT_MS",
    "FieldError",
    "ImportResult",
    "Migration",
    "NodeDefaults",
    "NodeEntry",
    "NodeRow",
    "NodeSpec",
    "PostgresRegistry",
    "Registry",
    "RunNodeRecord",
    "RunRecord",
    "SchemaStatus",
    "StaticRegistry",
    "Target",
    "check_schema",
    "connect",
    "default_who",
    "export_nodes",
    "get_nodes_from_db",
    "get_nodes_from_db_sync",
    "import_nodes",
    "init_schema",
    "migrations",
    "node_dsn",
    "node_entries",
    "node_role_name",
    "open_registry",
    "parse_dsn",
    "parse_node",
    "parse_node_entries",
    "record_result",
    "register_node_in_db",
    "register_node_in_db_sync",
    "row_to_entry",
    "schema_version_required",
    "validate_rows",
]
