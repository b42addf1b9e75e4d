"""Reading the source: its listing, the hashes its cache does not cover, the manifests.

The targets are probed while this runs (`preflight`): with a named model their probes go out
with the source's, otherwise at least their handshakes overlap it. A source that cannot be
read stops the run before a byte moves; a listing no honest node sends stops it too, naming
the source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from skeleton_app import cancel
from skeleton_app.errors import NodeError, NodeErrorKind, SkeletonError, UsageError
from skeleton_app.ops.sync_models.answer import Facts, Stat, under
from skeleton_app.ops.sync_models.context import HASH_RATE, RunContext
from skeleton_app.ops.sync_models.manifest import (
    Manifest,
    cached_sha,
    from_listing,
    listing_problem,
)
from skeleton_app.ops.sync_models.plan import nul_list
from skeleton_app.ops.sync_models.remote import StepFailed

Preflight = Callable[[list[str], int], None]  # (model names, bytes to hash) -> probes targets


class SourceReader:
    """Reads the source once per run. `claims`: the claims (with their hash cache) to write
    back on the source when the run finishes, for models whose claim changed."""

    def __init__(self, ctx: RunContext, preflight: Preflight):
        self.ctx = ctx
        self.preflight = preflight
        self.claims: dict[str, bytes] = {}
        self.warm_wait: Callable[[], None] = lambda: None
        self._early = ThreadPoolExecutor(max_workers=1, thread_name_prefix="early")

    def shutdown(self) -> None:
        self._early.shutdown()

    def read(self) -> dict[str, Manifest]:
        """Read the source's models and hash what its cache does not cover, while the targets
        are probed in parallel."""
        ctx, src, model = self.ctx, self.ctx.source, self.ctx.options.model
        names = [model] if model else []
        early: Future[None] | None = None
        if model is not None and not ctx.options.verify:
            # The model is named: the targets' probes (and the connections they start to
            # their next peers) go out with the source's. If the source then fails, the
            # run's clean-up reaches every target they reached.
            early = self._early.submit(self.preflight, names, 0)
        else:
            # At least the targets' handshakes overlap the source's probe (nothing runs on
            # them yet: a source that turns out to be down leaves nothing behind).
            fanout = max(1, ctx.settings.ssh.fanout)
            self.warm_wait = ctx.cluster.connector.warm([t.node for t in ctx.targets][:fanout])
        try:
            facts = ctx.remote.call(src, "probe", ctx.peers.connect_hint(src) + names)
        except NodeError as exc:
            raise NodeError(exc.kind, f"source node {src.id}: {exc.message}; nothing was"
                            " transferred", node=None) from None
        except StepFailed as exc:
            raise UsageError(f"source node {src.id}: {exc.message}") from None
        finally:
            if early is not None:
                # Whatever happens next, the targets' probes have ended (and the clean-up
                # knows every node they reached).
                early.result()
        where = ctx.paths[src.id]
        if not facts.exists:
            raise UsageError(f"the models directory {where} does not exist on the source node"
                             f" {src.id}")
        names = self._model_names(facts, where)
        for name in names:
            # Before anything is hashed or planned (checked again on the final listing).
            self._refuse_listing(name, under(facts.entries, name))
        kinds = {name: "dir" if facts.entries[name].kind == "d" else "file" for name in names}
        caches = {name: Manifest.from_json(name, facts.final_claims.get(name))[1]
                  for name in names}
        to_hash = [
            "./" + full for name in names
            for full, st in _files(facts, name)
            if ctx.options.verify or cached_sha(caches[name], full, st) is None
        ]
        facts, hashes = self._hash(facts, names, to_hash, early is None)
        return {name: self._manifest(name, kinds[name], facts, hashes, caches[name])
                for name in names}

    def _hash(self, facts: Facts, names: list[str], to_hash: list[str],
              preflight: bool) -> tuple[Facts, dict[str, str]]:
        """Hash `to_hash` on the source (and, if `preflight`, probe the targets meanwhile):
        (the newer listing, the hashes: NAME/rel -> sha256)."""
        ctx, src = self.ctx, self.ctx.source
        size = sum(facts.entries[p[2:]].size for p in to_hash)
        hashed: list[Facts] = []
        problem: list[BaseException] = []

        def hash_source() -> None:
            try:
                hashed.append(ctx.remote.call(src, "probe", names,
                                              files={"hash.lst": nul_list(to_hash)},
                                              timeout=ctx.deadline(size, HASH_RATE)))
            except (NodeError, StepFailed) as exc:
                problem.append(exc)

        total = sum(st.size for st in facts.entries.values() if st.kind == "f")
        with cancel.executor(2, "source") as pool:
            hashing = pool.submit(hash_source) if to_hash else None
            probing = pool.submit(self.preflight, names, total) if preflight else None
            if hashing is not None:
                hashing.result()
            if probing is not None:
                probing.result()
        if problem:
            raise NodeError(NodeErrorKind.LOST, f"source node {src.id}: hashing the model"
                            f" failed: {problem[0]}; nothing was transferred") from None
        if not hashed:
            return facts, {}  # the cache covers every file
        return hashed[0], hashed[0].hashes  # the newer listing goes with the hashes

    def _model_names(self, facts: Facts, where: str) -> list[str]:
        src, model = self.ctx.source.id, self.ctx.options.model
        if model is not None:
            st = facts.entries.get(model)
            if st is None:
                raise UsageError(f"model {model!r} not found in {where} on the source node"
                                 f" {src}")
            if st.kind not in ("d", "f"):
                raise UsageError(f"{where}/{model} on {src} is not a directory or a"
                                 " regular file (a symlink?): name the model it points to")
            return [model]
        names = []
        for path, st in sorted(facts.entries.items()):
            if "/" in path or path.startswith("."):
                continue
            if st.kind in ("d", "f"):
                names.append(path)
            else:
                self.ctx.warnings.append(f"{where}/{path} on {src} is neither a directory nor"
                                         " a regular file: not synced")
        if not names:
            raise UsageError(f"no models in {where} on the source node {src}")
        return names

    def _refuse_listing(self, name: str, tree: Mapping[str, Stat]) -> None:
        """Stop the run, naming the source, when its listing is one no honest node sends: a
        name built to lead outside the model must never reach a target's mkdir, ln or tar."""
        problem = listing_problem(name, tree)
        if problem is not None:
            raise SkeletonError(
                f"source node {self.ctx.source.id} sent a listing that find never prints"
                f" ({problem}): refused as hostile; nothing was transferred")

    def _manifest(self, name: str, kind: str, facts: Facts, hashes: Mapping[str, str],
                  cache: Mapping[str, Any]) -> Manifest:
        src, where = self.ctx.source.id, self.ctx.paths[self.ctx.source.id]
        tree = under(facts.entries, name)
        self._refuse_listing(name, tree)
        listed = from_listing(name, kind, tree, hashes, cache, where=where, source=src)
        self.ctx.warnings.extend(listed.warnings)
        if listed.unhashed is not None:
            raise NodeError(NodeErrorKind.ERROR, f"source node {src}: could not hash"
                            f" {where}/{listed.unhashed} (vanished or unreadable);"
                            " nothing was transferred")
        claim = listed.manifest.to_json(listed.stat)
        if claim != facts.final_claims.get(name):
            self.claims[name] = claim
        return listed.manifest


def _files(facts: Facts, name: str) -> list[tuple[str, Stat]]:
    """(NAME/rel, stat) of the regular files of model `name` in `facts`."""
    return [(f"{name}/{rel}" if rel else name, st)
            for rel, st in under(facts.entries, name).items() if st.kind == "f"]
