"""`cluster sync-models` routes around a hop that fails (issue 12, section 4).

A node that cannot reach its peers (a partition, a changed host key between two nodes) must
not strand the nodes after it in the chain: the failed pair is marked, the stranded targets
are re-planned from other holders in the next round, and a target no peer can reach is
relayed through the controller. Played on the session testbed's real hosts with blackhole
routes inside the hosts' own network namespaces (never towards the controller) and a
rewritten known_hosts entry; every test undoes what it did in `finally`.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skeleton_app.app.views.sync_models import summary_rows
from skeleton_app.cluster import Cluster
from skeleton_app.config import load_config
from skeleton_app.ops.sync_models import hop_cause, sync_models
from skeleton_app.ops.sync_models.chain import HopLog, chains, stranded
from skeleton_app.testing import testbed as tb
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import config_variant, skeleton
from tests.support.models import expected_tree, leftovers, make_model, models_root, tree

MIB = 1 << 20


@pytest.fixture
def rel() -> str:
    """A models directory of this test's own, relative to the app dir, with a space."""
    return f"models {uuid.uuid4().hex[:8]}"


@pytest.fixture
def fast(testbed: Testbed, tmp_path: Path) -> Path:
    """The session testbed's config with a 3 s connect timeout (a partitioned hop times out
    sooner; what is asserted does not depend on it)."""
    return config_variant(testbed, tmp_path / "fast.yaml", ssh={"connect_timeout": 3})


@pytest.fixture
def fast_cluster(fast: Path) -> Iterator[Cluster]:
    with Cluster(load_config(fast, env={})) as c:
        yield c


def _cut_off(bed: Testbed, host: str, peers: list[str]) -> list[tuple[str, str]]:
    """Blackhole routes inside `host` towards each peer's address (not the controller's)."""
    done = []
    try:
        for peer in peers:
            tb.blackhole(bed, host, bed.host(peer).ip)
            done.append((host, bed.host(peer).ip))
    except BaseException:
        _restore(bed, done)
        raise
    return done


def _restore(bed: Testbed, routes: list[tuple[str, str]]) -> None:
    for host, ip in routes:
        tb.clear_blackhole(bed, host, ip)


# ---------------------------------------------------------------------------- pure parts


def test_hop_cause_names_the_pair() -> None:
    assert hop_cause("node-04", "node-05", "host key changed") == (
        "host key changed between node-04 and node-05", False)
    assert hop_cause("node-04", "node-05", "host key not known") == (
        "node-04 does not know the host key of node-05", False)
    assert hop_cause("node-04", "node-05", "Connection timed out") == (
        "node-04 cannot reach node-05: connection timed out", True)
    assert hop_cause("node-04", "node-05", "Permission denied (publickey).")[1] is False


def test_chains_avoid_failed_pairs_and_keep_the_fast_path() -> None:
    targets = ["node-02", "node-03", "node-04", "node-05", "node-06"]
    holders = {"node-01"}
    warnings: list[str] = []
    hops = HopLog(warnings)
    assert chains(targets, hops.snapshot()) == [targets]  # unchanged
    # node-04 failed to open node-05: it goes last, and no hop is 04 -> 05.
    hops.record("node-04", "node-05", "cannot reach peer 4: host key changed")
    assert chains(targets, hops.snapshot()) == [
        ["node-02", "node-03", "node-05", "node-06", "node-04"]]
    assert warnings == ["host key changed between node-04 and node-05; routed around it"]
    # other holders may reach node-05
    assert stranded("node-05", hops.snapshot(), holders, last_round=False) == ""
    # The only holder cannot push to node-05: it may still pull.
    hops.record("node-01", "node-05", "cannot reach peer 4: Connection refused")
    assert stranded("node-05", hops.snapshot(), holders, last_round=False) == ""
    # Nor can it pull: no peer can serve it, it is relayed.
    hops.record("node-05", "node-01", "cannot reach peer 0: Connection refused")
    assert stranded("node-05", hops.snapshot(), holders, last_round=False) == (
        "host key changed between node-04 and node-05; node-01 cannot reach node-05:"
        " connection refused; node-05 cannot reach node-01: connection refused")


# ---------------------------------------------------------------------------- real hosts


