"""What `skeleton jack link|unlink|mesh` show: one line per end for link and unlink (a
failure is one clear line naming the node, the log's last lines under it), the mesh as one
table (or JSON). Every value from a node is node text: the table sanitizes it, the lines
here do too.
"""

from __future__ import annotations

import json
import sys
from typing import IO

from skeleton_app.app.views.common import error_lines, sanitize, table
from skeleton_app.ops.jack.links import LinkEndOutcome, Mesh
from skeleton_app.results import ClusterResult


def link_text(result: ClusterResult[LinkEndOutcome], out: IO[str] | None = None) -> None:
    """`node-01: hub -> node-02: up (pid 123)`; errors (unreachable, ...) as elsewhere."""
    out = out or sys.stdout
    for node, r in result.items():
        o = r.outcome
        if o is None:
            continue
        arrow = "->" if o.role == "hub" else "<-"
        port = f" port {o.port}" if o.port is not None and o.role == "hub" else ""
        out.write(f"{node}: {o.role}{port} {arrow} {o.peer}: {sanitize(o.summary)}\n")
        if not r.ok:
            for line in o.log_tail[-8:]:
                out.write(f"    {sanitize(line)}\n")
    error_lines(result, out)
    for warning in result.warnings:
        out.write(f"warning: {sanitize(warning)}\n")


def link_json(result: ClusterResult[LinkEndOutcome]) -> str:
    return result.to_json()


def mesh_text(mesh: Mesh, out: IO[str] | None = None) -> None:
    """One row per link: ends, channels, state (and why), queue, buffer strategy, port."""
    out = out or sys.stdout
    rows: list[list[str]] = []
    for s in mesh.links:
        r = s.record
        rows.append([
            s.hub, s.client, str(r.channels) if r else "-",
            s.state + (f": {s.detail}" if s.detail else ""),
            str(r.queue) if r else "-", str(r.buffer_strategy) if r else "-",
            str(s.port) if s.port is not None else "-",
            r.made_by if r else "-"])
    if rows:
        table("JackTrip links", ["hub", "client", "channels", "state", "queue",
                                 "bufstrategy", "port", "made by"], rows, file=out)
    else:
        out.write("no JackTrip links recorded and none running\n")
    error_lines(mesh.result, out)
    for warning in mesh.result.warnings:
        out.write(f"warning: {sanitize(warning)}\n")


def mesh_json(mesh: Mesh) -> str:
    return json.dumps(mesh.as_dict(), indent=2, ensure_ascii=False)
