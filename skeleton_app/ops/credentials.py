"""Put a node's own registry credentials on the node (`skeleton nodes credentials --install`).

The DSN (it holds the node role's password) travels on the SSH channel's stdin, never on a
command line, and lands in the node's `registry.node_dsn_file` with mode 0600, replaced
atomically: a daemon restarted afterwards reads it (`agent.own_credentials`).

The one payload sent with `sh -c` rather than `sh -s` on stdin: stdin carries the secret.
The node's outcome is a `CredentialsOutcome`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from typing import Any

from skeleton_app.cluster import Cluster
from skeleton_app.nodes import Node
from skeleton_app.registry import open_registry
from skeleton_app.results import NodeResult
from skeleton_app.ssh.runner import RunOptions

# `~/` is expanded by the node's shell (the path is the node user's); the rest is quoted.
_SCRIPT = """set -eu
umask 077
file=$1
case $file in "~/"*) file=$HOME/${file#"~/"} ;; esac
mkdir -p -- "$(dirname -- "$file")"
cat >"$file.tmp.$$"
mv -f -- "$file.tmp.$$" "$file"
"""


@dataclass(frozen=True, slots=True)
class CredentialsOutcome:
    """Where the node's DSN file is (the node user's path, `~/` unexpanded) and whether the
    write went through. Never the DSN itself."""

    path: str
    written: bool

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "written": self.written}


def install_credentials(cluster: Cluster, node: Node) -> NodeResult[CredentialsOutcome]:
    """Issue `node` a new role password (the old DSN stops working) and write its DSN to
    `registry.node_dsn_file` on the node; the NodeResult says how the write went.
    RegistryError/ConfigError (nothing written) when the registry cannot issue it."""
    with open_registry(cluster.settings) as registry:
        dsn = registry.issue_credentials(node.id)
    path = cluster.settings.registry.node_dsn_file
    command = "sh -c " + shlex.quote(_SCRIPT) + " sh " + shlex.quote(path)
    r = cluster.connector.run(node, command, RunOptions(stdin=(dsn + "\n").encode()))
    if r.error_kind is not None:
        return r
    return replace(r, outcome=CredentialsOutcome(path=path, written=r.exit_code == 0))
