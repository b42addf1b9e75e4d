"""Running the machine's tools as root, and small file and message helpers."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from skeleton_app.errors import TestbedError

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ROOT_MESSAGE = "skeleton testbed needs root (network namespaces): run it with sudo"
_INSTALL_HINT = "install it with `apt-get install -y openssh-server rsync iproute2`"


def require_root() -> None:
    if os.geteuid() != 0:
        raise TestbedError(_ROOT_MESSAGE)


def _run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              timeout=timeout, check=False, cwd="/",
                              env={**os.environ, "PATH": _PATH, "LC_ALL": "C.UTF-8"})
    except FileNotFoundError:
        raise TestbedError(f"{argv[0]} not found: {_INSTALL_HINT}") from None
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"`{shlex.join(argv)}` timed out after {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        raise TestbedError(
            f"`{_short(argv)}` failed (exit {proc.returncode}):"
            f" {_last_line(proc.stderr or proc.stdout)}"
        )
    return proc


def _short(argv: Sequence[str]) -> str:
    text = shlex.join(argv)
    return text if len(text) <= 200 else text[:200] + "..."


def _write(path: Path, text: str, mode: int, owner: tuple[int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-3:]) or "(empty log)"
