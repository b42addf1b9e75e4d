"""Small helpers shared by tests: config variants of a testbed, running the CLI."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from skeleton_app.testing import testbed as tbm
from skeleton_app.testing.testbed import Testbed

REPO = Path(__file__).resolve().parents[2]
# The directory of one test run, shared by its xdist workers (made by tests/conftest.py).
RUN_DIR_ENV = "SKELETON_TEST_RUN_DIR"


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
    daemon with the controller's virtualenv.

    Fast after the session's first one: the first bootstrap's `app/.venv` is kept (see
    `_seed_node_venvs`) and every later testbed's hosts start from hard links of it, so the
    real `bootstrap` that follows finds its own digest there and only probes ("up to date"),
    as on a node bootstrapped before. When the wheels changed meanwhile, the digest differs
    and bootstrap installs for real, as it would on a node. A pip install per host (15-40 s
    on a loaded 2-core machine) was the largest part of every such test."""
    from skeleton_app.cluster import Cluster
    from skeleton_app.config import load_config
    from skeleton_app.ops.bootstrap import bootstrap

    settings = load_config(bed.config_path, env={})
    with _first_bootstrap():
        seeded = _seed_node_venvs(bed) if settings.app.dir == tbm.APP_DIR else False
        with Cluster(settings) as cluster:
            result = bootstrap(cluster, cluster.nodes)
        assert result.exit_code() == 0, {n: r.data or r.summary() for n, r in result.items()}
        if not seeded and settings.app.dir == tbm.APP_DIR:
            _keep_node_venv(bed)
    return f"{tbm.APP_DIR}/.venv/bin/python"


def _node_venv_cache() -> Path | None:
    """Where this run keeps a bootstrapped hosts' .venv: in the run's directory, shared by
    its xdist workers (tests/conftest.py makes it and removes it at the end). None outside
    such a run: then nothing is kept."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir or not Path(run_dir).is_dir():
        return None
    return Path(run_dir) / "skeleton-test-node-venv"


@contextlib.contextmanager
def _first_bootstrap() -> Iterator[None]:
    """While no .venv is kept yet, one bootstrap at a time in the whole run: the workers that
    start together wait for the first one's venv (seconds) rather than each pip-installing
    their own on the same two cores (minutes)."""
    cache = _node_venv_cache()
    if cache is None or (cache / ".skeleton-bootstrap").is_file():
        yield
        return
    with open(cache.with_name(cache.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _keep_node_venv(bed: Testbed) -> None:
    """Copy the first host's freshly bootstrapped .venv aside (a real copy: the hosts' own
    files stay theirs, whatever a test does to them later)."""
    cache = _node_venv_cache()
    if cache is None or cache.exists():
        return
    venv = bed.hosts[0].app_dir / ".venv"
    tmp = cache.with_name(cache.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["cp", "-a", "--", str(venv), str(tmp)], check=True)
    tmp.rename(cache)


def _seed_node_venvs(bed: Testbed) -> bool:
    """Give every host of `bed` without a .venv hard links of the kept one (owner, modes and
    the bootstrap digest included; every path inside a venv is the same on every host, since
    each host mounts its own home at the same place). Hard links, not copies: 140 MB per host
    took 8 s on a busy disk, links take well under one. pip and rsync replace files rather
    than write into them, so a later install on one host never changes another's; a test must
    not modify a file of a seeded venv in place. Returns whether the kept venv was there."""
    cache = _node_venv_cache()
    if cache is None or not (cache / ".skeleton-bootstrap").is_file():
        return False
    for host in bed.hosts:
        venv = host.app_dir / ".venv"
        if not venv.exists() and venv.parent.is_dir():
            linked = subprocess.run(["cp", "-al", "--", str(cache), str(venv)],
                                    capture_output=True, check=False)
            if linked.returncode != 0:  # e.g. another file system: bootstrap installs
                shutil.rmtree(venv, ignore_errors=True)
    return True


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
