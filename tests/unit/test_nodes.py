"""Node validation and selection (ranges, globs, roles, exclude, no-match errors), and the
rule that a selection never widens: every value names a node, `@NAME` is the project's own."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skeleton_app.errors import SelectionError
from skeleton_app.nodes import (
    Node,
    fold,
    select,
    shown,
    validate_fab_argv,
    validate_host,
    validate_host_list,
    validate_node_id,
)
from tests.support.helpers import plant_clustershell_groups

NODES = tuple(
    [Node(id=f"linux-{i:02d}", host=f"10.0.0.{i}", user="u",
          roles=("stt",) if i % 2 else ("tts",)) for i in range(1, 7)]
    + [Node(id="windows-main", host="10.0.0.50", user="u", roles=("gpu", "stt"))]
)


def ids(nodes: tuple[Node, ...]) -> list[str]:
    return [n.id for n in nodes]


def test_all_when_no_selection() -> None:
    assert ids(select(NODES)) == ids(NODES)


def test_range_comma_and_repeat() -> None:
    assert ids(select(NODES, ["linux-[01-03]"])) == ["linux-01", "linux-02", "linux-03"]
    assert ids(select(NODES, ["linux-01,windows-main", "linux-05"])) == [
        "linux-01", "linux-05", "windows-main"]
    assert ids(select(NODES, ["linux-[01,04-05]"])) == ["linux-01", "linux-04", "linux-05"]


def test_glob_and_address() -> None:
    assert ids(select(NODES, ["win*"])) == ["windows-main"]
    assert len(select(NODES, ["linux-*"])) == 6
    assert ids(select(NODES, ["10.0.0.2"])) == ["linux-02"]


def test_roles_and_exclude() -> None:
    assert ids(select(NODES, roles=["gpu"])) == ["windows-main"]
    assert ids(select(NODES, roles=["stt"], exclude=["linux-[01-03]"])) == [
        "linux-05", "windows-main"]
    assert ids(select(NODES, ["linux-*"], exclude=["linux-0[2-6]"])) == ["linux-01"]


def test_no_match_lists_known_nodes_folded() -> None:
    with pytest.raises(SelectionError) as info:
        select(NODES, ["mac-*"])
    assert "matched no node" in str(info.value)
    assert "linux-[01-06],windows-main" in str(info.value)
    with pytest.raises(SelectionError, match="unknown node linux-09"):
        select(NODES, ["linux-09"])
    with pytest.raises(SelectionError, match="--role nope matched no node"):
        select(NODES, roles=["nope"])
    with pytest.raises(SelectionError, match="matched no node"):
        select(NODES, exclude=["*"])


def test_fold() -> None:
    assert fold(["linux-01", "linux-02", "linux-03", "windows-main"]) == (
        "linux-[01-03],windows-main")


@pytest.mark.parametrize("bad", ["", "../../etc/cron.d/x", "a;reboot", "a\nb", "x" * 10000,
                                 "-rf", ".hidden", "a b", "a/b"])
def test_invalid_node_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="node id"):
        validate_node_id(bad)


@pytest.mark.parametrize("good", ["linux-01", "windows-main", "a", "n.1_x-2", "A" * 63])
def test_valid_node_ids(good: str) -> None:
    assert validate_node_id(good) == good


@pytest.mark.parametrize("bad", ["-oProxyCommand=touch /tmp/x", "999.1.1.1", "", "a b",
                                 "host;id", "$(id)", "x" * 300, "a..b"])
def test_invalid_hosts(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_host(bad)


@pytest.mark.parametrize("good", ["10.0.0.1", "fd00::1", "node-1.lan", "localhost",
                                  "linux-01"])
def test_valid_hosts(good: str) -> None:
    assert validate_host(good) == good


def test_node_rejects_bad_fields() -> None:
    with pytest.raises(ValueError):
        Node(id="a", host="10.0.0.1", port=70000)
    with pytest.raises(ValueError):
        Node(id="a", host="10.0.0.1", app_dir="relative")


# ------------------------------------------------------------------ a selection never widens

GROUPS = {"gpu": ["linux-[01-02]"], "edge": ["linux-0[5-6],windows-main"],
          "typo": ["linux-01", "linux-09"]}
KNOWN = "known nodes: linux-[01-06],windows-main"


@pytest.mark.parametrize(("patterns", "exclude", "roles", "needle"), [
    ([""], [], [], "--node '': empty selection"),
    ([" "], [], [], "--node ' ': empty selection"),
    ([","], [], [], "--node ',': empty element"),
    (["linux-01,"], [], [], "--node 'linux-01,': empty element"),
    (["linux-01,,linux-02"], [], [], "empty element"),
    (["linux-01", ""], [], [], "--node '': empty selection"),
    (["@nosuch"], [], [], "--node '@nosuch': no group or role named 'nosuch'"),
    (["@"], [], [], "--node '@': invalid node selection '@'"),
    (["@stt,mac-*"], [], [], "mac-* matched no node"),
    (["linux-01@x"], [], [], "invalid node selection"),
    (["linux-[01-06]!linux-01"], [], [], "invalid node selection"),
    (["linux-[01-06]&linux-01"], [], [], "invalid node selection"),
    (["linux-[1-99999]"], [], [], "expands to 99999 names"),
    (["linux-[01-"], [], [], "invalid node selection"),
    (["@typo"], [], [], "--node '@typo': group typo ('linux-09'): unknown node linux-09"),
    ([], [""], [], "--exclude '': empty selection"),
    ([], [","], [], "--exclude ',': empty element"),
    ([], ["linux-1"], [], "--exclude 'linux-1': unknown node linux-1"),
    ([], ["@nosuch"], [], "--exclude '@nosuch': no group or role"),
    ([], [], [""], "--role '': invalid role"),
    ([], [], [" "], "--role ' ': invalid role"),
    ([], [], ["stt", "nope"], "--role nope matched no node"),
    (["x" * 5000], [], [], "characters)"),
])
def test_every_value_must_name_a_node(patterns: list[str], exclude: list[str],
                                      roles: list[str], needle: str) -> None:
    with pytest.raises(SelectionError) as info:
        select(NODES, patterns, roles=roles, exclude=exclude, groups=GROUPS)
    message = str(info.value)
    assert needle in message
    assert message.endswith(KNOWN)
    assert "\n" not in message and len(message) < 400


def test_at_name_is_a_config_group_or_a_role() -> None:
    assert ids(select(NODES, ["@gpu"], groups=GROUPS)) == ["linux-01", "linux-02"]  # the group
    assert ids(select(NODES, roles=["gpu"], groups=GROUPS)) == ["windows-main"]  # the role
    assert ids(select(NODES, ["@edge"], groups=GROUPS)) == ["linux-05", "linux-06",
                                                              "windows-main"]
    assert ids(select(NODES, ["@stt"])) == ["linux-01", "linux-03", "linux-05", "windows-main"]
    assert ids(select(NODES, ["@edge,linux-01"], groups=GROUPS, exclude=["@stt"])) == [
        "linux-06"]
    # a group's member never refers to a group or role (no cycles, nothing resolved)
    with pytest.raises(SelectionError, match="invalid node selection '@gpu'"):
        select(NODES, ["@loop"], groups={"loop": ["@gpu"], "gpu": ["@loop"]})


@pytest.mark.parametrize("good", ["node-01", "u@node-01", "10.0.0.5,node-02"])
def test_fab_host_list(good: str) -> None:
    assert validate_host_list(good) == good.split(",")


@pytest.mark.parametrize(("bad", "needle"), [
    (",", "empty host"), ("node-01,", "empty host"), ("", "empty host"), (" ", "empty host"),
    ("u@", "empty host"), ("@stt", "is a group or role"), ("node-01,@gpu", "group or role")])
def test_fab_host_list_refuses_empty_hosts_and_groups(bad: str, needle: str) -> None:
    with pytest.raises(SelectionError, match=needle):
        validate_host_list(bad)


@pytest.mark.parametrize("argv", [
    ["/x/bin/fab", "-H", ",", "uptime"], ["fab", "-H@stt", "uptime"],
    ["fab", "--hosts=node-01,", "run"], ["fab", "--hosts", "", "run"]])
def test_fab_argv_is_checked(argv: list[str]) -> None:
    with pytest.raises(SelectionError):
        validate_fab_argv(argv)


@pytest.mark.parametrize("argv", [
    ["fab", "-H", "node-01,u@10.0.0.5", "uptime"], ["fab", "uptime"],
    ["pytest", "-H", ","], []])
def test_fab_argv_passes_good_hosts_and_other_programs(argv: list[str]) -> None:
    validate_fab_argv(argv)


def test_shown_is_bounded_even_for_huge_shared_values() -> None:
    """60,000 references to one 700 KB string: 42 GB as a plain repr, a line here."""
    text = shown(["x" * 700_000] * 60_000)
    assert len(text) < 100 and "characters)" in text


CLUSTERSHELL_PROBE = textwrap.dedent("""
    import json
    from ClusterShell.NodeSet import NodeSet
    from skeleton_app.errors import SelectionError
    from skeleton_app.nodes import Node, fold, select

    nodes = [Node(id=f"n-{i:02d}", host=f"10.0.0.{i}", roles=("stt",) if i == 1 else ())
             for i in range(1, 5)]
    out = {"clustershell_stt": sorted(NodeSet("@stt")),
           "clustershell_wildcard": sorted(NodeSet("n-0*"))}
    out["ours_stt"] = [n.id for n in select(nodes, ["@stt"])]
    out["ours_wildcard"] = [n.id for n in select(nodes, ["n-0[1-2]*"])]
    out["fold"] = fold(["n-01", "n-02"])
    for spec in ["@ops", "@all", "n-0[1-2]*,@ops"]:
        try:
            select(nodes, [spec])
            out[spec] = "selected"
        except SelectionError as exc:
            out[spec] = str(exc)
    print(json.dumps(out))
