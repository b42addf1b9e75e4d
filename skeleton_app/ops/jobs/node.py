"""The node side of one job attempt, over a `Runner` (payloads/job.sh on the node).

An attempt lives in `<app_dir>/jobs/<job id>/a<n>/` on its node. The command runs detached
(`setsid`, its process group recorded), so a dropped SSH channel neither kills it nor loses
its exit status, and a later dispatcher can still find and kill it. Outputs are written
under a temporary name and published by rename; a `file` output that is missing or empty
is a failure even when the command exits 0 (espeak-ng does that on a bad option).

The dispatcher's part, per attempt:

    command = node.render(node_, job_id, n, engine, input_name=..., text=...)
    pgid = node.start(runner, node_, job_id, n, command, input_name=..., input_data=...,
                      timeout=...)                    # one round trip; record pgid
    # or: pgid, end = node.start_wait(...)            # start, and the end if it came quickly
    while (end := node.wait(runner, node_, job_id, n, engine=engine, slice_s=2.0,
                            max_bytes=...)) is None:  # one round trip per slice
        ...renew the lease...
    node.failure(end, engine)                         # None: done; else why it failed
    node.kill(runner, node_, job_id, n, pgid=pgid)    # cancel, orphan or clean-up

Every value reaches the node's shell as a quoted argument; ids and attempt numbers are
integers. The reply of `wait` carries the output base64-encoded in the payload framing
(`payloads.framing`), so binary output (a WAV) is safe; with the real connector the bytes
are collected through `RunOptions.sink`, since a command's `stdout` string keeps only the
head and tail of a long reply.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import shlex
import threading
from dataclasses import dataclass

from skeleton_app import payloads
from skeleton_app.engines import Engine
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.payloads import framing
from skeleton_app.ssh.runner import Runner, RunOptions

SCRIPT = "job.sh"
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of an attempt's process group
_MARGIN = 30.0  # seconds a round trip may take beyond the node-side wait (the output's bytes)
_INPUT_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}\Z")
_DIST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")  # a requirement's distribution name
OUTPUT_NAME = "output"  # the output file is out/output<suffix> in the attempt's directory


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How an attempt's command ended on its node."""

    exit_code: int
    output: bytes  # stdout (output: stdout) or the output file (output: file)
    output_truncated: bool  # larger than the limit: the job fails, saying so
    stderr_tail: str
    seconds: float  # the command's own run time, measured on the node
    output_missing: bool = False  # output: file, and the command wrote none (or an empty one)
    output_size: int = 0  # the whole output's size on the node (also when truncated)


def job_dir(node: Node, job_id: int, n: int) -> str:
    """`<app_dir>/jobs/<job id>/a<n>` (ids are integers: no node-supplied text in it)."""
    return f"{node.app_dir.rstrip('/')}/jobs/{int(job_id)}/a{int(n)}"


def input_path(node: Node, job_id: int, n: int, input_name: str) -> str:
    """Where the input file is on the node (the command's `{input}`)."""
    return f"{job_dir(node, job_id, n)}/in/{_checked_name(input_name)}"


def output_name(engine: Engine) -> str:
    return OUTPUT_NAME + engine.output_suffix


def output_path(node: Node, job_id: int, n: int, engine: Engine) -> str:
    """Where the command writes its output file (`{output}`): in `tmp/`, which job.sh
    renames to `out/` when the command has ended, so a reader never sees half a file."""
    return f"{job_dir(node, job_id, n)}/tmp/{output_name(engine)}"


def render(node: Node, job_id: int, n: int, engine: Engine, *, input_name: str | None = None,
           text: str | None = None) -> str:
    """The attempt's command: `engine`'s template with this attempt's paths (absolute, every
    value shell-quoted by `Engine.render`). ValueError when the engine needs a value that is
    missing (an input name, a text)."""
    return engine.render(
        input_path=input_path(node, job_id, n, input_name) if input_name else None,
        output_path=output_path(node, job_id, n, engine) if engine.output == "file" else None,
        text=text, job_dir=job_dir(node, job_id, n))


