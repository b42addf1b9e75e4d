"""The per-target plan, as pure functions of a node's facts and the source's manifests.

`plan_target` decides what is up to date, what is linked from the published copy or kept
from an interrupted run, what is removed from staging, and what must be transferred.
`prepare_files` and `seal_files` are the lists models.sh's prepare and seal steps take;
`check_staged` is the controller's own check of a staged copy before it publishes it.
Nothing here touches a node: the unit tests drive it with hand-built facts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from skeleton_app.ops.sync_models.answer import Facts, Stat, under
from skeleton_app.ops.sync_models.manifest import Entry, Manifest, sort_key
from skeleton_app.ops.sync_models.paths import STAGE, node_path, split_name, strip_dot


@dataclass
class Plan:
    """What one target needs, and the prepare step that gets its staging directory ready."""

    names: list[str] = field(default_factory=list)  # models to publish
    up_to_date: list[str] = field(default_factory=list)
    rm: list[str] = field(default_factory=list)
    mkdir: list[str] = field(default_factory=list)
    link: list[str] = field(default_factory=list)  # pairs, flattened
    symlink: list[str] = field(default_factory=list)  # pairs (target, path), flattened
    need: list[tuple[str, int, int]] = field(default_factory=list)  # (./NAME/rel, size, have)
    repaired: list[str] = field(default_factory=list)

    @property
    def need_bytes(self) -> int:
        return sum(size - have for _, size, have in self.need)

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(sorted(p for p, _, _ in self.need))


def plan_target(facts: Facts, manifests: Mapping[str, Manifest], *, verify: bool) -> Plan:
    """Decide, from a target's facts, what is up to date, what can be linked or kept, and what
    must be transferred (see the package docstring)."""
    plan = Plan()
    hashes = facts.hashes if verify else None
    for name, man in manifests.items():
        final_claim, _ = Manifest.from_json(name, facts.final_claims.get(name))
        stage_claim, _ = Manifest.from_json(name, facts.stage_claims.get(name))
        final = under(facts.entries, name)
        staged = under(facts.entries, f"{STAGE}/{name}")
        if final_claim is not None and final_claim.digest == man.digest:
            wrong = matches(final, man, hashes, name)
            if not wrong:
                plan.up_to_date.append(name)
                continue
            plan.repaired += [f"{name}/{rel}" if rel else name for rel in wrong
                              if man.entry(rel) is not None]
        plan.names.append(name)
        _plan_model(plan, name, man, final, staged, final_claim, stage_claim, facts.hashes,
                    verify)
    return plan


def matches(tree: Mapping[str, Stat], man: Manifest, hashes: Mapping[str, str] | None,
            prefix: str) -> list[str]:
    """Paths (relative to the model) where `tree` differs from `man`; [] when identical.
    With `hashes` (path relative to M -> sha256), file contents are compared too."""
    wrong: list[str] = []
    want = {e.path: e for e in man.entries}
    for rel, e in want.items():
        st = tree.get(rel)
        full = f"{prefix}/{rel}" if rel else prefix
        if (st is None or st.kind != e.kind
                or (e.kind == "f" and st.size != e.size)
                or (e.kind == "f" and hashes is not None and hashes.get(full) != e.sha256)
                or (e.kind == "l" and st.target != e.target)):
            wrong.append(rel)
    wrong += [rel for rel in tree if rel not in want]
    return wrong


def _plan_model(plan: Plan, name: str, man: Manifest, final: Mapping[str, Stat],
                staged: Mapping[str, Stat], final_claim: Manifest | None,
                stage_claim: Manifest | None, hashes: Mapping[str, str], verify: bool) -> None:
    root = man.entry("")
    assert root is not None
    want = {e.path: e for e in man.entries}

    def sp(rel: str) -> str:
        return node_path(name, rel, staged=True)

    def fp(rel: str) -> str:
        return node_path(name, rel)

    def known_sha(claim: Manifest | None, rel: str, path: str) -> str | None:
        if verify:
            return hashes.get(strip_dot(path))
        entry = claim.entry(rel) if claim is not None else None
        return entry.sha256 if entry is not None and entry.kind == "f" else None

    top = staged.get("")
    if top is not None and top.kind != root.kind:
        plan.rm.append(sp(""))
        staged = {}
    # Anything staged that the manifest does not have goes (only the topmost of a subtree).
    removed: list[str] = []
    for rel in sorted(staged, key=sort_key):
        if rel in want and staged[rel].kind == want[rel].kind:
            continue
        if any(rel.startswith(r + "/") for r in removed):
            continue
        removed.append(rel)
        plan.rm.append(sp(rel))
    gone = set(removed)

    def present(rel: str) -> Stat | None:
        if rel in gone or any(rel.startswith(r + "/") for r in removed):
            return None
        return staged.get(rel)

    for e in man.entries:
        st = present(e.path)
        if e.kind == "d":
            if st is None:
                plan.mkdir.append(sp(e.path))
        elif e.kind == "l":
            if st is None or st.target != e.target:
                if st is not None:
                    plan.rm.append(sp(e.path))
                plan.symlink += [e.target, sp(e.path)]
        else:
            have = 0
            if st is not None:
                sha = known_sha(stage_claim, e.path, sp(e.path))
                if st.size == e.size and sha == e.sha256:
                    continue  # complete from an earlier, interrupted run
                if (st.size < e.size and st.nlink == 1 and stage_claim is not None
                        and (stage_claim.entry(e.path) or Entry("", "")).sha256 == e.sha256):
                    have = st.size  # a prefix of the right file: appended to by rsync
                else:
                    plan.rm.append(sp(e.path))
            fin = final.get(e.path)
            if (have == 0 and fin is not None and fin.kind == "f" and fin.size == e.size
                    and known_sha(final_claim, e.path, fp(e.path)) == e.sha256):
                plan.link += [fp(e.path), sp(e.path)]
                continue
            plan.need.append((fp(e.path), e.size, have))


# ---------------------------------------------------------------------------- step inputs


def nul_list(items: Iterable[str]) -> bytes:
    """`items` as models.sh reads a list: NUL-terminated names, any byte but NUL allowed."""
    return b"".join(item.encode("utf-8", "surrogateescape") + b"\0" for item in items)


def prepare_files(plan: Plan, manifests: Mapping[str, Manifest]) -> dict[str, bytes]:
    """The inputs of models.sh prepare: what to remove, make and link in staging, and the
    manifests the staged copies are built for."""
    files = {
        "rm.lst": nul_list(plan.rm), "mkdir.lst": nul_list(plan.mkdir),
        "link.lst": nul_list(plan.link), "symlink.lst": nul_list(plan.symlink),
    }
    for name in plan.names:
        files[f"sclaims/{name}.json"] = manifests[name].to_json()
    return files


def seal_files(plan: Plan, manifests: Mapping[str, Manifest]) -> dict[str, bytes]:
    """What a receiver needs to check and publish its own copy (models.sh seal): the
    staged tree as it must be, the transferred files' hashes, the claims."""
    records: list[bytes] = []
    for name in plan.names:
        for e in manifests[name].entries:
            path = node_path(name, e.path, staged=True)
            text = {"f": f"f {e.size} {path}", "d": f"d {path}",
                    "l": f"l {path}\x01{e.target}"}[e.kind]
            records.append(text.encode("utf-8", "surrogateescape") + b"\0")
    files = {"expect": b"".join(sorted(records)), "pub.lst": nul_list(plan.names),
             # the only members its tar extracts from a stream (models.sh extract)
             "recv.lst": nul_list(p for p, _, _ in plan.need)}
    # Every transferred file is checked against its sha256 before publishing, --verify
    # or not: the stream may have passed through other peers of the chain.
    sums = []
    for path, _, _ in plan.need:
        entry = entry_of(manifests, path)
        sums.append(f"{entry.sha256}  {path}".encode("utf-8", "surrogateescape") + b"\0")
    files["expect.sha"] = b"".join(sorted(sums))
    for name in plan.names:
        files[f"fclaims/{name}.json"] = manifests[name].to_json()
    return files


