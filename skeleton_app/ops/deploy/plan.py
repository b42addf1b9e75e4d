"""What a deploy decides before touching any node: the resolved source, the excludes and
protect filters, the owner, the tree digest (`DeployPlan`, `plan`), and the checks that refuse
a bad destination or a tree holding secrets (UsageError, nothing sent)."""

from __future__ import annotations

import getpass
import os
import posixpath
import socket
from dataclasses import dataclass, field
from pathlib import Path

from skeleton_app import layout
from skeleton_app.cluster import Cluster
from skeleton_app.errors import UsageError
from skeleton_app.nodes import Node, validate_app_dir
from skeleton_app.secret_scan import SecretScan
from skeleton_app.transfers import DEFAULT_PARTIAL_DIR
from skeleton_app.transfers.tree import TreeDigest, tree_digest

STATE_DIR = layout.DEPLOY_DIR
DIGEST_FILE = layout.DIGEST_FILE
LOCK_WAIT = 10.0


@dataclass(frozen=True, slots=True)
class ReleasePlan:
    """`deploy.strategy: releases` (ops/deploy/releases.py): the release ID (set once the
    tree is digested), how many releases to keep, the shared paths linked into each release
    (`NAME?`: only when the node has it and the release does not)."""

    keep: int
    shared: tuple[str, ...]
    id: str = ""


@dataclass(frozen=True, slots=True)
class DeployPlan:
    """Everything decided before the first node is touched (shared by all nodes)."""

    source: str  # absolute, no trailing slash
    dest: str | None  # None: each node's app dir
    exclude: tuple[str, ...]
    filters: tuple[str, ...]
    delete: bool
    dry_run: bool
    checksum: bool
    force: bool
    restart: bool
    after: tuple[str, ...]
    lock_wait: float
    owner: str
    digest: TreeDigest | None = None
    digest_excludes: tuple[str, ...] = field(default=())
    diff: bool = False  # a dry run that also fetches the node's copies (ops/deploy/diff.py)
    release: ReleasePlan | None = None  # None: in place


def plan(cluster: Cluster, *, source: str | os.PathLike[str] | None = None,
         dest: str | None = None, delete: bool | None = None, dry_run: bool = False,
         checksum: bool = False, force: bool = False, restart: bool = False,
         lock_wait: float = LOCK_WAIT, digest: bool = True,
         allow_secrets: bool = False) -> DeployPlan:
    """Resolve and check the arguments (UsageError, nothing touched) and digest the tree
    (unless `digest` is false). A tree holding private key material is refused (UsageError
    naming the files) unless `allow_secrets`: see skeleton_app.secret_scan."""
    settings = cluster.settings
    src = _resolve_source(source, settings.deploy.source, settings.source)
    if dest is not None:
        _check_dest(dest)
    if lock_wait < 0:
        raise UsageError(f"lock wait must be zero or more seconds, got {lock_wait:g}")
    exclude = (*settings.deploy.exclude, f"/{STATE_DIR}/", f"/{layout.PID_FILE}",
               f"/{layout.LOCK_FILE}")
    filters = tuple(f"P /{d.strip('/')}/" for d in (settings.app.logs_dir,
                                                    settings.app.models_dir)
                    if d and not d.startswith("/"))
    digest_excludes = (*exclude, f"{DEFAULT_PARTIAL_DIR}/")
    tree = tree_digest(src, digest_excludes) if digest and not dry_run else None
    if tree is not None and not allow_secrets:
        refuse_secrets(tree, src)
    return DeployPlan(
        source=src, dest=dest, exclude=exclude, filters=filters,
        delete=settings.deploy.delete if delete is None else delete, dry_run=dry_run,
        checksum=checksum, force=force, restart=restart, after=tuple(settings.deploy.after),
        lock_wait=lock_wait, owner=_owner(), digest=tree, digest_excludes=digest_excludes,
    )


def refuse_secrets(tree: TreeDigest, source: str) -> None:
    """Private keys or a database password in the tree: UsageError naming the files,
    nothing is sent."""
    if tree.secrets:
        raise UsageError(SecretScan.of(source, tree.secrets).refusal())


def dest_for(p: DeployPlan, node: Node) -> str:
    """The node's absolute destination; UsageError for one deploy must never write to."""
    dest = p.dest if p.dest is not None else node.app_dir
    # A relative --dest is under the node's app dir.
    dest = dest if dest.startswith("/") else posixpath.join(node.app_dir, dest)
    dest = posixpath.normpath(dest)
    if dest == "/":
        raise UsageError("refusing to deploy to / (check --dest)")
    if p.delete:
        # --delete empties whatever the source lacks: never /, a home, or a system path,
        # whatever a registry row or --dest says (a hostile row once wiped a node's home).
        try:
            validate_app_dir(dest)
        except ValueError as exc:
            raise UsageError(f"refusing deploy --delete on {node.id}: {exc}") from None
    return dest


def _resolve_source(flag: str | os.PathLike[str] | None, configured: str,
                    config_file: str | None) -> str:
    if flag is not None:
        path = Path(flag)
        what = "--source"
    else:
        path = Path(configured)
        what = "deploy.source"
        # A relative deploy.source is relative to the config file that names it.
        if not path.is_absolute() and config_file:
            path = Path(config_file).resolve().parent / path
    if not path.exists():
        raise UsageError(f"{what}: {os.fspath(path)!r} does not exist")
    if not path.is_dir():
        raise UsageError(f"{what}: {os.fspath(path)!r} is not a directory")
    return os.path.abspath(path)


def _check_dest(dest: str) -> None:
    if not dest or "\n" in dest or "\0" in dest:
        raise UsageError(f"--dest: invalid path {dest!r}")


def _owner() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
