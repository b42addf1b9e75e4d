"""Opening the configured registry, and journaling one finished operation into it: what
every front end (the CLI, `inv`, `fab`) does after an operation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from skeleton_app.registry.postgres import PostgresRegistry
from skeleton_app.registry.protocol import Registry
from skeleton_app.registry.records import NodeDefaults
from skeleton_app.registry.static import StaticRegistry

if TYPE_CHECKING:
    from skeleton_app.config import Settings
    from skeleton_app.results import ClusterResult


def open_registry(settings: Settings, *, application_name: str = "skeleton") -> Registry:
    """PostgresRegistry when a DSN is configured (registry.dsn / SKELETON_DATABASE_URL),
    else the config file's static `nodes:` list. Connects lazily, on first use.
    """
    if settings.registry.dsn:
        return PostgresRegistry(
            settings.registry.dsn,
            defaults=NodeDefaults.from_settings(settings),
            connect_timeout=settings.registry.connect_timeout,
            application_name=application_name,
        )
    return StaticRegistry(settings.nodes, source=settings.source)


def record_result(
    settings: Settings,
    operation: str,
    arguments: Mapping[str, Any],
    selection: Sequence[str],
    result: ClusterResult[Any],
    *,
    who: str | None = None,
) -> int | None:
    """Journal one finished cluster operation (run + per-node rows) in one go.

    None when no database is configured. RegistryError when the database cannot be
    written: the caller (the CLI) warns once and keeps the operation's own exit code.
    """
    if not settings.registry.dsn:
        return None
    registry = open_registry(settings)
    try:
        run_id = registry.record_run(operation, arguments, selection, who)
        registry.record_node_results(run_id, result)
    finally:
        registry.close()
    return run_id