def entry_of(manifests: Mapping[str, Manifest], path: str) -> Entry:
    """The manifest entry of "./NAME/rel" (a path the plan made from the manifests)."""
    name, rel = split_name(path)
    entry = manifests[name].entry(rel)
    assert entry is not None
    return entry


# ---------------------------------------------------------------------------- after transfer


@dataclass(frozen=True, slots=True)
class StagedCheck:
    """How a staged copy differs from its manifests after a transfer."""

    problems: list[str]  # NAME/rel missing or wrong: nothing is published
    strays: list[str]  # ./.skeleton-staging/NAME/rel the manifest does not list: removed
    corrupt: list[str]  # transferred files at full size with a wrong hash (absolute paths)


def check_staged(facts: Facts, manifests: Mapping[str, Manifest], names: Sequence[str],
                 transferred: Sequence[str], where: str) -> StagedCheck:
    """Compare the staged copies of `names` in `facts` (a probe that hashed the
    `transferred` files, "./NAME/rel") with their manifests. Files linked or kept were
    checked before (`plan_target`); `where` is the models directory, for `corrupt`."""
    sent = set(transferred)
    problems: list[str] = []
    strays: list[str] = []
    corrupt: list[str] = []
    for name in names:
        man = manifests[name]
        staged = under(facts.entries, f"{STAGE}/{name}")
        hashes: dict[str, str] = {}
        for rel in (e.path for e in man.entries if e.kind == "f"):
            key = strip_dot(node_path(name, rel, staged=True))
            if node_path(name, rel) in sent:
                hashes[key] = facts.hashes.get(key, "")
            else:
                entry = man.entry(rel)
                hashes[key] = entry.sha256 if entry else ""  # checked before linking
        wrong = matches(staged, man, hashes, f"{STAGE}/{name}")
        corrupt += [f"{where}/{node_path(name, rel, staged=True)[2:]}" for rel in wrong
                    if node_path(name, rel) in sent
                    and _full_size(staged.get(rel), man.entry(rel))]
        want = {e.path for e in man.entries}
        strays += [node_path(name, rel, staged=True) for rel in wrong if rel not in want]
        problems += [f"{name}/{rel}" if rel else name for rel in wrong if rel in want]
    return StagedCheck(problems, strays, corrupt)


def _full_size(st: Stat | None, entry: Entry | None) -> bool:
    """A staged regular file at the manifest's size (complete, so its hash was compared)."""
    return (st is not None and entry is not None and st.kind == entry.kind == "f"
            and st.size == entry.size)
