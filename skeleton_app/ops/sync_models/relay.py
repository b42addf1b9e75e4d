"""Relaying a job through the controller, for nodes that cannot reach each other (`relay=True`)
or a target no peer can serve: a tar streams from the holder's SSH channel into every
member's, piped in memory, nothing written here.

The controller checks every header it relays first (`skeleton_app.tarcheck`): a stream that
holds what the manifest does not list is stopped before one byte of it goes on.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from typing import IO, Any

from skeleton_app import cancel
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ops.sync_models.answer import parse_answer
from skeleton_app.ops.sync_models.chain import Job
from skeleton_app.ops.sync_models.context import RunContext
from skeleton_app.ops.sync_models.plan import entry_of, nul_list
from skeleton_app.ops.sync_models.progress import POLL_INTERVAL
from skeleton_app.ssh.openssh import ssh_argv
from skeleton_app.tarcheck import TarGuard

RELAY_CHUNK = 1 << 20


def stream_guard(ctx: RunContext, job: Job) -> TarGuard:
    """The members a relayed stream may hold: the job's files at the manifest's sizes."""
    allowed = {path.encode("utf-8", "surrogateescape"): entry_of(ctx.manifests, path).size
               for path in job.files}
    return TarGuard(allowed)


def relay(ctx: RunContext, job: Job, holder: Node) -> str:
    """Stream the job's files from `holder` into every pending member; returns what went
    wrong ("" when the stream ended well: each member's seal report is in `job.reports`)."""
    job.members = [t for t in job.members if t.status == "pending"]
    ctx.remote.call(holder, "upload", job=job.id,
                    job_files={"job.sh": ctx.job_sh(job.id, holder, None),
                               "send.lst": nul_list(job.files)})
    procs: dict[str, subprocess.Popen[bytes]] = {}
    errs: dict[str, bytearray] = {}
    outs: dict[str, bytearray] = {}
    readers: list[threading.Thread] = []

    def collect(stream: IO[bytes], buf: bytearray, keep: int) -> None:
        fd = stream.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            buf.extend(chunk)
            del buf[:-keep]

    def ssh(node: Node, action: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        argv = [*ssh_argv(node, ctx.settings.ssh, extra=["-T"]), "--", node.host,
                ctx.remote.remote_command(action, job.id)]
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE,
                                preexec_fn=cancel.die_with_parent(), **kwargs)
        streams = [(proc.stderr, errs.setdefault(node.id, bytearray()), 4096)]
        if action == "recv":
            # stdout: the member's seal report (a few bytes, once its stream has ended).
            streams.append((proc.stdout, outs.setdefault(node.id, bytearray()), 65536))
        for stream, buf, keep in streams:
            th = threading.Thread(target=collect, args=(stream, buf, keep), daemon=True,
                                  name="relay-reader")
            th.start()
            readers.append(th)
        return proc

    deadline = time.monotonic() + ctx.deadline(job.total)
    src = None

    def stop_all() -> None:  # Ctrl-C: the streams stop at once (the finally reaps)
        for proc in [*procs.values(), *([src] if src is not None else [])]:
            with contextlib.suppress(OSError):
                proc.kill()

    stopping = contextlib.ExitStack()
    stopping.enter_context(cancel.TOKEN.on_cancel(stop_all))
    try:
        for t in job.members:
            procs[t.node.id] = ssh(t.node, "recv", stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE)
        src = ssh(holder, "send-stdout", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert src.stdout is not None
        moved = 0
        started = time.monotonic()
        last = 0.0
        alive = dict(procs)
        out_fd = src.stdout.fileno()
        guard = stream_guard(ctx, job)
        for chunk in iter(lambda: os.read(out_fd, RELAY_CHUNK), b""):
            if time.monotonic() > deadline:
                raise NodeError(NodeErrorKind.TIMEOUT, "relay exceeded its deadline",
                                node=holder.id)
            problem = guard.feed(chunk)
            if problem is not None:
                # Not one byte of this chunk goes on; the receivers are killed below
                # (before their stream ends, so none of them seals).
                for t in job.members:
                    job.reports[ctx.index(t.node)] = ("hostile", problem)
                return f"relay from {holder.id} stopped: {problem}"
            for node_id, proc in list(alive.items()):
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(chunk)
                except (BrokenPipeError, OSError):
                    alive.pop(node_id)
            moved += len(chunk)
            now = time.monotonic()
            if now - last >= POLL_INTERVAL:
                last = now
                for t in job.members:
                    if t.node.id in alive:
                        ctx.report(t, "transfer", min(moved, job.total), job.total,
                                   moved / max(now - started, 1e-6))
        for proc in alive.values():
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        code = src.wait(timeout=max(1.0, deadline - time.monotonic()))
        for proc in procs.values():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        for th in readers:
            th.join(timeout=5)
        for report in outs.values():
            with contextlib.suppress(NodeError, ValueError):
                job.absorb(parse_answer(bytes(report)))
        if code != 0:
            tail = bytes(errs.get(holder.id, b"")).decode("utf-8", "replace").strip()
            return f"relay from {holder.id} failed (exit {code}): {tail}"
        return ""
    finally:
        for proc in [*procs.values(), *([src] if src is not None else [])]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for th in readers:
            th.join(timeout=5)
        stopping.close()
