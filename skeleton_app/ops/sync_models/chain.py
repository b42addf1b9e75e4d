"""Targets, the jobs that serve them, and the routing of chains around pairs that failed.

Targets that need the same files form one job: a pipelined chain (or a relay through the
controller); a target alone with its needs pulls. A hop that cannot be opened (no route, a
changed host key between two nodes) marks only that *pair* (the node that opened -> its
peer) as unusable, with its cause. The next round orders chains so that no failed pair is
a hop (a node that failed to open connections goes last, and is pushed to rather than
pulling), and relays a target no peer can serve. `chains` and `stranded` are pure functions
of the failures recorded so far (`HopLog`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Literal

from skeleton_app.errors import NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ops.sync_models.answer import Facts
from skeleton_app.ops.sync_models.plan import Plan

MAX_ROUNDS = 3

TargetState = Literal["pending", "up-to-date", "synced", "refused", "failed"]
JobMode = Literal["chain", "pull", "relay"]


@dataclass
class Target:
    """One target's state through the run (what the result reports at the end)."""

    node: Node
    status: TargetState = "pending"
    facts: Facts | None = None
    plan: Plan | None = None
    staged_base: int = 0
    moved: int = 0  # bytes received in this run
    seconds: float = 0.0
    via: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    error_kind: NodeErrorKind | None = None
    message: str = ""
    job: str = ""  # the job it is prepared for in this round
    hop_error: str = ""  # prepared, but could not connect to the next node of its chain
    rerouted: list[str] = field(default_factory=list)  # hop failures routed around
    relay_why: str = ""  # set when no peer could reach it: relayed through the controller

    def fail(self, message: str, kind: NodeErrorKind | None = None) -> None:
        self.status = "failed"
        self.message = message
        self.error_kind = kind

    def reroute(self, cause: str) -> None:
        if cause not in self.rerouted:
            self.rerouted.append(cause)


@dataclass
class Job:
    """One transfer of the same files to `members`, from one holder."""

    id: str
    members: list[Target]
    files: list[str]  # ./NAME/rel, as they sit in every holder's models dir
    total: int
    mode: JobMode
    reports: dict[int, tuple[str, str]] = field(default_factory=dict)  # what members sealed
    finished: set[int] = field(default_factory=set)  # members that cleaned up after sealing

    def absorb(self, facts: Facts) -> None:
        self.reports.update(facts.reports)
        self.finished |= facts.finished


# ---------------------------------------------------------------------------- failed pairs


# models.sh's exit-4 message when a node could not open its connection to a peer; the cause
# is ssh's own last line, or "host key changed" / "host key not known".
_HOP_FAILURE = re.compile(r"cannot reach peer ([0-9]+): (.*)")


@dataclass(frozen=True, slots=True)
class HopFailure:
    """`opener` could not open its SSH connection to `peer` (the sender of a chain opens it
    to the receiver, the receiver of a pull to the holder). The other direction may work."""

    opener: str
    peer: str
    cause: str  # names the pair: "host key changed between node-04 and node-05"
    network: bool  # the network failed (not a key or login): the node may be cut off


Failures = Mapping[tuple[str, str], HopFailure]  # (opener, peer) -> what happened


def hop_cause(opener: str, peer: str, why: str) -> tuple[str, bool]:
    """(a message naming the pair and the cause, whether the network failed) for models.sh's
    reason `why` that `opener` could not open its connection to `peer`."""
    why = why.strip().rstrip(".") or "ssh failed"
    if why == "host key changed":
        return f"host key changed between {opener} and {peer}", False
    if why == "host key not known":
        return f"{opener} does not know the host key of {peer}", False
    network = "Permission denied" not in why
    if why == "Invalid argument":
        why = "no route (a blackhole route: Invalid argument)"  # what connect(2) says then
    return f"{opener} cannot reach {peer}: {why[0].lower()}{why[1:]}", network


