"""`cluster deploy`: push the code tree to the nodes with rsync, in parallel, safely.

Per node, in order (all under one lock, one SSH channel that `payloads/deploy.sh` holds open):

1. lock: `flock` on DEST/.skeleton-deploy/lock, held by a shell on the node for as long as our
   channel is open. A second deploy waits `lock_wait` seconds, then fails with "deploy in
   progress by USER since TIME". A killed deploy's channel dies with it, and so does its lock.
2. digest: the node prints the digest of the last tree deployed there. When it equals the
   local digest (a content hash of exactly the files rsync would send, excludes honoured),
   nothing else happens: a no-change redeploy costs one round trip (`force` skips the check).
3. `begin`: the node checks that rsync runs, and removes its digest, so that a deploy dying
   from here on is never mistaken for a finished one.
4. rsync (`transfers.rsync`): compressed, perms and times kept, `--delay-updates` with a
   partial dir: files are renamed into place at the end, so an interrupted deploy leaves old
   or new files, never half-written ones, and running it again converges.
5. `deploy.after` commands, in DEST, in order; the first failure is the node's failure.
6. `commit`: the new digest is written atomically (its first line is the code version that
   `cluster status` shows); then the channel closes and the lock goes.

The receiving rsync on the node runs under `flock` on the directory DEST/.skeleton-deploy
(the writer lock, through `--rsync-path`), and `begin` waits for that lock: a receiver whose
controller was killed (and whose session lock went with it) is waited for, never raced. Our
rsync dies with us (`cancel.die_with_parent`). Ctrl-C (`skeleton_app.cancel`) stops rsync at
once; the node keeps its previous files (updates are applied only at the end of a transfer);
the result says per node whether it was committed before the interrupt, or not.

`restart=True` stops the daemon before step 3 and starts it after step 6, per node.
`dry_run=True` only runs `rsync --dry-run` and lists what would change (no lock, no writes).

Paths rsync must never touch on the node: the state dir and the daemon's pid file (excluded),
and the logs and models dirs under the app dir (protected from --delete, still deployed).

The package, in the order of a deploy: `plan` (DeployPlan: source, excludes, checks, secret
refusal), `lock` (deploy.sh's conversation, as generators driven by a session or by scripted
replies), `apply` (rsync, after commands, daemon restart, cleanup), `digest` (the digest file),
`events` (progress for live displays), `outcome` (DeployOutcome, the typed per-node result),
`operation` (`deploy()` and one node's steps), `diff` (`deploy --diff`: each changed file
against the node's copy, FileDiff/NodeDiff); `releases` (`deploy.strategy: releases`:
each deploy in its own `releases/ID`, `current` switched atomically) and `rollback`
(`rollback()`, `list_releases()`).
"""

from skeleton_app.ops.deploy.diff import FileDiff, NodeDiff
from skeleton_app.ops.deploy.digest import DeployedDigest, digest_lines
from skeleton_app.ops.deploy.events import DeployEvent, OnProgress
from skeleton_app.ops.deploy.operation import deploy
from skeleton_app.ops.deploy.outcome import (
    MAX_CHANGES_KEPT,
    AfterRun,
    DeployOutcome,
    Transfer,
    iter_changes,
)
from skeleton_app.ops.deploy.plan import (
    DIGEST_FILE,
    LOCK_WAIT,
    STATE_DIR,
    DeployPlan,
    plan,
)
from skeleton_app.transfers.tree import TreeDigest, tree_digest

__all__ = [
    "DIGEST_FILE",
    "LOCK_WAIT",
    "MAX_CHANGES_KEPT",
    "STATE_DIR",
    "AfterRun",
    "DeployEvent",
    "DeployOutcome",
    "DeployPlan",
    "DeployedDigest",
    "FileDiff",
    "NodeDiff",
    "OnProgress",
    "Transfer",
    "TreeDigest",
    "deploy",
    "digest_lines",
    "iter_changes",
    "plan",
    "tree_digest",
]
