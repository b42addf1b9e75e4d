"""Node validation and selection (ranges, globs, roles, exclude, no-match errors)."""

from __future__ import annotations

import pytest

from skeleton_app.errors import SelectionError
from skeleton_app.nodes import Node, fold, select, validate_host, validate_node_id

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
