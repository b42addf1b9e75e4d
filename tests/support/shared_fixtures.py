"""Find the project-wide fixtures kept outside the repository (real captures from real hosts).

CI checks the repository out beside `shared/`, so they live at `<repo>/../shared/fixtures`;
`SKELETON_SHARED_DIR` names another `shared/` directory and, when set, wins. A local clone
(`git clone . /tmp/fresh`) also looks beside the repository it was cloned from.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path | None:
    """The `shared/` directory, or None when neither place has one."""
    candidates = []
    if os.environ.get("SKELETON_SHARED_DIR"):
        candidates.append(Path(os.environ["SKELETON_SHARED_DIR"]))
    candidates.append(REPO_ROOT.parent / "shared")
    origin = subprocess.run(["git", "-C", str(REPO_ROOT), "config", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if origin.startswith("/"):
        candidates.append(Path(origin).parent / "shared")
    for candidate in candidates:
        if (candidate / "fixtures").is_dir():
            return candidate
    return None


def nvidia_smi_fixture(name: str) -> Path:
    """A capture from `shared/fixtures/nvidia-smi/`; fails the test (saying where it looked)
    when the shared directory is not there: a parser test must never pass by skipping."""
    base = shared_dir()
    if base is None:
        pytest.fail(
            f"shared fixtures not found in {REPO_ROOT.parent / 'shared'}; "
            "set SKELETON_SHARED_DIR to the shared/ directory"
        )
    path = base / "fixtures" / "nvidia-smi" / name
    if not path.is_file():
        pytest.fail(f"missing fixture {path}")
    return path
