"""Helpers of the `cluster sync-models` tests: models on test hosts, tree snapshots, leftovers."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from skeleton_app.testing import testbed as tbm
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import chown_to_user

MIB = 1 << 20


def models_root(bed: Testbed, host: str, rel: str) -> Path:
    """Host-side path of APP_DIR/rel on test host `host`."""
    return bed.host(host).app_dir / rel


def make_model(bed: Testbed, host: str, rel: str, name: str, *, size: int = 3 * MIB,
               seed: int = 1) -> Path:
    """A model directory on `host`: a big file, nested small files, an empty directory, a
    symlink inside the model and one leading out of it."""
    root = models_root(bed, host, rel)
    model = root / name
    (model / "sub dir").mkdir(parents=True)
    (model / "empty").mkdir()
    rnd = hashlib.sha256(str(seed).encode()).digest()
    (model / "weights.bin").write_bytes((rnd * (size // len(rnd) + 1))[:size - 7] + b"weights")
    (model / "sub dir" / "config.json").write_text(json.dumps({"seed": seed}))
    (model / "sub dir" / "vocab.txt").write_text("a\nb\nc\n")
    os.symlink("../weights.bin", model / "sub dir" / "current")
    os.symlink("/etc/passwd", model / "evil")
    chown_to_user(bed.host(host).app_dir)
    return model


def tree(path: Path) -> dict[str, tuple[str, bytes]]:
    """Relative path -> (kind, content or link target) of everything under `path`."""
    out: dict[str, tuple[str, bytes]] = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = Path(root) / name
            rel = str(full.relative_to(path))
            if full.is_symlink():
                out[rel] = ("l", os.readlink(full).encode())
            elif full.is_dir():
                out[rel] = ("d", b"")
            else:
                out[rel] = ("f", full.read_bytes())
    return out


def expected_tree(model: Path) -> dict[str, tuple[str, bytes]]:
    """What a target must hold: the source's tree minus the symlink that leads outside."""
    return {k: v for k, v in tree(model).items() if k != "evil"}


def leftovers(bed: Testbed, host: str, *, settle: float = 10.0) -> list[str]:
    """Run directories and processes a sync left behind on a host.

    A run ends its node leases by closing their channels; each lease's `cat` then sees EOF,
    runs models.sh's clean-up and exits a moment later, on the node's own time (longer on a
    loaded machine). So this waits up to `settle` seconds for that to finish and reports
    what is still there after it."""
    deadline = time.monotonic() + settle
    while True:
        found = []
        runs = bed.host(host).home / ".cache" / "skeleton-sync"
        if runs.is_dir():
            found += [str(p) for p in runs.iterdir()]
        proc = tbm.host_exec(bed, host, ["pgrep", "-a", "-u", tbm.USER, "-f", "skeleton-sync"],
                            check=False)
        found += [line for line in proc.stdout.splitlines() if line.strip()]
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)
