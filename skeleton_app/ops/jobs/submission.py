"""Checking a submission before anything is queued (`Jobs.submit`): the engine (a configured
one, or `run` built from a command and a role), the input file (there, a regular file,
readable, not empty, at most jobs.max_file_bytes) or the text (not empty, bounded), and
max_attempts. Every problem is a UsageError (exit 2) naming it.
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skeleton_app.config import Settings
from skeleton_app.engines import Engine, find_engine
from skeleton_app.errors import UsageError
from skeleton_app.nodes import shown
from skeleton_app.registry.job_records import MAX_TEXT, JobSpec, safe_file_name

RUN_ENGINE = "run"  # a command of the submitter's own: `submit("run", command=..., role=...)`


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked submission: the spec, and its input files (name, data)."""

    spec: JobSpec
    inputs: tuple[tuple[str, bytes], ...]


def build_engine(settings: Settings, name: str, *, command: str | None,
                 role: str | None, input: str | os.PathLike[str] | None,
                 output_suffix: str | None) -> Engine:
    """The engine a submission names (UsageError if unknown); `run` is built from the
    command and the role (output: file when the command writes `{output}`)."""
    if name == RUN_ENGINE:
        if not command or not command.strip():
            raise UsageError("engine run needs a command (placeholders {input} {output})")
        if not role:
            raise UsageError("engine run needs a role (the nodes that may run it)")
        raw: dict[str, Any] = {
            "role": role, "command": command,
            "input": "file" if input is not None else "none",
            "output": "file" if "{output}" in command else "stdout",
        }
        if output_suffix is not None:
            raw["output_suffix"] = output_suffix
        return Engine.from_dict(RUN_ENGINE, raw, source="jobs submit run")
    if command is not None or role is not None:
        raise UsageError(f"a command and a role are given with engine run only, not"
                         f" {shown(name)}")
    engine = find_engine(settings.engines, name)
    if output_suffix is not None:
        raw = engine.as_dict()
        raw.pop("name")
        raw["output_suffix"] = output_suffix
        engine = Engine.from_dict(engine.name, raw, source="jobs submit")
    return engine

MAX_QUOTED_TEXT = 64 * 1024


def max_attempts_of(settings: Settings, value: int | None) -> int:
    if value is None:
        return settings.jobs.max_attempts
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise UsageError(f"max_attempts: expected 1 to 100, got {shown(value)}")
    return value

def prepare(engine: Engine, input: str | os.PathLike[str] | None, text: str | None, *,
            max_bytes: int) -> Prepared:
    """The job's spec and input files, every check made (UsageError names the problem)."""
    if engine.input in ("audio", "file"):
        if text is not None:
            raise UsageError(f"engine {engine.name} takes an input file, not a text")
        if input is None:
            raise UsageError(f"engine {engine.name} needs an input file")
        name, data = read_input(input, max_bytes)
        return Prepared(JobSpec(engine=engine, input_name=name, label=name),
                         ((name, data),))
    if input is not None:
        raise UsageError(f"engine {engine.name} takes "
                         + ("a text (text=...), not a file" if engine.input == "text"
                            else "no input"))
    if engine.input == "text":
        if text is None or not text.strip():
            raise UsageError(f"engine {engine.name} needs a text, and it is empty")
        if len(text) > MAX_TEXT or "\x00" in text:
            raise UsageError(f"the text is too long ({len(text)} characters, at most"
                             f" {MAX_TEXT})" if len(text) > MAX_TEXT
                             else "the text contains a NUL character")
        if len(shlex.quote(shlex.quote(text))) > MAX_QUOTED_TEXT:
            # The command reaches the node as one argument of `sh -c`, quoted twice; Linux
            # refuses an argument over 128 KiB, and every node would fail the job in turn.
            raise UsageError(f"the text is too long once shell-quoted (at most"
                             f" {MAX_QUOTED_TEXT // 1024} KiB; quotes count five times)")
        label = " ".join(text.split())
        return Prepared(JobSpec(engine=engine, text=text,
                                 label=label[:60] + ("..." if len(label) > 60 else "")),
                         ())
    if text is not None:
        raise UsageError(f"engine {engine.name} takes no text")
    return Prepared(JobSpec(engine=engine, label=engine.name), ())

def check_input(input: str | os.PathLike[str], limit: int) -> None:
    """The checks of `read_input` without holding the data: a batch is checked whole first,
    then read and queued one file at a time (500 files of 20 MB need 20 MB, not 10 GB)."""
    path = _regular_file(input, limit)
    try:
        with path.open("rb") as fh:
            first = fh.read(1)
    except OSError as exc:
        raise UsageError(f"input {shown(str(path), 200)}: cannot read it:"
                         f" {exc.strerror}") from None
    if not first:
        raise UsageError(f"input {shown(str(path), 200)}: the file is empty")


def _regular_file(input: str | os.PathLike[str], limit: int) -> Path:
    path = Path(os.fspath(input))
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UsageError(f"input {shown(str(path), 200)}: no such file") from None
    except OSError as exc:
        raise UsageError(f"input {shown(str(path), 200)}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"input {shown(str(path), 200)}: not a regular file")
    if info.st_size > limit:
        raise UsageError(f"input {shown(str(path), 200)}: {info.st_size} bytes, more than"
                         f" jobs.max_file_bytes ({limit})")
    return path


def read_input(input: str | os.PathLike[str], limit: int) -> tuple[str, bytes]:
    """(safe name, data) of a regular, readable, non-empty file of at most `limit` bytes."""
    path = _regular_file(input, limit)
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"input {shown(str(path), 200)}: cannot read it:"
                         f" {exc.strerror}") from None
    if len(data) > limit:
        raise UsageError(f"input {shown(str(path), 200)}: more than jobs.max_file_bytes"
                         f" ({limit})")
    if not data:
        raise UsageError(f"input {shown(str(path), 200)}: the file is empty")
    return safe_file_name(path.name), data
