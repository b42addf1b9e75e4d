"""sync-models' pure parts on hand-built manifests and node facts (no root, no node): the
planner, the routing of chains around failed pairs, the answer parser, and the typed
outcome's JSON and summary rows."""

from __future__ import annotations

import hashlib
import json

from skeleton_app.app.views.sync_models import summary_rows
from skeleton_app.errors import NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ops.sync_models import (
    Entry,
    Facts,
    Manifest,
    Stat,
    SyncOutcome,
    parse_answer,
    plan_target,
)
from skeleton_app.ops.sync_models.chain import HopLog, Target, chains, plan_jobs, stranded
from skeleton_app.ops.sync_models.manifest import from_listing
from skeleton_app.ops.sync_models.plan import Plan, check_staged
from skeleton_app.results import ClusterResult, NodeResult, failure


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def model(**files: str) -> Manifest:
    """Model "m": a directory with `files` (name -> content; "d/x" makes directory d), and a
    symlink "l" -> "a"."""
    entries = [Entry("", "d"), Entry("l", "l", target="a")]
    dirs = {name.rpartition("/")[0] for name in files if "/" in name}
    entries += [Entry(d, "d") for d in dirs]
    entries += [Entry(name, "f", len(body), sha(body)) for name, body in files.items()]
    return Manifest.build("m", "dir", entries)


def st(kind: str, size: int = 0, target: str = "", nlink: int = 1) -> Stat:
    return Stat(kind, size, nlink, (str(size), "1", "1", "1"), target)


def tree_of(man: Manifest, root: str = "m") -> dict[str, Stat]:
    """The listing a node prints of `man` written out under `root` (relative to M)."""
    out = {}
    for e in man.entries:
        path = f"{root}/{e.path}" if e.path else root
        out[path] = st(e.kind, e.size, e.target)
    return out


def holding(man: Manifest, **extra: Stat) -> Facts:
    """A node that published `man` (its claim included), plus `extra` entries."""
    return Facts(avail=1 << 30, exists=True, entries={**tree_of(man), **extra},
                 final_claims={"m": man.to_json()})


# ---------------------------------------------------------------------------- the planner


def test_same_tree_is_up_to_date() -> None:
    man = model(a="alpha\n", **{"d/b": "beta\n"})
    plan = plan_target(holding(man), {"m": man}, verify=False)
    assert plan.up_to_date == ["m"] and plan.names == []
    assert (plan.need, plan.rm, plan.link, plan.mkdir) == ([], [], [], [])


def test_empty_target_needs_everything() -> None:
    man = model(a="alpha\n", **{"d/b": "beta\n"})
    plan = plan_target(Facts(avail=1 << 30, exists=True), {"m": man}, verify=False)
    assert plan.names == ["m"]
    assert sorted(plan.need) == [("./m/a", 6, 0), ("./m/d/b", 5, 0)]
    assert plan.mkdir == ["./.skeleton-staging/m", "./.skeleton-staging/m/d"]
    assert plan.symlink == ["a", "./.skeleton-staging/m/l"]
    assert plan.need_bytes == 11


def test_changed_file_is_sent_and_the_rest_linked() -> None:
    old = model(a="alpha\n", **{"d/b": "beta\n"})
    new = model(a="alpha, changed\n", **{"d/b": "beta\n"})
    plan = plan_target(holding(old), {"m": new}, verify=False)
    assert plan.names == ["m"] and plan.up_to_date == []
    assert plan.need == [("./m/a", len("alpha, changed\n"), 0)]
    assert plan.link == ["./m/d/b", "./.skeleton-staging/m/d/b"]  # unchanged: no bytes


def test_file_the_source_dropped_is_not_kept() -> None:
    old = model(a="alpha\n", gone="bye\n")
    new = model(a="alpha\n")
    # An interrupted earlier run left the dropped file in staging too.
    facts = holding(old, **{".skeleton-staging/m": st("d"),
                            ".skeleton-staging/m/gone": st("f", 4)})
    plan = plan_target(facts, {"m": new}, verify=False)
    assert plan.names == ["m"] and plan.need == []
    assert "./.skeleton-staging/m/gone" in plan.rm  # removed from staging
    assert plan.link == ["./m/a", "./.skeleton-staging/m/a"]  # the published one is not linked
    # After the transfer a stray in staging is listed for removal, not published.
    staged = Facts(entries={**tree_of(new, ".skeleton-staging/m"),
                            ".skeleton-staging/m/gone": st("f", 4)})
    check = check_staged(staged, {"m": new}, ["m"], [], "/models")
    assert check.problems == [] and check.strays == ["./.skeleton-staging/m/gone"]


