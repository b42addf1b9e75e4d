"""Small helpers shared by tests: config variants of a testbed, running the CLI."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from skeleton_app.testing import testbed as tbm
from skeleton_app.testing.testbed import Testbed

REPO = Path(__file__).resolve().parents[2]


def config_variant(testbed: Testbed, path: Path, *, ssh: Mapping[str, Any] | None = None,
                   nodes: Sequence[Mapping[str, Any]] | None = None,
                   **sections: Mapping[str, Any]) -> Path:
    """Write a copy of the testbed's config.yaml with some keys changed."""
    data = yaml.safe_load(testbed.config_path.read_text())
    if ssh:
        data.setdefault("ssh", {}).update(ssh)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    if nodes is not None:
        data["nodes"] = list(nodes)
    path.write_text(yaml.safe_dump(data))
    return path


def bed_nodes(testbed: Testbed) -> list[dict[str, Any]]:
    data = yaml.safe_load(testbed.config_path.read_text())
    return list(data["nodes"])


def skeleton(*args: str, config: Path | None = None, timeout: float = 120,
             env: Mapping[str, str] | None = None, input: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (as a user would)."""
    argv = [sys.executable, "-m", "skeleton_app", *args]
    if config is not None:
        argv += ["--config", str(config)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    full_env.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=REPO, input=input)


def chown_to_user(path: Path) -> None:
    """Files made here for a test host belong to its login user, as if it had made them."""
    account = pwd.getpwnam(tbm.USER)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), account.pw_uid, account.pw_gid)
    os.lchown(path, account.pw_uid, account.pw_gid)


def bootstrap_testbed(bed: Testbed) -> str:
    """`cluster bootstrap` on every host of `bed` (in parallel, from the wheels that
    ./scripts/setup built); returns the hosts' own virtualenv Python. The hosts never run the
    daemon with the controller's virtualenv."""
    from skeleton_app.cluster import Cluster
    from skeleton_app.config import load_config
    from skeleton_app.ops.bootstrap import bootstrap

    with Cluster(load_config(bed.config_path, env={})) as cluster:
        result = bootstrap(cluster, cluster.nodes)
    assert result.exit_code() == 0, {n: r.data or r.summary() for n, r in result.items()}
    return f"{tbm.APP_DIR}/.venv/bin/python"


def plant_clustershell_groups(cfgdir: Path, groups: str) -> None:
    """A ClusterShell groups config in `cfgdir` (for CLUSTERSHELL_CFGDIR) whose groups are the
    `NAME: NODES` lines of `groups` (`all:` answers wildcards): what /etc/clustershell could
    hold, for the tests proving skeleton never consults it."""
    (cfgdir / "groups.conf").write_text(textwrap.dedent("""
        [Main]
        default: local
        [local]
        map: sed -n 's/^$GROUP:\\(.*\\)/\\1/p' $CFGDIR/groups.txt
        all: sed -n 's/^all:\\(.*\\)/\\1/p' $CFGDIR/groups.txt
        list: sed -n 's/^\\([^:]*\\):.*/\\1/p' $CFGDIR/groups.txt
    """))
    (cfgdir / "groups.txt").write_text(groups)
