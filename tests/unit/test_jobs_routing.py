"""Routing (ops/jobs/routing.py): the score-v1 formula, the tie-break, every rejection
reason, and the one-line explanation `jobs show` prints. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

import pytest

from skeleton_app.engines import DEFAULT_ENGINES, Engine
from skeleton_app.ops.jobs import routing
from skeleton_app.registry.job_records import Load
from skeleton_app.registry.records import NodeEntry
from tests.support.jobs_nodes import NOW, entry

STT = next(e for e in DEFAULT_ENGINES if e.name == "stt")
GPU = Engine(name="big", role="stt_batch", command="whisper {input}", input="file",
             gpu_mem_mib=4000)


def load(running: Mapping[str, int] | None = None,
         cooldown: Mapping[str, tuple[datetime, str]] | None = None,
         idle: Mapping[str, datetime] | None = None) -> Load:
    return Load(now=NOW, running=running or {}, cooldown=cooldown or {},
                idle_since=idle or {})


def passed(*entries: NodeEntry) -> dict[str, str | None]:
    return {e.node.id: None for e in entries}


def decide(entries: list[NodeEntry], the_load: Load | None = None, engine: Engine = STT,
           preflight: Mapping[str, str | None] | None = None,
           **kwargs: object) -> routing.Decision:
    return routing.decide(engine, entries, the_load or load(), stale_after=30.0,
                          preflight=passed(*entries) if preflight is None else preflight,
                          **kwargs)  # type: ignore[arg-type]


def test_score_is_cpu_plus_slots_plus_half_the_memory_used() -> None:
    node = entry("n1", cpus=4, load=1.0, mem=(1000, 600))
    decision = decide([node], load(running={"n1": 1}))
    assert decision.route is not None and decision.route.node_id == "n1"
    reason = decision.reason
    # cpu 1.0/4 + 1/4 slots + 0.5 * 0.4 memory used
    assert reason["score"] == pytest.approx(0.25 + 0.25 + 0.2)
    assert reason["terms"] == {"cpu": 0.25, "slots": "1/4", "mem": 0.4}
    assert reason["policy"] == "score-v1" and reason["candidates"] == 1
    assert reason["heartbeat_age_s"] == 1.0


def test_cpu_busy_wins_over_the_load_average() -> None:
    # The testbed's loadavg is the host's: cpu_busy (this node's own processes) is used.
    node = entry("n1", cpus=2, load=2.0, cpu_busy=0.1)
    assert decide([node]).reason["terms"]["cpu"] == 0.1


def test_a_busy_node_loses_to_an_idle_one() -> None:
    busy = entry("a-busy", cpu_busy=0.95)
    idle = entry("b-idle", cpu_busy=0.02)
    decision = decide([busy, idle])
    assert decision.route is not None and decision.route.node_id == "b-idle"
    assert decision.reason["others"]["a-busy"]["score"] == pytest.approx(0.95)


def test_jobs_running_count_against_a_node() -> None:
    a, b = entry("a", cpus=2), entry("b", cpus=2)
    decision = decide([a, b], load(running={"a": 1}))
    assert decision.route is not None and decision.route.node_id == "b"


def test_unknown_metrics_count_as_busy() -> None:
    silent = entry("a", load=None, mem=None)
    talking = entry("b", load=0.5, mem=(100, 10))
    decision = decide([silent, talking])
    assert decision.route is not None and decision.route.node_id == "b"
    assert decision.reason["others"]["a"]["terms"] == {"cpu": None, "slots": "0/2",
                                                       "mem": None}


def test_ties_go_to_the_node_idle_longest_then_to_the_id() -> None:
    a, b, c = entry("a"), entry("b"), entry("c")
    idle = {"a": NOW - timedelta(seconds=5), "b": NOW - timedelta(seconds=50),
            "c": NOW - timedelta(seconds=5)}
    decision = decide([a, b, c], load(idle=idle))
    assert decision.route is not None and decision.route.node_id == "b"
    # Never used at all: idle longest of all.
    decision = decide([a, b, c], load(idle={"a": NOW, "b": NOW}))
    assert decision.route is not None and decision.route.node_id == "c"
    # No history: the id decides, so the choice is deterministic.
    decision = decide([c, b, a])
    assert decision.route is not None and decision.route.node_id == "a"


@pytest.mark.parametrize(("node", "why"), [
    (entry("x", approved=False), "not approved"),
    (entry("x", enabled=False), "disabled"),
    (entry("x", roles=("tts",)), "no role stt_batch"),
    (entry("x", seen=None), "no daemon heartbeat"),
    (entry("x", seen=45.0), "daemon stale (last heartbeat 45 s ago)"),
])
def test_each_rejection_is_recorded_with_its_reason(node: NodeEntry, why: str) -> None:
    decision = decide([node])
    assert decision.route is None
    assert decision.reason["chosen"] is None
    assert decision.reason["others"] == {"x": why}


def test_cool_down_slots_gpu_and_preflight_rejections() -> None:
    until = NOW + timedelta(seconds=30)
    nodes = [entry("cool"), entry("full", labels={"slots": "1"}), entry("nogpu"),
             entry("smallgpu", gpus=[(1000, 8000)]), entry("notools", gpus=[(8000, 8000)]),
             entry("unchecked", gpus=[(5000, 8000)]),  # pending, would score worse
             entry("ok", gpus=[(1000, 8000), (6000, 8000)])]
    pre = passed(*nodes)
    pre["notools"] = "sox is not installed on notools"
    del pre["unchecked"]
    decision = decide(nodes, load(running={"full": 1}, cooldown={"cool": (until, "lost job 17")}),
                      engine=GPU, preflight=pre)
    assert decision.route is not None and decision.route.node_id == "ok"
    others = decision.reason["others"]
    assert others["cool"] == "cool-down until 14:00:30: lost job 17"
    assert others["full"] == "slots full (1/1)"
    assert others["nogpu"] == "no GPU reported"
    assert others["smallgpu"] == "GPU memory 1000 MiB free, needs 4000"
    assert others["notools"] == "sox is not installed on notools"
    assert others["unchecked"]["preflight"] == "pending"  # scored, worse: nothing held
    assert others["unchecked"]["score"] > decision.reason["score"]
    assert decision.needs_preflight == ("unchecked",)
    # The best GPU (6000 of 8000 free) is the one scored.
    assert decision.reason["terms"]["gpu"] == 0.25


def test_an_expired_cool_down_is_no_rejection() -> None:
    node = entry("n1")
    past = NOW - timedelta(seconds=1)
    assert decide([node], load(cooldown={"n1": (past, "lost job 3")})).route is not None


def test_slots_come_from_the_label_then_the_setting_then_the_cpus() -> None:
    assert routing.node_slots(entry("a", labels={"slots": "3"}, cpus=8), 2) == 3
    assert routing.node_slots(entry("a", labels={"slots": "zero"}, cpus=8), 2) == 2
    assert routing.node_slots(entry("a", cpus=8), None) == 8
    assert routing.node_slots(entry("a", cpus=8, labels={"slots": "-1"}), None) == 8


def test_the_role_is_never_violated() -> None:
    # However idle a node without the role is, it is never chosen.
    wrong = [entry(f"tts{i}", roles=("tts",), cpu_busy=0.0, mem=(10, 10)) for i in range(5)]
    right = entry("stt", roles=("stt_batch", "tts"), cpu_busy=1.0, mem=(10, 0))
    for _ in range(3):
        decision = decide([*wrong, right], load(running={"stt": 1}))
        assert decision.route is not None and decision.route.node_id == "stt"
    assert decide(wrong).route is None


def test_needs_preflight_lists_only_nodes_that_pass_everything_else() -> None:
    nodes = [entry("a"), entry("b", roles=("tts",)), entry("c", enabled=False)]
    decision = decide(nodes, preflight={})
    assert decision.route is None and decision.needs_preflight == ("a",)


def test_a_pending_node_that_would_score_best_holds_the_job() -> None:
    # A fresh dispatcher knows one preflight (the busy node's) before the other: the idle
    # node is waited for, not passed over.
    busy, idle = entry("busy", cpu_busy=0.9), entry("idle", cpu_busy=0.05)
    decision = decide([busy, idle], preflight={"busy": None})
    assert decision.route is None and decision.needs_preflight == ("idle",)
    assert decision.reason["waits_for_preflight"] == "idle"
    assert routing.explain(decision.reason).startswith(
        "waiting for idle's preflight (it would score best)")
    # Checked, it wins; a pending node that would score worse holds nothing.
    decision = decide([busy, idle], preflight={"busy": None, "idle": None})
    assert decision.route is not None and decision.route.node_id == "idle"
    decision = decide([busy, idle], preflight={"idle": None})
    assert decision.route is not None and decision.route.node_id == "idle"
    assert decision.needs_preflight == ("busy",)


def test_a_retry_records_the_attempt_before() -> None:
    decision = decide([entry("b")], retry_of={"attempt": 1, "node": "a"})
    assert decision.reason["retry_of"] == {"attempt": 1, "node": "a"}


def test_explain_renders_a_reason_as_one_line() -> None:
    nodes = [entry("linux-01", cpu_busy=0.9), entry("linux-02", cpus=2, cpu_busy=0.05,
                                                    mem=(100, 64)),
             entry("linux-04", roles=("tts",))]
    decision = decide(nodes, load(running={"linux-02": 1}), retry_of={"attempt": 1,
                                                                      "node": "linux-03"})
    line = routing.explain(decision.reason)
    assert line == ("linux-02: lowest score 0.73 of 2 candidates (cpu 0.05, 1/2 slots,"
                    " mem 36% used); retry of attempt 1 on linux-03; other scores:"
                    " linux-01 0.90; skipped: linux-04 (no role stt_batch)")
    assert "\n" not in line
    assert routing.explain(decide([nodes[2]]).reason) == (
        "no node could take it; skipped: linux-04 (no role stt_batch)")


def test_explain_survives_a_hostile_or_empty_reason() -> None:
    assert routing.explain({}) == "no routing reason recorded"
    weird = {"chosen": "n\x1b[31m1", "score": "high", "terms": [1], "others": {"x": 3,
                                                                          "y\n": {"score": 1}}}
    line = routing.explain(weird)
    assert "\x1b" not in line and "\n" not in line
