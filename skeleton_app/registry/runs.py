"""The run journal in PostgreSQL: one `runs` row per cluster operation, one `run_nodes` row
per node with its outcome and the tail of its output.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from skeleton_app.registry.records import RunNodeRecord, RunRecord
from skeleton_app.registry.session import PostgresSession

if TYPE_CHECKING:
    from skeleton_app.results import ClusterResult

OUTPUT_TAIL_CHARS = 4000  # of stdout and of stderr kept per node in run_nodes


def default_who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = "?"
    return f"{user}@{socket.gethostname()}"


def _jsonable(value: Mapping[str, Any]) -> Any:
    """Arguments as JSON: paths, enums and the like become their str()."""
    return json.loads(json.dumps(dict(value), default=str))


def _tail(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a command's output can.
    text = text.replace("\0", "\ufffd")
    return text[-OUTPUT_TAIL_CHARS:]


class RunJournal(PostgresSession):
    """The run journal part of PostgresRegistry."""

    def record_run(
        self,
        operation: str,
        arguments: Mapping[str, Any],
        selection: Sequence[str],
        who: str | None = None,
    ) -> int:
        """Journal the start of a cluster operation; returns the run id."""
        with self._session("cannot record the run") as conn:
            row = conn.execute(
                "INSERT INTO runs (who, operation, arguments, selection)"
                " VALUES (%s, %s, %s, %s::text[]) RETURNING id",
                (who or default_who(), operation, Jsonb(_jsonable(arguments)),
                 list(selection)),
            ).fetchone()
        assert row is not None  # INSERT ... RETURNING always returns the row
        return int(row[0])

    def record_node_results(self, run_id: int | None, result: ClusterResult[Any]) -> None:
        """Journal each node's outcome and close the run. `run_id=None` is a no-op."""
        if run_id is None:
            return
        rows = [
            (run_id, r.node, r.exit_code, r.error_kind.value if r.error_kind else None,
             _tail(r.error) if r.error else None, r.duration, _tail(r.stdout), _tail(r.stderr))
            for r in result.values()
        ]
        with self._session("cannot record node results") as conn, conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO run_nodes (run_id, node_id, exit_code, error_kind, error,"
                    " duration, stdout_tail, stderr_tail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (run_id, node_id) DO UPDATE SET exit_code = EXCLUDED.exit_code,"
                    " error_kind = EXCLUDED.error_kind, error = EXCLUDED.error,"
                    " duration = EXCLUDED.duration, stdout_tail = EXCLUDED.stdout_tail,"
                    " stderr_tail = EXCLUDED.stderr_tail",
                    rows,
                )
            conn.execute(
                "UPDATE runs SET finished_at = now(), exit_code = %s, duration = %s WHERE id = %s",
                (result.exit_code(), result.duration, run_id),
            )

    _RUN_SQL = """
        SELECT r.id, r.started_at, r.finished_at, r.who, r.operation, r.arguments, r.selection,
               r.exit_code, r.duration,
               count(n.node_id)::int AS node_count,
               count(n.node_id) FILTER (WHERE n.error_kind IS NULL AND n.exit_code = 0)::int
                   AS ok_count,
               count(n.node_id) FILTER (WHERE n.error_kind IS NULL AND n.exit_code <> 0)::int
                   AS failed_count,
               count(n.node_id) FILTER (WHERE n.error_kind IS NOT NULL)::int AS error_count
        FROM runs r LEFT JOIN run_nodes n ON n.run_id = r.id
    """

    def list_runs(self, *, limit: int = 20) -> tuple[RunRecord, ...]:
        """The most recent runs first."""
        with self._session("cannot list runs") as conn, conn.cursor(
            row_factory=class_row(RunRecord)
        ) as cur:
            rows = cur.execute(
                self._RUN_SQL + " GROUP BY r.id ORDER BY r.id DESC LIMIT %s", (max(1, limit),)
            ).fetchall()
        return tuple(rows)

    def get_run(self, run_id: int) -> RunRecord | None:
        with self._session(f"cannot read run {run_id}") as conn:
            with conn.cursor(row_factory=class_row(RunRecord)) as cur:
                run = cur.execute(
                    self._RUN_SQL + " WHERE r.id = %s GROUP BY r.id", (run_id,)
                ).fetchone()
            if run is None:
                return None
            with conn.cursor(row_factory=class_row(RunNodeRecord)) as cur:
                nodes = cur.execute(
                    "SELECT node_id, exit_code, error_kind, error, duration, stdout_tail,"
                    " stderr_tail FROM run_nodes WHERE run_id = %s ORDER BY node_id",
                    (run_id,),
                ).fetchall()
        return dataclasses.replace(run, nodes=tuple(nodes))

    def last_run(self, *, who: str | None = None) -> RunRecord | None:
        """The newest finished run recorded by `who` (default: this user@host), with its
        nodes: what `--node @failed` and `runs retry last` start from."""
        with self._session("cannot read the last run") as conn:
            row = conn.execute(
                "SELECT id FROM runs WHERE who = %s AND finished_at IS NOT NULL"
                " ORDER BY id DESC LIMIT 1", (who or default_who(),),
            ).fetchone()
        return None if row is None else self.get_run(int(row[0]))
