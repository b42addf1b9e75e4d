"""`cluster top`'s frame: the cluster picture (ops/picture.py) as lines of at most `width`
cells and at most `height` lines, sorted by a key, with load and memory sparklines.

The layout is computed here, not by Rich's table: a live view must fit the terminal exactly
(80x24 included), so columns are dropped from the right when narrow (the least useful
first), the sparklines take what width is left, and nodes beyond the last line become
"+N more". Every cell is a `rich.text.Text` built from `sanitize`d text, never markup: a
node's row is untrusted, and a `[red]` or an ESC in it is shown as the characters it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text

from skeleton_app.app.views.common import format_duration, sanitize
from skeleton_app.ops.picture import ClusterPicture, NodePicture

SORT_KEYS = ("name", "load", "mem", "gpu", "age")
SPARK = "▁▂▃▄▅▆▇█"
MIN_SPARK = 5
MAX_SPARK = 24
NODE_WIDTH = (4, 16)  # the node column: at least, at most

_DAEMON = {"running": "run", "stopped": "stop", "starting": "start", "stopping": "stop…"}


def fit_points(values: Sequence[float | None], width: int) -> list[float | None]:
    """`values` in at most `width` points: runs of consecutive values averaged, None where
    a run has no value."""
    if len(values) <= width:
        return list(values)
    out: list[float | None] = []
    for i in range(width):
        run = [v for v in values[i * len(values) // width:(i + 1) * len(values) // width]
               if v is not None]
        out.append(sum(run) / len(run) if run else None)
    return out


def sparkline(values: Sequence[float | None], width: int, *,
              high: float | None = None) -> str:
    """`values` (oldest first) as at most `width` block characters, right-aligned; more
    values than cells are merged (`fit_points`); a missing value is a space. Scaled from 0
    to `high` (default: the largest value shown, at least 1.0, so a quiet node draws low
    bars rather than noise blown up to full height)."""
    if width <= 0:
        return ""
    shown = fit_points(values, width)
    top = high if high is not None else max([1.0, *(v for v in shown if v is not None)])
    cells = []
    for value in shown:
        if value is None:
            cells.append(" ")
            continue
        level = 0 if top <= 0 else round(min(1.0, max(0.0, value / top)) * (len(SPARK) - 1))
        cells.append(SPARK[level])
    return "".join(cells).rjust(width)


def number(value: float | None) -> str:
    """At most 5 characters: '0.42', '12.5', '1234', '1e6', '1e300'; '-' for unknown."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    if value < 99_999.5:
        return f"{value:.0f}"
    return f"{value:.0e}".replace("e+0", "e").replace("e+", "e")


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{round(min(1.0, max(0.0, fraction)) * 100)}%"


def _age(node: NodePicture) -> str:
    if node.heartbeat_age is None:
        return "-"
    return format_duration(node.heartbeat_age) + ("!" if node.stale else "")


def _sort_key(key: str) -> Callable[[NodePicture], tuple[float, str]]:
    # Biggest first (the node to look at is on top), unknown values last, ties by name.
    def biggest(get: Callable[[NodePicture], float | None]
                ) -> Callable[[NodePicture], tuple[float, str]]:
        def k(n: NodePicture) -> tuple[float, str]:
            value = get(n)
            return (float("inf") if value is None else -value, n.id)
        return k

    if key == "load":
        return biggest(lambda n: n.latest.load1 if n.latest else None)
    if key == "mem":
        return biggest(lambda n: n.latest.mem_used_fraction if n.latest else None)
    if key == "gpu":
        return biggest(lambda n: n.gpu_util)
    if key == "age":  # the stalest first; a node never heard of is the stalest of all
        return biggest(lambda n: float("inf") if n.heartbeat_age is None
                       else n.heartbeat_age)
    return lambda n: (0.0, n.id)


def sort_nodes(nodes: Sequence[NodePicture], key: str) -> list[NodePicture]:
    if key not in SORT_KEYS:
        raise ValueError(f"unknown sort key {key!r}: expected one of {', '.join(SORT_KEYS)}")
    return sorted(nodes, key=_sort_key(key))


def next_sort(key: str) -> str:
    return SORT_KEYS[(SORT_KEYS.index(key) + 1) % len(SORT_KEYS)]


# ---------------------------------------------------------------------------------- layout


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    header: str
    width: int
    cell: Callable[[NodePicture, int], str]
    right: bool = False


def _latest(get: Callable[[NodePicture], float | None]) -> Callable[[NodePicture, int], str]:
    return lambda n, _w: percent(get(n))


_FIXED = [  # after node, state and age, in the order they are given up when narrow
    _Column("load1", "load", 5, lambda n, _w: number(n.latest.load1 if n.latest else None),
            right=True),
    _Column("mem", "mem", 4, _latest(lambda n: n.latest.mem_used_fraction if n.latest
                                     else None), right=True),
    _Column("jobs", "jobs", 4, lambda n, _w: "-" if n.jobs_running is None
            else str(n.jobs_running), right=True),
    _Column("gpu", "gpu", 4, _latest(lambda n: None if n.gpu_util is None
                                     else n.gpu_util / 100), right=True),
    _Column("gmem", "gmem", 4, _latest(lambda n: n.gpu_mem_fraction), right=True),
    _Column("disk", "disk", 4, _latest(lambda n: n.latest.disk_used_fraction if n.latest
                                       else None), right=True),
    _Column("version", "version", 8, lambda n, _w: n.code_version or "-"),
]
_DROP_ORDER = ["version", "gmem", "disk", "gpu", "jobs", "mem_spark", "mem", "load_spark"]