def test_corrupt_published_file_is_repaired_with_verify() -> None:
    man = model(a="alpha\n")
    facts = holding(man)
    facts.hashes = {"m/a": sha("alphX\n")}  # same size, wrong content
    assert plan_target(facts, {"m": man}, verify=False).up_to_date == ["m"]
    plan = plan_target(facts, {"m": man}, verify=True)
    assert plan.repaired == ["m/a"] and plan.need == [("./m/a", 6, 0)]


def test_node_side_symlink_leading_outside_is_refused() -> None:
    man = model(a="alpha\n")
    # The published copy's "l" was turned into a link to /etc/passwd, and a staged "a" into
    # a link leading outside: neither is trusted, kept or followed.
    facts = holding(man, **{"m/l": st("l", target="/etc/passwd"),
                            ".skeleton-staging/m": st("d"),
                            ".skeleton-staging/m/a": st("l", target="../../../etc/shadow")})
    plan = plan_target(facts, {"m": man}, verify=False)
    assert plan.up_to_date == [] and plan.repaired == ["m/l"]
    assert "./.skeleton-staging/m/a" in plan.rm
    assert plan.symlink == ["a", "./.skeleton-staging/m/l"]  # made again from the manifest
    assert plan.link == ["./m/a", "./.skeleton-staging/m/a"]
    # A staged copy that still holds such a link is not published.
    staged = Facts(entries={**tree_of(man, ".skeleton-staging/m"),
                            ".skeleton-staging/m/l": st("l", target="/etc/passwd")})
    assert check_staged(staged, {"m": man}, ["m"], [], "/models").problems == ["m/l"]
    # On the source, such a link is left out of the manifest, with a warning.
    listed = from_listing("m", "dir", {"": st("d"), "esc": st("l", target="../../x")}, {},
                          {}, where="/models", source="node-01")
    assert [e.path for e in listed.manifest.entries] == [""]
    assert listed.warnings == ("/models/m/esc on node-01 is a symlink leading outside the"
                               " model (../../x): not synced",)


def test_partial_file_of_an_interrupted_run_is_resumed() -> None:
    man = model(a="alpha\n")
    facts = Facts(avail=1 << 30, entries={".skeleton-staging/m": st("d"),
                                          ".skeleton-staging/m/a": st("f", 3)},
                  stage_claims={"m": man.to_json()})
    plan = plan_target(facts, {"m": man}, verify=False)
    assert plan.need == [("./m/a", 6, 3)] and plan.need_bytes == 3


# ---------------------------------------------------------------------------- routing


def test_chains_split_where_no_hop_is_left() -> None:
    hops = HopLog([])
    ids = ["n2", "n3", "n4"]
    hops.record("n2", "n3", "cannot reach peer 2: Connection timed out")
    hops.record("n4", "n3", "cannot reach peer 2: Connection timed out")
    # n2 and n4 opened badly: they go last, in order (n3 -> n2 and n2 -> n4 are fine).
    assert chains(ids, hops.snapshot()) == [["n3", "n2", "n4"]]
    hops.record("n3", "n2", "cannot reach peer 1: host key changed")
    hops.record("n2", "n4", "cannot reach peer 3: host key changed")
    # Every node opened badly now: peer order, split where a hop failed.
    assert chains(ids, hops.snapshot()) == [["n2"], ["n3", "n4"]]


def test_stranded_on_the_last_round_or_when_cut_off() -> None:
    hops = HopLog([])
    hops.record("n1", "n2", "cannot reach peer 2: Connection refused")
    failures = hops.snapshot()
    assert stranded("n2", failures, {"n1", "n3"}, last_round=False) == ""
    assert stranded("n2", failures, {"n1", "n3"}, last_round=True) == (
        "n1 cannot reach n2: connection refused")
    hops.record("n2", "n3", "cannot reach peer 3: No route to host")
    # The network failed into and out of n2: relayed at once, whatever holders remain.
    assert stranded("n2", hops.snapshot(), {"n1", "n3", "n4"}, last_round=False) != ""
    assert stranded("n3", hops.snapshot(), {"n1"}, last_round=False) == ""