def start(runner: Runner, node: Node, job_id: int, n: int, command: str, *,
          input_name: str | None, input_data: bytes | None, timeout: float) -> int:
    """Create the attempt's directory, write the input (sha256 checked on the node), start
    `command` detached in the app dir; the remote process group id. NodeError on failure.
    Sent again for the same attempt, it starts nothing and gives the first start's group."""
    if (input_name is None) != (input_data is None):
        raise ValueError("input_name and input_data go together")
    name = _checked_name(input_name) if input_name is not None else ""
    digest = hashlib.sha256(input_data).hexdigest() if input_data is not None else ""
    # `sh -c SCRIPT`: stdin carries the input file, so the script goes on the command line.
    line = shlex.join(["sh", "-c", payloads.text(SCRIPT), SCRIPT, "start", node.app_dir,
                       str(int(job_id)), str(int(n)), name, digest, command])
    r = runner.run(node, line, RunOptions(timeout=timeout, stdin=input_data or b""))
    _raise_node_error(node, r.error_kind, r.error)
    frame = framing.parse(r.stdout)
    head = framing.fields("state", frame.get("state"))
    pgid = head.get("pgid", "")
    if r.exit_code == 0 and head.get("state") in ("started", "already-started") \
            and pgid.isascii() and pgid.isdigit() and int(pgid) > 1:
        return int(pgid)
    why = _why(frame, r.stderr, r.exit_code)
    raise NodeError(NodeErrorKind.LOCAL, f"cannot start job {job_id} attempt {n}: {why}",
                    node=node.id)


def start_wait(runner: Runner, node: Node, job_id: int, n: int, command: str, *,
               input_name: str | None, input_data: bytes | None, timeout: float,
               engine: Engine, slice_s: float, max_bytes: int,
               remove: bool = False) -> tuple[int, AttemptEnd | None]:
    """`start`, then `wait` up to `slice_s`, in one round trip (job.sh `run`): the remote
    process group id, and the end (None: it still runs; go on with `wait`). A command that
    ends within the slice costs one ssh exec instead of two. NodeError as `start` when it
    cannot start, as `wait` when the wait fails after the start."""
    if (input_name is None) != (input_data is None):
        raise ValueError("input_name and input_data go together")
    name = _checked_name(input_name) if input_name is not None else ""
    digest = hashlib.sha256(input_data).hexdigest() if input_data is not None else ""
    out = "-" if engine.output == "stdout" else output_name(engine)
    line = shlex.join(["sh", "-c", payloads.text(SCRIPT), SCRIPT, "run", node.app_dir,
                       str(int(job_id)), str(int(n)), name, digest,
                       f"{max(0.0, slice_s):.1f}", str(max(0, int(max_bytes))), out,
                       "1" if remove else "0", command])
    sink = _Collector(limit=_reply_limit(max_bytes))
    r = runner.run(node, line, RunOptions(timeout=timeout + slice_s, stdin=input_data or b"",
                                          sink=sink))
    _raise_node_error(node, r.error_kind, r.error)
    text = sink.text() if sink.used else r.stdout
    if sink.overflow:  # it started (its kill finds the group in the attempt's directory)
        raise NodeError(NodeErrorKind.ERROR, f"job {job_id} attempt {n}: the reply is larger"
                        f" than {max_bytes} bytes of output allow", node=node.id)
    frame = framing.parse(text)
    pgid = frame.first("pgid") or ""
    if not (pgid.isascii() and pgid.isdigit() and int(pgid) > 1):
        why = _why(frame, r.stderr, r.exit_code)
        raise NodeError(NodeErrorKind.LOCAL, f"cannot start job {job_id} attempt {n}: {why}",
                        node=node.id)
    return int(pgid), parse_wait(text, node=node.id, job_id=job_id, n=n,
                                 exit_code=r.exit_code, stderr=r.stderr)


