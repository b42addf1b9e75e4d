"""One bounded connection to the registry database, and the translation of its errors.

`parse_dsn` checks a DSN without connecting and gives a `Target` that is safe to print;
`connect` opens an autocommit connection with bounded connect, statement and network waits;
`translate_error` turns every psycopg error into `RegistryError` (exit 3) naming host:port
and the reason. Nothing above the registry sees psycopg's exceptions, and the DSN itself never
appears in a message (it may hold a password).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from skeleton_app.errors import RegistryError
from skeleton_app.registry.records import shown

DEFAULT_CONNECT_TIMEOUT = 5.0
# Server-side bound on every statement: a registry that hangs must not hang a command.
STATEMENT_TIMEOUT_MS = 30_000
MIGRATION_STATEMENT_TIMEOUT_MS = 300_000


@dataclass(frozen=True, slots=True)
class Target:
    """Where a DSN points, safe to print (no password)."""

    host: str
    port: str
    dbname: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_dsn(dsn: str) -> Target:
    """Check a DSN's syntax without connecting. RegistryError names what is wrong."""
    if not isinstance(dsn, str) or not dsn.strip():
        raise RegistryError("malformed registry DSN: empty")
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        # psycopg's message never echoes the string, which may hold a password.
        raise RegistryError(f"malformed registry DSN: {_reason(exc)}") from exc
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    for one in port.split(","):
        if not one.isdigit() or not 1 <= int(one) <= 65535:
            raise RegistryError(f"malformed registry DSN: invalid port {shown(one)}")
    dbname = str(params.get("dbname") or params.get("user") or "")
    return Target(host=host, port=port, dbname=dbname)


def _reason(exc: BaseException) -> str:
    """The useful part of a psycopg message, on one line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # libpq: 'connection failed: connection to server at "h", port 5 failed: FATAL:  password
    # authentication failed ...' and a second line of hints ("Is the server running ...?").
    text = next((line for line in lines if "failed: " in line), lines[0] if lines else "")
    if "failed: " in text:
        text = text.rsplit("failed: ", 1)[1]
    text = re.sub(r"^(FATAL|ERROR):\s+", "", text)
    return text or type(exc).__name__


def translate_error(exc: psycopg.Error, target: Target | str, action: str) -> RegistryError:
    where = f"registry {target}"
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.UndefinedColumn):
        return RegistryError(
            f"{where}: the database schema is missing or incomplete ({_reason(exc)}):"
            " run `skeleton db init`"
        )
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return RegistryError(f"{where}: {action}: permission denied ({_reason(exc)})")
    if isinstance(exc, pg_errors.QueryCanceled):
        return RegistryError(f"{where}: {action}: timed out ({_reason(exc)})")
    return RegistryError(f"{where}: {action}: {_reason(exc)}")


def _connect_timeout(seconds: float) -> int:
    # libpq takes whole seconds and treats anything below 2 as 2; 0 would mean "wait forever".
    return max(2, math.ceil(seconds))


def connect(
    dsn: str,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
    application_name: str = "skeleton",
) -> psycopg.Connection[Any]:
    """An autocommit connection with bounded connect, statement and network waits."""
    target = parse_dsn(dsn)
    seconds = _connect_timeout(connect_timeout)
    try:
        conn = psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=seconds,
            application_name=application_name,
            # A peer that vanishes mid-query (PostgreSQL host down, network cut) would
            # otherwise block a read for the kernel's ~15 minute retransmission timeout.
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=seconds * 1000 * 3,
        )
    except psycopg.Error as exc:
        raise translate_error(exc, target, "cannot connect") from exc
    try:
        conn.execute("SELECT set_config('statement_timeout', %s, false)",
                     (str(int(statement_timeout_ms)),))
    except psycopg.Error as exc:
        conn.close()
        raise translate_error(exc, target, "cannot configure the session") from exc
    return conn
