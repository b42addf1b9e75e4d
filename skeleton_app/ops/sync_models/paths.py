"""Where sync-models keeps things on a node: the models directory, the staging and claims
directories in it, the run directory, and the "./NAME/rel" paths models.sh takes.

The layout is the one models.sh documents in its header; the names here must match it.
"""

from __future__ import annotations

import posixpath

from skeleton_app.cluster import Cluster
from skeleton_app.errors import UsageError
from skeleton_app.nodes import Node

STAGE = ".skeleton-staging"  # copies being built, next to the published models
CLAIMS = ".skeleton-manifests"  # the manifest each model was published with (models.sh)
RUNS_DIR = ".cache/skeleton-sync"  # relative to the login user's home on every node
SCRIPT = "models.sh"


def models_dir(cluster: Cluster, node: Node, models_path: str | None) -> str:
    """The models directory on `node`: config default, explicit absolute, or relative under
    the node's app dir (which it may not leave)."""
    if models_path is None:
        path = cluster.settings.models_dir_for(node)
    else:
        _check_path(models_path, "--models-path")
        if models_path.startswith("/"):
            path = models_path
        else:
            joined = posixpath.normpath(posixpath.join(node.app_dir, models_path))
            base = posixpath.normpath(node.app_dir)
            if joined != base and not joined.startswith(base.rstrip("/") + "/"):
                raise UsageError(
                    f"--models-path {models_path!r} leads outside the app dir {node.app_dir}"
                    " on " + node.id + "; give an absolute path to use a directory elsewhere"
                )
            path = joined
    path = posixpath.normpath(path)
    if path == "/":
        raise UsageError("the models directory cannot be / (every top-level entry would be a"
                         " model)")
    return path


def check_model_name(name: str) -> str:
    """`name` if it can be the name of an entry of the models directory, else UsageError."""
    if (not name or "/" in name or "\0" in name or name in (".", "..") or name.startswith(".")
            or len(name.encode("utf-8", "surrogateescape")) > 250):
        raise UsageError(
            f"--model: expected the name of an entry of the models directory (no '/', not"
            f" hidden, at most 250 bytes), got {name!r}")
    return name


def _check_path(value: str, what: str) -> str:
    if not value or "\0" in value:
        raise UsageError(f"{what}: expected a non-empty path without NUL bytes, got {value!r}")
    return value


def node_path(name: str, rel: str, *, staged: bool = False) -> str:
    """Path relative to M as the node script takes it: "./NAME/rel" or "./.skeleton-staging/..."."""
    base = f"./{STAGE}/{name}" if staged else f"./{name}"
    return f"{base}/{rel}" if rel else base


def strip_dot(path: str) -> str:
    """"./NAME/rel" -> "NAME/rel" ("." -> "")."""
    return path[2:] if path.startswith("./") else ("" if path == "." else path)


def split_name(path: str) -> tuple[str, str]:
    """"./NAME/rel" -> (NAME, rel)."""
    name, _, rel = strip_dot(path).partition("/")
    return name, rel
