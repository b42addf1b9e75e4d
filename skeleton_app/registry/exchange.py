"""Nodes in and out of a registry as config.yaml's `nodes:` list (`skeleton nodes import` /
`export`): every entry is validated before any is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from skeleton_app.errors import UsageError
from skeleton_app.nodes import Node, validate_node_id
from skeleton_app.registry.protocol import Registry
from skeleton_app.registry.records import FieldError, NodeEntry, NodeSpec


def parse_node_entries(items: object, *, source: str = "nodes") -> list[NodeSpec]:
    """Validate a config.yaml-style `nodes:` list. UsageError names the entry and the key."""
    if not isinstance(items, list):
        raise UsageError(f"{source}: expected a list of node entries")
    specs: list[NodeSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{source}[{i}]"
        try:
            spec = NodeSpec.from_dict(item)
        except FieldError as exc:
            name = item.get("id") if isinstance(item, Mapping) else None
            if isinstance(name, str) and _is_node_id(name):
                where = f"{source}[{name}]"
            raise UsageError(f"{where}: {exc}") from None
        except TypeError as exc:
            raise UsageError(f"{where}: {exc}") from None
        if spec.id in seen:
            raise UsageError(f"{source}[{spec.id}]: duplicate node id")
        seen.add(spec.id)
        specs.append(spec)
    return specs


def _is_node_id(value: str) -> bool:
    try:
        validate_node_id(value)
    except ValueError:
        return False
    return True


def node_entries(nodes: Sequence[NodeSpec | NodeEntry | Node]) -> list[dict[str, Any]]:
    """The config.yaml `nodes:` form of nodes (for `skeleton nodes export`)."""
    out: list[dict[str, Any]] = []
    for item in nodes:
        if isinstance(item, NodeEntry):
            item = item.spec
        elif isinstance(item, Node):
            item = NodeSpec.from_node(item)
        out.append(item.to_dict())
    return out


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: tuple[str, ...]
    updated: tuple[str, ...]


def import_nodes(registry: Registry, items: object, *, source: str = "nodes") -> ImportResult:
    """Upsert every entry of a `nodes:` list; all entries are validated before any is written."""
    specs = parse_node_entries(items, source=source)
    added: list[str] = []
    updated: list[str] = []
    for spec in specs:
        (added if registry.upsert_node(spec) else updated).append(spec.id)
    return ImportResult(added=tuple(added), updated=tuple(updated))


def export_nodes(registry: Registry) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """Every valid registered node (enabled or not) in `nodes:` form, and skipped-row warnings."""
    entries, warnings = registry.list_entries(enabled_only=False)
    return node_entries(entries), warnings
