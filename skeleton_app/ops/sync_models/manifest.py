"""What a model is: its manifest (every entry with size and sha256, and their digest), built
from the source's listing, and the checks that listing must pass first.

The source's listing is hostile input: `listing_problem` refuses names `find` never prints,
and `from_listing` keeps only symlinks that resolve inside the model (`skeleton_app.safepath`).
A node's claim (the manifest it published a model with) is `Manifest.to_json`, read back with
`Manifest.from_json`, which trusts nothing it cannot re-derive (the digest is recomputed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from skeleton_app.ops.sync_models.answer import Stat
from skeleton_app.safepath import name_problem, resolve_in_tree

_CLAIM_VERSION = 1


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of a model. `path` is relative to the model root ("" is the root itself)."""

    path: str
    kind: str  # "f" regular file, "d" directory, "l" symlink
    size: int = 0
    sha256: str = ""
    target: str = ""  # symlink target

    def as_list(self) -> list[Any]:
        if self.kind == "f":
            return [self.path, "f", self.size, self.sha256]
        if self.kind == "l":
            return [self.path, "l", self.target]
        return [self.path, "d"]


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a model is: its entries (sorted by path) and their digest."""

    name: str
    kind: str  # "dir" or "file"
    entries: tuple[Entry, ...]
    digest: str
    _by_path: dict[str, Entry] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_path", {e.path: e for e in self.entries})

    @classmethod
    def build(cls, name: str, kind: str, entries: Iterable[Entry]) -> Manifest:
        ordered = tuple(sorted(entries, key=lambda e: sort_key(e.path)))
        return cls(name=name, kind=kind, entries=ordered, digest=_digest(kind, ordered))

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries if e.kind == "f")

    @property
    def files(self) -> int:
        return sum(1 for e in self.entries if e.kind == "f")

    def entry(self, path: str) -> Entry | None:
        return self._by_path.get(path)

    def to_json(self, stat: Mapping[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {
            "version": _CLAIM_VERSION, "name": self.name, "kind": self.kind,
            "digest": self.digest, "entries": [e.as_list() for e in self.entries],
        }
        if stat:
            data["stat"] = dict(stat)
        # ensure_ascii: names that are not UTF-8 (held as surrogates) survive the round trip.
        return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, name: str, raw: bytes | None) -> tuple[Manifest | None, dict[str, Any]]:
        """(manifest, stat cache) from a claim file; (None, {}) when absent or unreadable."""
        if not raw:
            return None, {}
        try:
            data = json.loads(raw)
            if data.get("version") != _CLAIM_VERSION or data.get("kind") not in ("dir", "file"):
                return None, {}
            entries = []
            for item in data["entries"]:
                path, kind = str(item[0]), str(item[1])
                if name_problem(path) is not None:
                    return None, {}
                if kind == "f":
                    entries.append(Entry(path, "f", int(item[2]), str(item[3])))
                elif kind == "l":
                    entries.append(Entry(path, "l", target=str(item[2])))
                elif kind == "d":
                    entries.append(Entry(path, "d"))
                else:
                    return None, {}
            manifest = cls.build(name, data["kind"], entries)
            if manifest.digest != data.get("digest"):
                return None, {}  # edited or truncated by hand: not a claim we can trust
            stat = data.get("stat") or {}
            return manifest, stat if isinstance(stat, dict) else {}
        except (ValueError, KeyError, IndexError, TypeError):
            return None, {}


NO_CLAIM = Manifest(name="", kind="", entries=(), digest="")  # no claim: matches no digest


def sort_key(path: str) -> bytes:
    """Byte order, as the nodes sort (LC_ALL=C)."""
    return path.encode("utf-8", "surrogateescape")


def _digest(kind: str, entries: Sequence[Entry]) -> str:
    body = json.dumps([kind, [e.as_list() for e in entries]], ensure_ascii=True,
                      separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def link_is_safe(rel: str, target: str, links: Mapping[str, str] | None = None) -> bool:
    """A symlink at `rel` (relative to the model root) pointing at `target` stays inside the
    model, with every other symlink of the model (`links`: path -> target) followed on the
    way, as the kernel of a target will follow them."""
    return resolve_in_tree(rel, {**(links or {}), rel: target}) is not None


def listing_problem(name: str, tree: Mapping[str, Stat]) -> str | None:
    """What in the source's listing of model `name` (`tree`: path relative to the model ->
    stat) `find -P` could never have printed: a name with an absolute path, an empty, "." or
    ".." component or a control character, or an entry under something that is not a listed
    directory (find does not descend into symlinks). Only a lying source sends these."""
    problem = name_problem(name)
    if problem is not None or not name or "/" in name:
        return f"the model name {name!r} has {problem or 'a slash'}"
    for rel in tree:
        problem = name_problem(rel)
        if problem is not None:
            return f"{name}/{rel!r} has {problem}"
        if not rel:
            continue
        parent = rel.rpartition("/")[0]
        above = tree.get(parent)
        if above is None or above.kind != "d":
            what = "not listed" if above is None else "not a directory"
            return f"{name}/{rel} lies under {name}/{parent}, which is {what}"
    return None


def cached_sha(cache: Mapping[str, Any], full: str, st: Stat | None = None) -> str | None:
    """The sha256 the source's claim cached for `full` (NAME/rel); with `st`, only if the
    cache key (size, mtime, ctime, inode) still matches it."""
    cached = cache.get(full)
    if not isinstance(cached, dict) or not cached.get("sha256"):
        return None
    if st is not None and cached.get("key") != list(st.key):
        return None
    return str(cached["sha256"])


@dataclass(frozen=True, slots=True)
class Listed:
    """A model's manifest built from the source's listing: what is left out says why."""

    manifest: Manifest
    stat: dict[str, Any]  # the hash cache to store with the source's claim
    warnings: tuple[str, ...]
    unhashed: str | None  # NAME/rel of a regular file with no sha256 (vanished, unreadable)


def from_listing(name: str, kind: str, tree: Mapping[str, Stat], hashes: Mapping[str, str],
                 cache: Mapping[str, Any], *, where: str, source: str) -> Listed:
    """The manifest of model `name` from its listing `tree` (checked by `listing_problem`
    first), with `hashes` (NAME/rel -> sha256) or else the source's cached hashes. `where`
    (the models directory) and `source` (its node) name the source in warnings. Symlinks
    leading outside the model and special files are left out, with a warning."""
    entries: list[Entry] = []
    stat: dict[str, Any] = {}
    warnings: list[str] = []
    links = {rel: st.target for rel, st in tree.items() if st.kind == "l"}
    for rel, st in tree.items():
        full = f"{name}/{rel}" if rel else name
        if st.kind == "d":
            entries.append(Entry(rel, "d"))
        elif st.kind == "f":
            sha = hashes.get(full) or cached_sha(cache, full)
            if not sha:
                return Listed(Manifest.build(name, kind, ()), {}, (), full)
            entries.append(Entry(rel, "f", st.size, sha))
            stat[full] = {"key": list(st.key), "sha256": sha}
        elif st.kind == "l" and link_is_safe(rel, st.target, links):
            entries.append(Entry(rel, "l", target=st.target))
        elif st.kind == "l":
            warnings.append(f"{where}/{full} on {source} is a symlink leading outside the"
                            f" model ({st.target}): not synced")
        else:
            warnings.append(f"{where}/{full} on {source} is not a regular file, directory or"
                            " symlink: not synced")
    return Listed(Manifest.build(name, kind, entries), stat, tuple(warnings), None)