def test_jobs_group_by_need_pull_alone_and_relay_the_stranded() -> None:
    def target(node: str, need: list[str]) -> Target:
        t = Target(Node(id=node, host="10.0.0." + node[-1]))
        t.plan = Plan(names=["m"], need=[(p, 10, 0) for p in need])
        return t

    same = [target("n2", ["./m/a"]), target("n3", ["./m/a"]), target("n4", ["./m/a"])]
    alone = target("n5", ["./m/a", "./m/b"])
    order = {"n1": 0, "n2": 1, "n3": 2, "n4": 3, "n5": 4}
    ids = iter(range(100))
    hops = HopLog([])
    hops.record("n1", "n4", "cannot reach peer 3: Connection refused")
    hops.record("n4", "n1", "cannot reach peer 0: Connection refused")
    jobs = plan_jobs([*same, alone], hops.snapshot(), holders={"n1"}, relay=False,
                     last_round=False, order=order, next_id=lambda: f"j{next(ids)}")
    got = [(j.mode, [t.node.id for t in j.members], j.total) for j in jobs]
    assert got == [("relay", ["n4"], 10), ("chain", ["n2", "n3"], 10), ("pull", ["n5"], 20)]
    assert "n1 cannot reach n4" in same[2].relay_why


# ---------------------------------------------------------------------------- the answer


def test_parse_answer_keeps_names_byte_for_byte() -> None:
    name = b"m/we\xffird\nname"
    claim = b'{"x":1}'
    data = (b"df\0" + b"4096\0/srv\0" + b"M\0yes\0"
            + b"e\0f 6 1 100.5 200.5 300\0./" + name + b"\0\0"
            + b"c\0final\0m\0" + str(len(claim)).encode() + b"\0" + claim
            + b"H\0" + sha("alpha\n").encode() + b"  ./" + name + b"\0/H\0"
            + b"R\0" + b"3\0published\0\0" + b"F\0" + b"3\0")
    facts = parse_answer(data)
    path = name.decode("utf-8", "surrogateescape")
    assert facts.avail == 4096 and facts.avail_path == "/srv" and facts.exists
    assert facts.entries[path] == Stat("f", 6, 1, ("6", "100.5", "200.5", "300"), "")
    assert facts.final_claims == {"m": claim}
    assert facts.hashes == {path: sha("alpha\n")}
    assert facts.reports == {3: ("published", "")} and facts.finished == {3}


# ---------------------------------------------------------------------------- the outcome


def _outcome(status: str = "synced", **kw: object) -> SyncOutcome:
    fields: dict[str, object] = dict(
        status=status, source="node-01", models=("m",), moved=1 << 20, seconds=0.5,
        rate=2097152.0, via=("chain from node-01",), repaired=(), rerouted=(),
        path="/srv/models")
    fields.update(kw)
    return SyncOutcome(**fields)  # type: ignore[arg-type]


def test_result_with_sync_outcomes_to_json() -> None:
    synced = _outcome()
    refused = _outcome("refused", moved=0, seconds=0.0, rate=0.0, via=())
    lost = _outcome("failed", moved=0, seconds=0.0, rate=0.0, via=())
    result: ClusterResult[SyncOutcome] = ClusterResult([
        NodeResult(node="node-02", exit_code=0, outcome=synced,
                   stdout=synced.summary() + "\n"),
        NodeResult(node="node-03", exit_code=1, stderr="not enough free disk space\n",
                   outcome=refused),
        NodeResult(node="node-04", error_kind=NodeErrorKind.LOST, error="connection lost",
                   outcome=lost),
    ], operation="sync-models")
    data = json.loads(result.to_json())
    assert data["nodes"]["node-02"]["data"] == {
        "status": "synced", "source": "node-01", "models": ["m"], "bytes": 1 << 20,
        "seconds": 0.5, "rate": 2097152.0, "via": ["chain from node-01"], "repaired": [],
        "rerouted": [], "path": "/srv/models"}
    assert data["nodes"]["node-02"]["stdout"] == "synced: 1.0 MiB in 0.5s (chain from node-01)\n"
    assert data["nodes"]["node-03"]["data"]["status"] == "refused"
    assert data["nodes"]["node-04"]["data"]["status"] == "failed"
    assert data["exit_code"] == 4
    rows = summary_rows(result)
    assert rows[0] == ["node-02", "synced", "1.0 MiB", "0.5s", "2.0 MiB/s",
                       "chain from node-01"]
    assert rows[1][1:] == ["refused", "-", "-", "-", "not enough free disk space"]
    assert rows[2][1] == "failed" and rows[2][-1] == "lost: connection lost"
    assert failure("node-05", NodeErrorKind.LOST, "x").outcome is None


def test_summary_rows_name_repairs_and_reroutes() -> None:
    out = _outcome("repaired", repaired=("m/a", "m/b", "m/c", "m/d"),
                   rerouted=("host key changed between node-04 and node-05",))
    result = ClusterResult([NodeResult(node="node-05", exit_code=0, outcome=out)])
    how = summary_rows(result)[0][-1]
    assert how == ("chain from node-01; routed around: host key changed between node-04 and"
                   " node-05; repaired: m/a, m/b, m/c and 1 more")
    assert _outcome("up-to-date").summary() == "up to date"
