"""Running rsync: `run_rsync` (one argv, streamed into the parsers, bounded and cancellable) and
`rsync` (patchwork's call shape: a Node or a Fabric Connection, a source, a remote target)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from skeleton_app.cancel import TOKEN, die_with_parent
from skeleton_app.config import SSHSettings
from skeleton_app.errors import NodeError, NodeErrorKind, UsageError
from skeleton_app.nodes import Node
from skeleton_app.ssh.openssh import ssh_argv
from skeleton_app.transfers.argv import (
    DEFAULT_PARTIAL_DIR,
    build_rsync_argv,
    protect_args_option,
    remote_spec,
)
from skeleton_app.transfers.output import FileChange, OutputParser, Progress, TransferResult

_STDERR_KEEP = 64 * 1024


def stderr_tail(proc: subprocess.Popen[bytes], name: str,
                keep: int = _STDERR_KEEP) -> tuple[bytearray, threading.Thread]:
    """Drain `proc`'s stderr on a started thread, keeping its last `keep` bytes in the
    returned buffer (a chatty child never blocks on a full pipe, nor fills our memory)."""
    err = bytearray()

    def drain() -> None:
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            err.extend(chunk)
            if len(err) > keep:
                del err[: len(err) - keep]

    reader = threading.Thread(target=drain, daemon=True, name=name)
    reader.start()
    return err, reader


def run_rsync(
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    on_change: Callable[[FileChange], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> TransferResult:
    """Run an rsync argv (from `build_rsync_argv`), streaming its output into the parsers.

    `timeout` bounds the whole run (wall clock): rsync is killed at the deadline. rsync stays in
    our process group, so Ctrl-C stops it with us; a cancel (`skeleton_app.cancel`) stops it
    too, and it dies with this process (`die_with_parent`). The environment gets LC_ALL=C:
    counters and escapes then look the same on every machine (names are unescaped by
    `decode_name`).
    """
    if shutil.which(argv[0]) is None:
        raise NodeError(NodeErrorKind.LOCAL,
                        f"{argv[0]} is not installed on this machine (apt-get install rsync)")
    env = dict(os.environ, LC_ALL="C")
    parser = OutputParser(on_change=on_change, on_progress=on_progress)
    started = time.monotonic()
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, preexec_fn=die_with_parent())
    err, reader = stderr_tail(proc, "rsync-stderr")
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        _stop(proc)

    timer = threading.Timer(timeout, kill) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        with TOKEN.on_cancel(lambda: _stop(proc)):
            assert proc.stdout is not None
            out_fd = proc.stdout.fileno()
            for chunk in iter(lambda: os.read(out_fd, 65536), b""):
                parser.feed(chunk)
            parser.close()
            code = proc.wait()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:  # an exception in a callback: do not leave rsync behind
            _stop(proc)
        reader.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    return TransferResult(
        argv=tuple(argv),
        exit_code=None if killed.is_set() else code,
        changes=tuple(parser.changes),
        stats=parser.stats,
        stderr=bytes(err).decode("utf-8", "replace"),
        duration=time.monotonic() - started,
        timed_out=killed.is_set(),
        output=tuple(parser.other),
        # rsync exits 20 on SIGINT: the terminal's Ctrl-C may reach it before our handler.
        interrupted=not killed.is_set() and (TOKEN.cancelled or code == 20),
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM first: rsync then stops its ssh child itself (SIGKILL would orphan it)."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _endpoint(target: Any, settings: SSHSettings | None) -> tuple[Node, SSHSettings]:
    """The node and SSH settings behind a Node, our Connection, or a plain Fabric one."""
    if isinstance(target, Node):
        return target, settings or SSHSettings()
    node = getattr(target, "node", None)
    connector = getattr(target, "connector", None)
    if isinstance(node, Node):
        if settings is None:
            settings = connector.settings if connector is not None else SSHSettings()
        return node, settings
    host = getattr(target, "host", None)
    if not isinstance(host, str):
        raise TypeError(f"expected a Node or a Fabric Connection, got {type(target).__name__}")
    keys = (getattr(target, "connect_kwargs", None) or {}).get("key_filename")
    identity = keys[0] if isinstance(keys, list | tuple) and keys else keys
    try:
        plain = Node(id="remote", host=host, port=int(getattr(target, "port", 22) or 22),
                     user=getattr(target, "user", None) or "root",
                     identity_file=identity if isinstance(identity, str) else None)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return plain, settings or SSHSettings()


def rsync(
    connection: Any,
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    target: str,
    *,
    exclude: Iterable[str] = (),
    delete: bool = False,
    rsync_opts: Sequence[str] = (),
    ssh_opts: Sequence[str] = (),
    settings: SSHSettings | None = None,
    filters: Iterable[str] = (),
    dry_run: bool = False,
    checksum: bool = False,
    compress: bool = True,
    partial_dir: str | None = DEFAULT_PARTIAL_DIR,
    timeout: float | None = None,
    io_timeout: int | None = None,
    rsync_path: str | None = None,
    on_change: Callable[[FileChange], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> TransferResult:
    """Upload local `source` (a path or several) to `target` on the connection's host.

    Like patchwork's: a trailing slash on a source directory sends its contents, without one
    the directory itself. `target` is a remote path and may hold spaces or quotes. `ssh_opts`
    are extra OpenSSH arguments (a list, e.g. `["-o", "Compression=no"]`); `rsync_opts` extra
    rsync arguments. Never raises for a failed transfer: check `.ok`, `classify_failure`.
    """
    node, ssh_settings = _endpoint(connection, settings)
    if isinstance(source, str | os.PathLike):
        sources = [os.fspath(source)]
    else:
        sources = [os.fspath(s) for s in source]
    # A plain Fabric Connection names no node: its key is checked by address, not by id.
    pin = isinstance(connection, Node) or isinstance(getattr(connection, "node", None), Node)
    rsh = [*ssh_argv(node, ssh_settings, extra=ssh_opts, pin=pin), "--"]
    argv = build_rsync_argv(
        sources, remote_spec(node.host, target), rsh=rsh, exclude=exclude, filters=filters,
        delete=delete, dry_run=dry_run, checksum=checksum, compress=compress,
        partial_dir=partial_dir, io_timeout=io_timeout, progress=on_progress is not None,
        protect_args=protect_args_option(), rsync_path=rsync_path, rsync_opts=rsync_opts,
    )
    return run_rsync(argv, timeout=timeout, on_change=on_change, on_progress=on_progress)

