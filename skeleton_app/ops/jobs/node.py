"""The node side of one job attempt, over a `Runner` (payloads/job.sh on the node).

An attempt lives in `<app_dir>/jobs/<job id>/a<n>/` on its node. The command runs detached
(`setsid`, its process group recorded), so a dropped SSH channel neither kills it nor loses
its exit status, and a later dispatcher can still find and kill it. Outputs are written
under a temporary name and published by rename; a `file` output that is missing or empty
is a failure even when the command exits 0 (espeak-ng does that on a bad option).
"""

from __future__ import annotations

from dataclasses import dataclass

from skeleton_app.engines import Engine
from skeleton_app.nodes import Node
from skeleton_app.ssh.runner import Runner


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How an attempt's command ended on its node."""

    exit_code: int
    output: bytes  # stdout (output: stdout) or the output file (output: file)
    output_truncated: bool  # larger than the limit: the job fails, saying so
    stderr_tail: str
    seconds: float  # the command's own run time, measured on the node


def job_dir(node: Node, job_id: int, n: int) -> str:
    """`<app_dir>/jobs/<job id>/a<n>` (ids are integers: no node-supplied text in it)."""
    return f"{node.app_dir.rstrip('/')}/jobs/{int(job_id)}/a{int(n)}"


def start(runner: Runner, node: Node, job_id: int, n: int, command: str, *,
          input_name: str | None, input_data: bytes | None, timeout: float) -> int:
    """Create the attempt's directory, write the input (sha256 checked on the node), start
    `command` detached in the app dir; the remote process group id. NodeError on failure."""
    raise NotImplementedError


def wait(runner: Runner, node: Node, job_id: int, n: int, *, engine: Engine,
         slice_s: float, max_bytes: int) -> AttemptEnd | None:
    """Wait at most `slice_s` for the command to end; its end with the output fetched, or
    None if it still runs. NodeError (UNREACHABLE, TIMEOUT, ...) when the node is lost."""
    raise NotImplementedError


def kill(runner: Runner, node: Node, job_id: int, n: int, *, pgid: int | None) -> None:
    """Kill the attempt's process group (if it still runs) and remove its directory.
    Idempotent. NodeError when the node cannot be reached."""
    raise NotImplementedError


def preflight(runner: Runner, node: Node, engine: Engine) -> str | None:
    """None if `node` can run `engine` (its tools on PATH, its `requires` importable from
    the node's .venv), else one line such as "espeak-ng is not installed on linux-03"."""
    raise NotImplementedError
