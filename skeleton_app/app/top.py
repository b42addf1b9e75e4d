"""`skeleton cluster top`: where each refresh's picture comes from, and the live loop.

    source = picture_source(session, nodes)      # registry, else one probe per refresh
    run_live(source, interval=2.0, sort="load")  # until q or Ctrl-C

The loop draws with Rich Live on the alternate screen and reads single keys from stdin in
cbreak mode (no echo, no line buffering; ISIG kept, so Ctrl-C is still SIGINT, which the CLI
turns into the cancel token). The terminal's modes are restored on every way out: `q`,
Ctrl-C, an exception. With stdin not a terminal there are no keys; Ctrl-C still ends it.
With stdout not a terminal (a pipe, a file) each refresh prints one plain frame, as
`top -b` does.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

from skeleton_app import cancel
from skeleton_app.ops.picture import (
    ClusterPicture,
    bare_picture,
    probe_picture,
    queue_counter,
    registry_picture,
)

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

    from skeleton_app.app.commands import Session
    from skeleton_app.nodes import Node

PROBE_TIMEOUT = 5.0  # seconds: a refresh without a registry waits at most this for a node
Source = Callable[[], ClusterPicture]
Selector = Callable[[], Sequence["Node"]]


def picture_source(session: Session, nodes: Sequence[Node] | Selector) -> Source:
    """A function returning the cluster picture now: from the registry when one is
    configured (its connection reopens by itself after a failure), else from one status
    probe of every node (the history is what this process probed before).

    `nodes` may be a function selecting them, for a registry that was down when `top`
    started: it is called again at each refresh until it answers (`RegistryError` until
    then), and the view says the registry is down meanwhile."""
    from skeleton_app.errors import RegistryError
    from skeleton_app.registry.jobs import open_job_store

    settings = session.settings
    selected: list[Sequence[Node]] = [] if callable(nodes) else [nodes]
    if not settings.registry.dsn:
        cluster = session.cluster()
        last: list[ClusterPicture] = []

        def probe() -> ClusterPicture:
            if not selected:
                assert callable(nodes)
                selected.append(nodes())
            picture = probe_picture(cluster, selected[0], timeout=PROBE_TIMEOUT,
                                    previous=last[-1] if last else None)
            last[:] = [picture]
            return picture

        return probe

    jobs = queue_counter(lambda: open_job_store(settings, application_name="skeleton-top"))

    def from_registry() -> ClusterPicture:
        try:
            if not selected:
                assert callable(nodes)
                selected.append(nodes())
            registry = session.registry()
        except RegistryError as exc:
            return bare_picture(selected[0] if selected else (), source="registry",
                                problem=f"registry down, retrying: {exc}")
        assert registry is not None  # a DSN is configured
        return registry_picture(registry, selected[0],
                                stale_after=settings.registry.stale_after, jobs=jobs)

    return from_registry


class _Frame:
    """The renderable Live redraws: laid out for the console's size at each refresh, so a
    resized terminal gets a frame that fits."""

    def __init__(self, picture: ClusterPicture, sort: str, keys: bool):
        self.picture, self.sort, self.keys = picture, sort, keys

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from skeleton_app.app.views.top import frame

        yield frame(self.picture, width=options.max_width,
                    height=options.height or console.height, sort=self.sort, keys=self.keys)


@contextlib.contextmanager
def key_mode(stream: IO[str]) -> Iterator[int | None]:
    """Single keys from `stream` (its fd), or None when it is not a terminal. Cbreak: no echo,
    no line editing; the saved modes are put back whatever ends the block."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        yield None
        return
    if not os.isatty(fd):
        yield None
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def _wait(fd: int | None, seconds: float) -> bytes | None:
    """Wait up to `seconds` for a key or a cancel: the keys read (b"" at end of input),
    None when the time ran out or the token was set."""
    watch: list[int] = [cancel.TOKEN.fileno()]
    if fd is not None:
        watch.append(fd)
    ready, _, _ = select.select(watch, [], [], max(0.0, seconds))
    if fd is not None and fd in ready:
        return os.read(fd, 64)
    return None


def run_live(source: Source, *, interval: float, sort: str,
             console: Console | None = None, stdin: IO[str] | None = None) -> None:
    """Redraw every `interval` seconds until `q` or Ctrl-C (the cancel token); at the end
    of input (the terminal went away) it keeps drawing without keys. `s` cycles the sort
    key and redraws at once."""
    from rich.console import Console
    from rich.live import Live

    from skeleton_app.app.views.top import next_sort

    console = console or Console(highlight=False)
    with key_mode(stdin or sys.stdin) as fd, Live(
            console=console, screen=True, auto_refresh=False, transient=True,
            redirect_stdout=False, redirect_stderr=False) as live:
        picture: ClusterPicture | None = None
        due = 0.0
        while not cancel.cancelled():
            if time.monotonic() >= due:
                picture = source()
                due = time.monotonic() + interval
                live.update(_Frame(picture, sort, fd is not None), refresh=True)
            got = _wait(fd, due - time.monotonic())
            if got is None:
                continue
            if got == b"":  # the terminal went away: no more keys, keep drawing
                fd = None
                continue
            # Only what was typed before an escape sequence: arrows and function keys send
            # letters too (F2 is ESC O Q).
            typed = got.split(b"\x1b")[0]
            if b"q" in typed:
                return
            if b"s" in typed and picture is not None:
                for _ in range(typed.count(b"s")):
                    sort = next_sort(sort)
                live.update(_Frame(picture, sort, True), refresh=True)


def run_batch(source: Source, *, interval: float, sort: str, out: IO[str],
              width: int, once: bool = False) -> ClusterPicture:
    """Plain frames on a pipe or a file, every `interval` seconds (`top -b`), until Ctrl-C;
    one frame with `once`. Returns the last picture."""
    from skeleton_app.app.views.top import frame_text

    while True:
        picture = source()
        out.write(frame_text(picture, width=width, height=None, sort=sort) + "\n")
        out.flush()
        if once or cancel.TOKEN.wait(interval):
            return picture


def picture_json(picture: ClusterPicture, sort: str) -> dict[str, Any]:
    """`top --once --json`: the picture, nodes in the sort order."""
    from skeleton_app.app.views.top import sort_nodes

    data = picture.as_dict()
    data["nodes"] = [n.as_dict() for n in sort_nodes(picture.nodes, sort)]
    data["sort"] = sort
    return data
