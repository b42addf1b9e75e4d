"""`skeleton jack status|start|stop|connect|disconnect` for people: a row per node, then (for
status) a row per port with what it is connected to. Port and client names are node text:
`table` sanitizes every cell."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import IO

from skeleton_app.app.views.common import sanitize, table
from skeleton_app.nodes import Node
from skeleton_app.ops.jack.links import LinkState
from skeleton_app.ops.jack.server import JackConnectOutcome, JackServerOutcome, state_words
from skeleton_app.results import ClusterResult


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def server_text(result: ClusterResult[JackServerOutcome], nodes: Sequence[Node],
                out: IO[str]) -> None:
    """A row per node: ok, server state, pid, rate, period, xruns, ports; for status, the
    ports table after it; a start that failed shows jackd's last log lines."""
    rows: list[list[str]] = []
    port_rows: list[list[str]] = []
    tails: list[tuple[str, tuple[str, ...]]] = []
    for node in nodes:
        r = result.get(node.id)
        if r is None:
            continue
        if r.error_kind is not None or r.outcome is None:
            rows.append([node.id, "✗", r.summary(), "", "", "", "", ""])
            continue
        o = r.outcome
        # The facts have their own columns: the state and what went wrong.
        summary = state_words(o) + (f": {o.message}" if o.message else "")
        if o.log_tail:
            tails.append((node.id, o.log_tail[-10:]))  # under the table: a cell stays a line
        ok = "✓" if r.ok else "✗"
        rows.append([node.id, ok, summary, _number(o.pid), _number(o.sample_rate),
                     _number(o.period), _number(o.xruns),
                     str(len(o.ports)) if o.up and o.action == "status" else "-"])
        for port in o.ports:
            port_rows.append([node.id, port.name, port.direction or "?",
                              ", ".join(port.connections) or "-"])
    table(None, ["node", "ok", "jack", "pid", "rate", "period", "xruns", "ports"], rows,
          file=out)
    if port_rows:
        out.write("\n")
        table(None, ["node", "port", "direction", "connected to"], port_rows, file=out)
    for node_id, tail in tails:
        out.write(f"\n{node_id}: the last lines of jackd's log:\n")
        out.writelines(f"  | {sanitize(line)}\n" for line in tail)
    for warning in result.warnings:
        out.write(f"warning: {sanitize(warning)}\n")


def dropped_text(dropped: Mapping[str, Sequence[LinkState]], out: IO[str]) -> None:
    """`jack status`: one line per recorded JackTrip link of a node that is not up."""
    for node, links in dropped.items():
        for link in links:
            why = f": {link.detail}" if link.detail else ""
            out.write(sanitize(f"{node}: link {link.hub} <-> {link.client} {link.state}{why}"
                               " (skeleton jack link to restore it)") + "\n")


def status_json(result: ClusterResult[JackServerOutcome],
                dropped: Mapping[str, Sequence[LinkState]]) -> str:
    """The result's JSON with `dropped_links` (node id -> the links that are not up)."""
    data = result.to_dict()
    data["dropped_links"] = {node: [link.as_dict() for link in links]
                             for node, links in dropped.items()}
    return json.dumps(data, indent=2, ensure_ascii=False)


def connect_text(result: ClusterResult[JackConnectOutcome], out: IO[str],
                 err: IO[str]) -> None:
    """One line per node: what was done (stdout), or why not (stderr)."""
    for node, r in result.items():
        if r.error_kind is not None or r.outcome is None:
            err.write(f"skeleton: {node}: {sanitize(r.summary())}\n")
        elif r.ok:
            out.write(f"{node}: {sanitize(r.outcome.summary)}\n")
        else:
            err.write(f"skeleton: {node}: {sanitize(r.outcome.summary)}\n")
