"""skeleton_app: run a small cluster of voice/ML nodes over plain SSH.

The public API:

    from skeleton_app import Cluster, SSHExecutor, ClusterResult, ExitCode
    from skeleton_app.ops import status, deploy, sync_models   # one capability each

`Cluster` (settings, nodes, a pooled connector, bounded fan-out) is what every operation in
`skeleton_app.ops` takes; results are `ClusterResult`/`NodeResult` values with typed per-node
outcomes; every error is a `SkeletonError` with its `ExitCode`. `SSHExecutor` is the guide's
`skeleton_app.remote.SSHExecutor`.

The names below resolve on first use (PEP 562), so that `python -m skeleton_app.agent` on a
node, or a module that needs only `skeleton_app.config`, does not import the whole library.
"""

from __future__ import annotations

import importlib

# Not `typing.TYPE_CHECKING`: importing typing costs ~3 ms of every warm command's start
# (`keeper.thin` loads this package first); type checkers read this name the same way.
TYPE_CHECKING = False

__version__ = "0.1.0"

_PUBLIC = {
    "Cluster": "skeleton_app.cluster",
    "SSHExecutor": "skeleton_app.remote",
    "ClusterResult": "skeleton_app.results",
    "NodeResult": "skeleton_app.results",
    "ExitCode": "skeleton_app.errors",
    "NodeErrorKind": "skeleton_app.errors",
    "SkeletonError": "skeleton_app.errors",
    "NodeError": "skeleton_app.errors",
    "ConfigError": "skeleton_app.errors",
    "UsageError": "skeleton_app.errors",
    "Node": "skeleton_app.nodes",
    "Settings": "skeleton_app.config",
    "load_config": "skeleton_app.config",
}

__all__ = [  # a literal list, so that tools see the public names (kept equal to _PUBLIC)
    "Cluster", "ClusterResult", "ConfigError", "ExitCode", "Node", "NodeError", "NodeErrorKind",
    "NodeResult", "SSHExecutor", "Settings", "SkeletonError", "UsageError", "__version__",
    "load_config",
]

if TYPE_CHECKING:
    from typing import Any

    from skeleton_app.cluster import Cluster
    from skeleton_app.config import Settings, load_config
    from skeleton_app.errors import (
        ConfigError,
        ExitCode,
        NodeError,
        NodeErrorKind,
        SkeletonError,
        UsageError,
    )
    from skeleton_app.nodes import Node
    from skeleton_app.remote import SSHExecutor
    from skeleton_app.results import ClusterResult, NodeResult


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'skeleton_app' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