class HopLog:
    """The pairs that failed in this run: never planned again, routed around. Each new one
    is also a warning of the run (appended to `warnings`)."""

    def __init__(self, warnings: list[str]):
        self._warnings = warnings
        self._failures: dict[tuple[str, str], HopFailure] = {}
        self._lock = threading.Lock()

    def record(self, opener: str, peer: str, message: str) -> str:
        """Record that `opener` cannot open a connection to `peer` (from a step's exit-4
        message); returns the cause, naming the pair ("" when the step failed otherwise)."""
        found = _HOP_FAILURE.search(message)
        if found is None:
            return ""
        cause, network = hop_cause(opener, peer, found.group(2))
        with self._lock:
            if (opener, peer) not in self._failures:
                self._warnings.append(f"{cause}; routed around it")
            self._failures[(opener, peer)] = HopFailure(opener, peer, cause, network)
        return cause

    def failed(self, opener: str, peer: str) -> bool:
        """`opener` failed to open a connection to `peer` in this run."""
        with self._lock:
            return (opener, peer) in self._failures

    def snapshot(self) -> dict[tuple[str, str], HopFailure]:
        with self._lock:
            return dict(self._failures)


def opened_badly(node: str, failures: Failures) -> bool:
    """`node` failed to open a connection to a peer in this run."""
    return any(f.opener == node for f in failures.values())


def stranded(node: str, failures: Failures, holders: Set[str], *, last_round: bool) -> str:
    """Why no peer can serve `node` (its failed hops), or "" while one may. Stranded: no
    holder could push to it and it could not pull (from every holder, or the network
    failed its own connections), or the network failed both into and out of it (a node
    cut off from its peers: trying each holder would cost a connect timeout each), or
    this is the last round."""
    into = [f for f in failures.values() if f.peer == node]
    out = [f for f in failures.values() if f.opener == node]
    if not into and not out:
        return ""
    cut_in, cut_out = any(f.network for f in into), any(f.network for f in out)
    no_push = bool(into) and holders <= {f.opener for f in into}
    no_pull = bool(out) and (holders <= {f.peer for f in out} or cut_out)
    if last_round or (no_push and no_pull) or (cut_in and cut_out):
        return "; ".join(dict.fromkeys(f.cause for f in [*into, *out]))
    return ""


def chains(nodes: Sequence[str], failures: Failures) -> list[list[str]]:
    """`nodes` (in peer order) as chains in which no hop is a pair that failed. Without
    failures: one chain in that order (the fast path). Nodes that failed to open
    connections go last, where they forward to nobody."""
    rest = sorted(nodes, key=lambda n: opened_badly(n, failures))  # stable: order kept
    out = []
    while rest:
        chain = [rest.pop(0)]
        while True:
            nxt = next((n for n in rest if (chain[-1], n) not in failures), None)
            if nxt is None:
                break
            rest.remove(nxt)
            chain.append(nxt)
        out.append(chain)
    return out


def plan_jobs(ready: Sequence[Target], failures: Failures, *, holders: Set[str],
              relay: bool, last_round: bool, order: Mapping[str, int],
              next_id: Callable[[], str]) -> list[Job]:
    """Group targets by the files they need: a chain (or relay) per group, a pull for a
    target alone with its needs. Pairs that failed earlier in the run are routed around:
    chains are ordered (and split) so that no failed pair is a hop, and a target no peer
    can reach goes through the controller (relay). `order`: node id -> peer number."""
    groups: dict[tuple[str, ...], list[Target]] = {}
    for t in ready:
        assert t.plan is not None
        groups.setdefault(t.plan.key, []).append(t)
    jobs = []
    for members in groups.values():
        plan = members[0].plan
        assert plan is not None
        files = [p for p, _, _ in plan.need]
        total = sum(size for _, size, _ in plan.need)
        if relay:
            jobs.append(Job(next_id(), members, files, total, "relay"))
            continue
        for t in members:
            t.relay_why = stranded(t.node.id, failures, holders, last_round=last_round)
        stuck = [t for t in members if t.relay_why]
        if stuck:
            jobs.append(Job(next_id(), stuck, files, total, "relay"))
        by_id = {t.node.id: t for t in members if not t.relay_why}
        for ids in chains(sorted(by_id, key=lambda n: order[n]), failures):
            # A target alone pulls, unless it failed to open connections itself: then the
            # holder pushes (a chain of one).
            alone = len(ids) == 1 and not opened_badly(ids[0], failures)
            jobs.append(Job(next_id(), [by_id[n] for n in ids], files, total,
                            "pull" if alone else "chain"))
    return jobs