""")


def test_clustershell_group_sources_are_never_consulted(tmp_path: Path) -> None:
    """A ClusterShell groups config (as /etc/clustershell would hold) that resolves @stt, @ops
    and every wildcard to all nodes: ClusterShell itself obeys it, our selection does not."""
    plant_clustershell_groups(tmp_path,
                              "stt: n-[01-04],evil\nops: n-[01-04]\nall: n-[01-04],n-0evil\n")
    env = {**os.environ, "CLUSTERSHELL_CFGDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", CLUSTERSHELL_PROBE], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # the planted config is live: ClusterShell's own resolver would widen both
    assert out["clustershell_stt"] == ["evil", "n-01", "n-02", "n-03", "n-04"]
    assert out["clustershell_wildcard"] == ["n-01", "n-02", "n-03", "n-04", "n-0evil"]
    # ours: @stt is the role, a range-with-glob only what it names, @ops/@all unknown
    assert out["ours_stt"] == ["n-01"]
    assert out["ours_wildcard"] == ["n-01", "n-02"]
    assert out["fold"] == "n-[01-02]"
    for spec in ["@ops", "@all", "n-0[1-2]*,@ops"]:
        assert "no group or role named" in out[spec], out


# Specs built from parts whose meaning is known: ids, unknown ids, hosts, globs, ranges, roles,
# groups, and junk. The selection is exactly the union of what the parts name, or an error
# when any part names nothing.
_PART = st.one_of(
    st.sampled_from([n.id for n in NODES]).map(lambda i: (i, {i})),
    st.sampled_from(["linux-09", "mac-01", "node", "linux-1"]).map(lambda i: (i, None)),
    st.sampled_from(NODES).map(lambda n: (n.host, {n.id})),
    st.sampled_from(["linux-*", "win*", "linux-0?", "*-main"]).map(
        lambda g: (g, {n.id for n in NODES if fnmatch.fnmatchcase(n.id, g)})),
    st.lists(st.integers(1, 6), min_size=1, max_size=4, unique=True).map(
        lambda xs: ("linux-[" + ",".join(f"{x:02d}" for x in xs) + "]",
                    {f"linux-{x:02d}" for x in xs})),
    st.sampled_from(["stt", "tts", "gpu"]).map(
        lambda r: (f"@{r}", {n.id for n in NODES if r in n.roles})),
    st.sampled_from(["edge"]).map(lambda g: (f"@{g}", {"linux-05", "linux-06",
                                                       "windows-main"})),
    st.sampled_from(["", " ", "@nosuch", "@", "a!b", "x&y", "[", "@all", "*.*"]).map(
        lambda j: (j, None)),
)


@pytest.mark.slow  # hundreds of generated cases: 2-5 s
@settings(max_examples=300, deadline=None)
@given(parts=st.lists(_PART, min_size=1, max_size=5), spaces=st.booleans())
def test_property_selection_is_exactly_what_the_spec_names(
        parts: list[tuple[str, set[str] | None]], spaces: bool) -> None:
    spec = (", " if spaces else ",").join(text for text, _ in parts)
    named = [want for _, want in parts]
    groups = {"edge": ["linux-0[5-6],windows-main"]}
    if any(want is None for want in named):
        with pytest.raises(SelectionError):
            select(NODES, [spec], groups=groups)
        return
    chosen = set(ids(select(NODES, [spec], groups=groups)))
    assert chosen == set().union(*[w for w in named if w is not None])


_SPICY = st.text(alphabet="linux-0123456wdmaAB@*?[],!&^ .:_", max_size=24)


@pytest.mark.slow  # hundreds of generated cases: 2-5 s
@settings(max_examples=500, deadline=None)
@given(spec=_SPICY, exclude=st.lists(_SPICY, max_size=2))
def test_property_random_specs_never_select_more_than_they_name(spec: str,
                                                                 exclude: list[str]) -> None:
    """Whatever the text: an error, or only nodes that some element of the spec spells out
    (by id or address), matches as a glob/range, or holds as a role; never an excluded one;
    and an exclusion always removes something."""
    try:
        chosen = select(NODES, [spec], exclude=exclude)
    except SelectionError:
        return
    for node in chosen:
        spelled = node.id in spec or node.host in spec
        wildcard = any(ch in spec for ch in "*?[")
        role = any(f"@{r}" in spec for r in node.roles)
        assert spelled or wildcard or role, (spec, node.id)
    if exclude:
        assert len(select(NODES, [spec])) > len(chosen)


@pytest.mark.parametrize(("element", "host"), [
    ("node-01", "node-01"), ("node-01:2222", "node-01"), ("ops@node-01:22", "node-01"),
    ("ops@node-[01-02]", "node-[01-02]"), ("10.0.0.5", "10.0.0.5"), ("fe80::1", "fe80::1"),
])
def test_fab_host_part(element: str, host: str) -> None:
    from skeleton_app.app.fab_hosts import host_part

    assert host_part(element) == host


def test_fab_hosts_are_all_checked_before_any_runs() -> None:
    """`fab -H node-01,nosuch run` ran on node-01 before the typo stopped it: every element
    is looked up in the configuration first (no connection, no DNS)."""
    from skeleton_app.app.commands import Session
    from skeleton_app.app.fab_hosts import check_all
    from skeleton_app.cluster import Cluster
    from skeleton_app.config import Settings

    nodes = (Node(id="node-01", host="127.0.0.1", port=1),
             Node(id="node-02", host="127.0.0.1", port=1))
    session = Session(cluster=Cluster(Settings(), nodes))
    check_all(session, ["node-01", "ops@node-[01-02]:22", "10.0.0.5"])
    with pytest.raises(SelectionError, match=r"unknown node nosuch .*known nodes: node-\[01-02\]"):
        check_all(session, ["node-01:22", "nosuch"])
