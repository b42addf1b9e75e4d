"""Every node-side script parses under dash (Debian's /bin/sh) and passes shellcheck as POSIX
sh: they run on nodes we do not control, so no bashisms and no unquoted surprises. Each is
checked as it is sent (`payloads.data`: with the prelude in front when it asks for it); the
prelude itself is checked inside the scripts that use it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from skeleton_app import payloads

SCRIPTS = sorted(p for p in (Path(__file__).resolve().parents[2] / "skeleton_app" / "payloads")
                 .glob("*.sh") if p.name != payloads.PRELUDE)


def test_every_script_is_covered() -> None:
    assert {p.name for p in SCRIPTS} >= {"status.sh", "daemon.sh", "deploy.sh", "logs.sh",
                                         "models.sh", "health.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_dash_accepts_the_syntax(script: Path) -> None:
    subprocess.run(["dash", "-n"], input=payloads.data(script.name), check=True)


@pytest.mark.slow  # shellcheck takes 1-4 s per script
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_finds_no_warning(script: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck missing: ./scripts/setup installs it"
    result = subprocess.run([shellcheck, "-s", "sh", "-S", "warning", "-"],
                            input=payloads.text(script.name), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
