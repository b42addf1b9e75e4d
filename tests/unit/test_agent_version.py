"""The daemon's code version: one tree digest with deploy's.

A tree that is neither deployed (no digest file) nor a git checkout is reported as `tree:`
and the version `cluster deploy` would write for the same tree: the daemon digests with
`transfers.tree` over deploy's own excludes, and these tests keep the two from drifting.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from skeleton_app.agent import code_version
from skeleton_app.agent.version import digest_excludes
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import UsageError
from skeleton_app.ops import deploy
from skeleton_app.transfers import tree


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # deploy's hash cache
    base = Settings()
    return dataclasses.replace(base, deploy=dataclasses.replace(
        base.deploy, exclude=(*base.deploy.exclude, "data/")))


def _tree(root: Path) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print('v1')\n")
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(b"\0" * 100)
    (root / ".skeleton-daemon.pid").write_text("123 456 boot\n")
    return root


def test_the_daemon_digests_with_deploys_excludes(settings: Settings, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    with Cluster(settings, []) as cluster:
        plan = deploy.plan(cluster, source=src)
    assert digest_excludes(settings.deploy.exclude) == plan.digest_excludes
    assert plan.digest is not None
    assert code_version(src, exclude=settings.deploy.exclude) == f"tree:{plan.digest.version}"


def test_the_tree_version_is_stable_and_follows_content_not_state(
        settings: Settings, tmp_path: Path) -> None:
    app = _tree(tmp_path / "app")
    first = code_version(app, exclude=settings.deploy.exclude)
    assert code_version(app, exclude=settings.deploy.exclude) == first
    # the node's own state and excluded data are not code
    (app / ".skeleton-daemon.pid").write_text("999 1 other\n")
    (app / "data" / "more.bin").write_bytes(b"x")
    (app / ".skeleton-deploy").mkdir()
    (app / ".skeleton-deploy" / "health-token").write_text("t" * 32)
    assert code_version(app, exclude=settings.deploy.exclude) == first
    (app / "app" / "main.py").write_text("print('v2')\n")
    assert code_version(app, exclude=settings.deploy.exclude) != first


def test_an_unreadable_tree_claims_no_version(settings: Settings, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    app = _tree(tmp_path / "app")
    (app / "app" / "dangling").symlink_to(app / "nowhere")  # a link is sent as a link
    version = code_version(app, exclude=settings.deploy.exclude)
    assert version.startswith("tree:") and version != "tree:unreadable"

    def unreadable(*args: object, **kwargs: object) -> None:
        raise UsageError(f"cannot read {app}/app/main.py: Permission denied")

    # (as root, a chmod would not make it unreadable)
    monkeypatch.setattr(tree, "tree_digest", unreadable)
    assert code_version(app, exclude=settings.deploy.exclude) == "tree:unreadable"