def wait(runner: Runner, node: Node, job_id: int, n: int, *, engine: Engine,
         slice_s: float, max_bytes: int, remove: bool = False) -> AttemptEnd | None:
    """Wait at most `slice_s` for the command to end; its end with the output fetched, or
    None if it still runs. NodeError (UNREACHABLE, TIMEOUT, ...) when the node is lost;
    LOST too when the attempt's process is gone from the node without an exit status (the
    node rebooted, or someone killed it) or its directory is gone. `remove`: the node removes
    the attempt's directory once it has ended and its reply is written (saves `kill`'s round
    trip; a reply then lost in transit loses the attempt, and the job runs again)."""
    out = "-" if engine.output == "stdout" else output_name(engine)
    command, script = payloads.invocation(
        SCRIPT, "wait", node.app_dir, str(int(job_id)), str(int(n)),
        f"{max(0.0, slice_s):.1f}", str(max(0, int(max_bytes))), out, "1" if remove else "0")
    sink = _Collector(limit=_reply_limit(max_bytes))
    r = runner.run(node, command, RunOptions(timeout=slice_s + _MARGIN, stdin=script,
                                             sink=sink))
    _raise_node_error(node, r.error_kind, r.error)
    # The sink has every byte (the real connector); a runner that calls no sink (FakeRunner)
    # gives the whole reply in stdout.
    text = sink.text() if sink.used else r.stdout
    if sink.overflow:
        raise NodeError(NodeErrorKind.ERROR, f"job {job_id} attempt {n}: the reply is larger"
                        f" than {max_bytes} bytes of output allow", node=node.id)
    return parse_wait(text, node=node.id, job_id=job_id, n=n, exit_code=r.exit_code,
                      stderr=r.stderr)


def parse_wait(text: str, *, node: str, job_id: int, n: int, exit_code: int | None = 0,
               stderr: str = "") -> AttemptEnd | None:
    """job.sh's `wait` reply: None (still running), an `AttemptEnd`, or NodeError LOST (the
    attempt is gone) / ERROR (a reply that makes no sense)."""
    frame = framing.parse(text)
    state = frame.get("state")
    if state == "running" and exit_code == 0:
        return None
    if state in ("lost", "gone"):
        raise NodeError(NodeErrorKind.LOST, f"job {job_id} attempt {n}: "
                        + (frame.get("message") or f"the attempt is {state}"), node=node)
    code = _int(frame.get("exit_code"))
    if state != "ended" or exit_code != 0 or code is None:
        raise NodeError(NodeErrorKind.ERROR, f"job {job_id} attempt {n}: bad reply from"
                        f" job.sh wait: {_why(frame, stderr, exit_code)}", node=node)
    try:
        output = _b64(frame.block("output"))
        tail = _b64(frame.block("stderr_tail")).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        raise NodeError(NodeErrorKind.ERROR, f"job {job_id} attempt {n}: damaged output in"
                        " the reply of job.sh wait", node=node) from None
    size = _int(frame.get("output_size")) or 0
    truncated = frame.get("output_truncated") == "1"
    if not truncated and len(output) != size:
        # A connection cut mid-reply: never take half an output for the whole.
        raise NodeError(NodeErrorKind.LOST, f"job {job_id} attempt {n}: the output arrived"
                        f" incomplete ({len(output)} of {size} bytes)", node=node)
    return AttemptEnd(exit_code=code, output=output, output_truncated=truncated,
                      stderr_tail=tail, seconds=_seconds(frame), output_size=size,
                      output_missing=frame.get("output_missing") == "1")


def failure(end: AttemptEnd, engine: Engine, max_bytes: int | None = None) -> str | None:
    """Why an ended attempt failed, in one line, or None when it succeeded: a non-zero
    exit, an output over the limit, or (output: file) no output file or an empty one."""
    if end.exit_code != 0:
        last = end.stderr_tail.strip().splitlines()
        return f"exit {end.exit_code}" + (f": {last[-1]}" if last else "")
    if end.output_truncated:
        limit = f" limit of {max_bytes} bytes" if max_bytes is not None else " limit"
        return f"the output ({end.output_size} bytes) is over the{limit}"
    if engine.output == "file" and end.output_missing:
        last = end.stderr_tail.strip().splitlines()
        return ("the command exited 0 but wrote no output file"
                + (f" ({last[-1]})" if last else ""))
    return None


def kill(runner: Runner, node: Node, job_id: int, n: int, *, pgid: int | None) -> None:
    """Kill the attempt's process group (if it still runs) and remove its directory.
    Idempotent. NodeError when the node cannot be reached."""
    command, script = payloads.invocation(
        SCRIPT, "kill", node.app_dir, str(int(job_id)), str(int(n)),
        str(int(pgid)) if pgid is not None and pgid > 1 else "", f"{KILL_GRACE:.1f}")
    # A clean-up: it runs even after a cancel (Ctrl-C), bounded by its timeout.
    r = runner.run(node, command, RunOptions(timeout=KILL_GRACE + 5.0 + _MARGIN, stdin=script,
                                             cancellable=False))
    _raise_node_error(node, r.error_kind, r.error)
    frame = framing.parse(r.stdout)
    state = framing.fields("state", frame.get("state")).get("state")
    if r.exit_code != 0 or state not in ("killed", "not-running"):
        raise NodeError(NodeErrorKind.LOCAL, f"cannot kill job {job_id} attempt {n}: "
                        + _why(frame, r.stderr, r.exit_code), node=node.id)