def _layout(nodes: Sequence[NodePicture], width: int) -> list[_Column]:
    node_w = max(NODE_WIDTH[0], min(NODE_WIDTH[1], max((len(n.id) for n in nodes),
                                                       default=4)))
    head = [
        _Column("node", "node", node_w, lambda n, _w: n.id),
        _Column("state", "state", 5, lambda n, _w: _DAEMON.get(n.daemon or "", "?")),
        _Column("age", "age", 6, lambda n, _w: _age(n), right=True),
    ]
    load_spark = _Column("load_spark", "trend", MIN_SPARK,
                         lambda n, w: sparkline(n.load_history, w))
    mem_spark = _Column("mem_spark", "trend", MIN_SPARK,
                        lambda n, w: sparkline(n.mem_history, w, high=1.0))
    by_name = {c.name: c for c in _FIXED}
    order = ["load1", "load_spark", "mem", "mem_spark", "jobs", "gpu", "gmem", "disk",
             "version"]
    chosen = {"load_spark": load_spark, "mem_spark": mem_spark, **by_name}
    names = list(order)

    def used(names: list[str]) -> int:
        cols = head + [chosen[n] for n in names]
        return sum(c.width for c in cols) + len(cols) - 1

    for drop in _DROP_ORDER:
        if used(names) <= width:
            break
        names.remove(drop)
    columns = head + [chosen[n] for n in names]
    spare = width - used(names)
    sparks = [c for c in columns if c.name.endswith("_spark")]
    if sparks and spare > 0:  # the sparklines share what is left, up to MAX_SPARK each
        grow = min(MAX_SPARK - MIN_SPARK, spare // len(sparks))
        columns = [_Column(c.name, c.header, c.width + grow, c.cell, c.right)
                   if c in sparks else c for c in columns]
    return columns


def _fit(text: str, width: int, *, right: bool = False) -> Text:
    # One cell of node text: control characters shown (sanitize), one line, cut to `width`
    # cells (wide characters counted as two).
    cell = Text(sanitize(text).replace("\n", " ").replace("\t", " "), no_wrap=True)
    cell.truncate(width, overflow="ellipsis")
    pad = width - cell.cell_len
    if pad > 0:
        cell = Text(" " * pad) + cell if right else cell + Text(" " * pad)
    return cell


def _line(cells: Sequence[Text], width: int, style: str = "") -> Text:
    line = Text(" ").join(cells)
    line.truncate(width, overflow="crop")
    if style:
        line.stylize(style)
    return line


def frame(picture: ClusterPicture, *, width: int, height: int | None, sort: str = "load",
          keys: bool = False, now: float | None = None) -> Text:
    """The whole view: a title line, the registry's problem (if any), the header and one
    line per node, all within `width` x `height` (None: as many lines as there are nodes)."""
    width = max(width, 20)
    nodes = sort_nodes(picture.nodes, sort)
    columns = _layout(nodes, width)
    clock = time.strftime("%H:%M:%S", time.localtime(now or picture.at))
    title = (f"skeleton top  {len(nodes)} node{'s' if len(nodes) != 1 else ''}"
             f"  sort {sort}  {picture.source}  {clock}")
    if keys:
        title += "  (q quit, s sort)"
    lines = [_line([_fit(title, width)], width, "bold")]
    if picture.problem:
        lines.append(_line([_fit(picture.problem, width)], width, "bold red"))
    lines.append(_line([_fit(c.header, c.width, right=c.right) for c in columns], width,
                       "reverse"))
    room = None if height is None else max(1, height - len(lines))
    shown = nodes
    if room is not None and len(nodes) > room:
        shown = nodes[: room - 1]
    for node in shown:
        if node.error and node.latest is None:
            head = [_fit(c.cell(node, c.width), c.width, right=c.right) for c in columns[:3]]
            used = sum(c.width + 1 for c in columns[:3])
            lines.append(_line([*head, _fit(node.error, max(1, width - used))], width,
                               "yellow"))
            continue
        style = "dim" if node.daemon in ("stopped", None) or node.stale else ""
        lines.append(_line([_fit(c.cell(node, c.width), c.width, right=c.right)
                            for c in columns], width, style))
    if len(shown) < len(nodes):
        lines.append(_line([_fit(f"+{len(nodes) - len(shown)} more", width)], width, "dim"))
    return Text("\n", no_wrap=True).join(lines)


def frame_text(picture: ClusterPicture, *, width: int, height: int | None,
               sort: str = "load") -> str:
    """The frame as plain text (tests, `--once` into a file)."""
    return frame(picture, width=width, height=height, sort=sort).plain


COLUMNS = ["node", "daemon", "heartbeat", "load1", "mem", "gpu", "gpu_mem", "disk", "jobs",
           "version", "error"]


def table_rows(picture: ClusterPicture, sort: str = "load") -> list[list[str]]:
    """`top --once --format plain|tsv|table`: one row per node for `views.common.table`."""
    rows = []
    for n in sort_nodes(picture.nodes, sort):
        latest = n.latest
        rows.append([
            n.id, n.daemon or "-", _age(n), number(latest.load1 if latest else None),
            percent(latest.mem_used_fraction if latest else None),
            percent(None if n.gpu_util is None else n.gpu_util / 100),
            percent(n.gpu_mem_fraction),
            percent(latest.disk_used_fraction if latest else None),
            "-" if n.jobs_running is None else str(n.jobs_running),
            n.code_version or "-", n.error or "",
        ])
    return rows
