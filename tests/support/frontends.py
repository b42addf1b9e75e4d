"""Running the other front ends, `inv` (tasks.py) and `fab` (fabfile.py), as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.helpers import REPO

BIN = Path(sys.executable).parent


def run_tool(tool: str, *args: str, env: Mapping[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`inv`/`fab` from the virtualenv, in the repository root (where tasks.py and fabfile.py
    are found), with no SKELETON_* variable of the developer's leaking in."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    full_env.update(env or {})
    return subprocess.run([str(BIN / tool), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)


def inv(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return run_tool("inv", *args, "--config", str(config))


def fab(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return run_tool("fab", *args, env={"SKELETON_CONFIG": str(config)})


def out(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