def test_partitioned_member_routed_around_and_relayed(testbed: Testbed, fast: Path,
                                                      rel: str) -> None:
    """node-04 cannot reach any peer (nor they it): 05 and 06 are served from another holder,
    node-04 through the controller; exit 0, and the results say what happened."""
    model = make_model(testbed, "node-01", rel, "m")
    routes = _cut_off(testbed, "node-04", ["node-01", "node-02", "node-03", "node-05",
                                            "node-06"])
    try:
        started = time.monotonic()
        proc = skeleton("cluster", "sync-models", "--source-node", "node-01", "--models-path",
                        rel, "--model", "m", "--json", config=fast)
        took = time.monotonic() - started
    finally:
        _restore(testbed, routes)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    data = json.loads(proc.stdout)
    print(f"routed around a partitioned node-04 in {took:.1f}s")  # for the README's figure
    want = expected_tree(model)
    for host in ("node-02", "node-03", "node-04", "node-05", "node-06"):
        assert data["nodes"][host]["data"]["status"] == "synced", data
        assert tree(models_root(testbed, host, rel) / "m") == want
    relayed = data["nodes"]["node-04"]["data"]["via"][-1]
    assert relayed.startswith("relayed from node-0"), relayed
    assert "no peer could reach it" in relayed and "node-03 cannot reach node-04" in relayed
    for host in ("node-05", "node-06"):
        node = data["nodes"][host]["data"]
        assert node["via"][-1].startswith("chain from") or node["via"][-1].startswith("rsync")
        assert node["via"][-1] != "chain from node-04"
        assert any("cannot reach node-04" in r for r in node["rerouted"]), node
    assert any(w.startswith("node-04 cannot reach node-05: ") for w in data["warnings"]), data
    for host in testbed.ids:
        assert leftovers(testbed, host) == []


def test_changed_host_key_between_two_nodes(testbed: Testbed, fast_cluster: Cluster,
                                            rel: str, tmp_path: Path) -> None:
    """node-04 holds a wrong host key for node-05: the hop is refused (never accepted), the
    message names the pair, and node-05 is served by another holder."""
    model = make_model(testbed, "node-01", rel, "m")
    known, original = _wrong_key(testbed, "node-04", "node-05", tmp_path)
    try:
        result = sync_models(fast_cluster, source_node="node-01",
                             targets=fast_cluster.select(["node-0[2-6]"]), models_path=rel,
                             model="m")
    finally:
        known.write_text(original)
    assert result.exit_code() == 0, result.to_json()
    cause = "host key changed between node-04 and node-05"
    assert f"{cause}; routed around it" in result.warnings
    for host in ("node-02", "node-03", "node-04", "node-05", "node-06"):
        assert tree(models_root(testbed, host, rel) / "m") == expected_tree(model)
    assert result["node-04"].outcome.via == ("chain from node-01",)  # served, as before
    for host in ("node-05", "node-06"):
        out = result[host].outcome
        assert out.rerouted == (cause,), out
        assert len(out.via) == 1 and "node-04" not in out.via[0], out
    rows = {row[0]: row[-1] for row in summary_rows(result)}
    assert f"routed around: {cause}" in rows["node-05"]


def _wrong_key(bed: Testbed, host: str, peer: str, tmp_path: Path) -> tuple[Path, str]:
    """Give `host` a wrong host key for `peer` in its known_hosts: (the file, its content
    before, to restore)."""
    known = bed.host(host).home / ".ssh" / "known_hosts"
    original = known.read_text()
    key = tmp_path / f"other-{peer}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    other = " ".join(key.with_suffix(".pub").read_text().split()[:2])
    lines = [f"{line.split()[0]} {other}" if line.startswith(f"{peer},") else line
             for line in original.splitlines()]
    assert lines != original.splitlines()
    known.write_text("\n".join(lines) + "\n")  # in place: owner and mode stay
    return known, original


def test_single_target_that_cannot_pull_is_pushed_to(testbed: Testbed, fast_cluster: Cluster,
                                                     rel: str, tmp_path: Path) -> None:
    """node-02 holds a wrong key for the source: its pull is refused; the source pushes."""
    model = make_model(testbed, "node-01", rel, "m", size=MIB)
    known, original = _wrong_key(testbed, "node-02", "node-01", tmp_path)
    try:
        result = sync_models(fast_cluster, source_node="node-01",
                             targets=fast_cluster.select(["node-02"]), models_path=rel,
                             model="m")
    finally:
        known.write_text(original)
    assert result.exit_code() == 0, result.to_json()
    out = result["node-02"].outcome
    assert out.via == ("rsync from node-01", "chain from node-01"), out
    assert out.rerouted == ("host key changed between node-02 and node-01",), out
    assert tree(models_root(testbed, "node-02", rel) / "m") == expected_tree(model)


def test_node_no_peer_can_reach_is_relayed(testbed: Testbed, fast_cluster: Cluster,
                                           rel: str) -> None:
    """Every other host drops what goes to node-03: it is served through the controller."""
    model = make_model(testbed, "node-01", rel, "m", size=MIB)
    routes: list[tuple[str, str]] = []
    try:
        for host in ("node-01", "node-02", "node-04"):
            routes += _cut_off(testbed, host, ["node-03"])
        result = sync_models(fast_cluster, source_node="node-01",
                             targets=fast_cluster.select(["node-0[2-4]"]), models_path=rel,
                             model="m")
    finally:
        _restore(testbed, routes)
    assert result.exit_code() == 0, result.to_json()
    for host in ("node-02", "node-03", "node-04"):
        assert tree(models_root(testbed, host, rel) / "m") == expected_tree(model)
    via = result["node-03"].outcome.via[-1]
    assert via.startswith("relayed from node-0") and "no peer could reach it" in via, via
    assert "cannot reach node-03" in via
    assert not any(v.startswith("relayed") for v in result["node-04"].outcome.via)
    for host in testbed.ids:
        assert leftovers(testbed, host) == []
