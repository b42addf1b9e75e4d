"""deploy.strategy releases, controller side: the plan (excludes, shared paths, release ID),
the digest's `release` key, the daemon's run dir and the views. The node side is
tests/scripts/test_releases_script.py; whole deploys are tests/integration/test_releases.py."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime
from pathlib import Path

from skeleton_app import layout
from skeleton_app.app.views.releases import releases_text, rollback_text
from skeleton_app.cluster import Cluster
from skeleton_app.config import AppSettings, DeploySettings, Settings
from skeleton_app.nodes import Node
from skeleton_app.ops.deploy import plan
from skeleton_app.ops.deploy.digest import DeployedDigest
from skeleton_app.ops.deploy.releases import (
    RELEASE_ID_RE,
    name_release,
    plan_releases,
    shared_paths,
)
from skeleton_app.ops.deploy.rollback import Release, ReleasesOutcome, RollbackOutcome
from skeleton_app.results import ClusterResult, NodeResult
from skeleton_app.transfers.tree import TreeDigest

NODE = Node(id="n1", host="127.0.0.1", app_dir="/srv/app")
TREE = TreeDigest(hex="ab12cd34" + "0" * 56, files=1, bytes=1)


def _settings(**deploy: object) -> Settings:
    return Settings(deploy=dataclasses.replace(DeploySettings(), **deploy),  # type: ignore[arg-type]
                    app=AppSettings(dir="/srv/app", models_dir="data/models",
                                    logs_dir="/var/log/app"))


def test_in_place_plan_is_untouched(tmp_path: Path) -> None:
    settings = _settings()
    p = plan(Cluster(settings, [NODE]), source=tmp_path, digest=False)
    assert plan_releases(p, settings) is p
    assert layout.run_dir(settings, NODE) == "/srv/app"


def test_releases_plan_keeps_shared_paths_out_and_names_the_release(tmp_path: Path) -> None:
    settings = _settings(strategy="releases", keep_releases=3)
    p = plan_releases(plan(Cluster(settings, [NODE]), source=tmp_path, digest=False), settings)
    assert p.release is not None and p.release.keep == 3
    # An absolute logs dir is reached from anywhere: not linked.
    assert shared_paths(settings) == (".venv", ".skeleton-deploy", "data/models", "config.yaml?")
    for name in ("/.venv", "/.skeleton-deploy", "/data/models", "/.skeleton-release"):
        assert name in p.exclude and name in p.digest_excludes
    assert p.filters == ()
    named = name_release(p, TREE, datetime(2026, 12, 6, 19, 1, 2, 345678, tzinfo=UTC))
    assert named.release is not None
    assert named.release.id == "20261206T190102345Z-ab12cd34"
    assert RELEASE_ID_RE.match(named.release.id)
    assert layout.run_dir(settings, NODE) == "/srv/app/current"


def test_digest_says_whether_it_describes_a_release() -> None:
    assert DeployedDigest.parse(["v1", "tree=x", "release=20261206T190102345Z-ab12cd34"]
                                ).release == "20261206T190102345Z-ab12cd34"
    assert DeployedDigest.parse(["v1", "tree=x"]).release is None


def test_views() -> None:
    a, b = "20261206T190102345Z-ab12cd34", "20261207T190102345Z-ab12cd35"
    listed = ClusterResult([NodeResult(node="n1", exit_code=0, outcome=ReleasesOutcome(
        b, (Release(a, "v1"), Release(b, "v2", "2026-12-07T19:01:02Z"))))])
    out = io.StringIO()
    releases_text(listed, out)
    lines = out.getvalue().splitlines()
    assert lines[1].split() == ["n1", "*", b, "v2", "2026-12-07T19:01:02Z"]
    assert lines[2].split() == ["n1", a, "v1", "-"]
    rolled = ClusterResult([NodeResult(node="n1", exit_code=0, outcome=RollbackOutcome(
        previous=b, current=a))])
    out = io.StringIO()
    rollback_text(rolled, out)
    assert out.getvalue().splitlines()[1].split() == ["n1", "✓", b, a]


def test_rollback_in_place_is_a_usage_error_before_any_node_is_contacted() -> None:
    """`cluster rollback` under the default in-place strategy switched a leftover `current`
    on the nodes; it is exit 2 now, and no node is contacted (FakeRunner sees nothing)."""
    import pytest

    from skeleton_app.app import commands
    from skeleton_app.errors import UsageError
    from skeleton_app.testing.fake import FakeRunner

    runner = FakeRunner(lambda call: NotImplemented)
    session = commands.Session(cluster=Cluster(_settings(), [NODE], connector=runner))
    with pytest.raises(UsageError, match=r"rollback needs deploy\.strategy: releases"):
        commands.rollback(session, [NODE], to=None)
    assert runner.calls == []