def preflight(runner: Runner, node: Node, engine: Engine) -> str | None:
    """None if `node` can run `engine` (its tools on PATH, its `requires` importable from
    the node's .venv), else one line such as "espeak-ng is not installed on linux-03"."""
    dists = [dist_name(req) for req in engine.requires]
    args = ["check", node.app_dir, *engine.tools]
    if dists:
        args += ["--", *dists]
    command, script = payloads.invocation(SCRIPT, *args)
    r = runner.run(node, command, RunOptions(timeout=30.0, stdin=script))
    _raise_node_error(node, r.error_kind, r.error)
    return parse_check(r.stdout, node=node.id, exit_code=r.exit_code, stderr=r.stderr)


def parse_check(text: str, *, node: str, exit_code: int | None = 0,
                stderr: str = "") -> str | None:
    """job.sh's `check` reply as `preflight` says it."""
    frame = framing.parse(text)
    state = frame.get("state")
    if exit_code == 0 and state == "ok":
        return None
    if exit_code != 0 or state != "missing":
        return f"cannot check the engine's tools on {node}: {_why(frame, stderr, exit_code)}"
    problems = [f"{tool} is not installed on {node}" for tool in frame.all("missing_tool")]
    for venv in frame.all("missing_venv"):
        problems.append(f"{node} has no {venv} (run `skeleton cluster bootstrap`)")
    missing = frame.all("missing_dist")
    if missing:
        problems.append(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not"
                        f" installed in {node}'s .venv (run `skeleton cluster bootstrap`)")
    return "; ".join(problems) or f"{node} cannot run the engine"


def dist_name(requirement: str) -> str:
    """The distribution a pip requirement names (`faster-whisper>=1.0` -> faster-whisper)."""
    m = _DIST.match(requirement.strip())
    if m is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return m.group(0).rstrip(".-_")


# ------------------------------------------------------------------------ helpers


class _Collector:
    """The stdout bytes of one reply, up to `limit` (beyond: `overflow`, nothing more kept)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.used = False
        self.overflow = False
        self._lock = threading.Lock()

    def __call__(self, _node: str, stream: str, data: bytes) -> None:
        with self._lock:
            self.used = True
            if stream != "stdout" or self.overflow:
                return
            if self.size + len(data) > self.limit:
                self.overflow = True
                self.chunks.clear()
                return
            self.chunks.append(data)
            self.size += len(data)

    def text(self) -> str:
        return b"".join(self.chunks).decode("ascii", "replace")


def _reply_limit(max_bytes: int) -> int:
    # base64 (4 bytes per 3, and a newline per 76) of the output and of a 4 KiB stderr
    # tail, plus the header lines.
    return (max(0, int(max_bytes)) + 4096) * 4 // 3 * 78 // 76 + 64 * 1024


def _checked_name(name: str) -> str:
    if not _INPUT_NAME.match(name) or name in (".", ".."):
        raise ValueError(f"bad input file name {name!r} (use registry.job_records."
                         "safe_file_name)")
    return name


def _raise_node_error(node: Node, kind: NodeErrorKind | None, message: str | None) -> None:
    if kind is not None:
        raise NodeError(kind, message or kind.value, node=node.id)


def _why(frame: framing.Frame, stderr: str, exit_code: int | None) -> str:
    message = "; ".join(frame.all("message"))
    if not message and stderr.strip():
        message = stderr.strip().splitlines()[-1]
    return message or f"job.sh exited {exit_code} without saying why"


def _int(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def _b64(block: str | None) -> bytes:
    if not block:
        return b""
    return base64.b64decode("".join(block.split()), validate=True)


def _seconds(frame: framing.Frame) -> float:
    try:
        return max(0.0, round(float(frame.get("ended") or "") - float(frame.get("started")
                                                                       or ""), 3))
    except ValueError:
        return 0.0
