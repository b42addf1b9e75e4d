"""Every node-side script parses under dash (Debian's /bin/sh) and passes shellcheck as POSIX
sh: they run on nodes we do not control, so no bashisms and no unquoted surprises."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "skeleton_app" / "payloads").glob("*.sh"))


def test_every_script_is_covered() -> None:
    assert {p.name for p in SCRIPTS} >= {"status.sh", "daemon.sh", "deploy.sh", "logs.sh",
                                         "models.sh", "health.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_dash_accepts_the_syntax(script: Path) -> None:
    subprocess.run(["dash", "-n", str(script)], check=True)


@pytest.mark.slow  # shellcheck takes 1-4 s per script
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_finds_no_warning(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck missing: ./scripts/setup installs it"
    result = subprocess.run([shellcheck, "-s", "sh", "-S", "warning", str(script)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
