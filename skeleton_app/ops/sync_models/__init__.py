"""`cluster sync-models`: spread a model from the node that downloaded it to the others.

    result = sync_models(cluster, source_node="node-01", targets=cluster.select(["node-0[2-9]"]),
                         model="vosk-en", verify=False, on_progress=print)

Data flows node to node over SSH (every node runs `ssh`/`rsync` to its peers with its own key
and known_hosts); the controller only sends instructions and reads small answers. With
`relay=True` (nodes that cannot reach each other) the bytes stream through the controller,
from one SSH channel into the others, and are never stored on it.

The distribution scheme
-----------------------
Copying from the source to N targets in parallel divides the source's uplink by N (64 MiB to 8
targets over 200 Mbit/s took 8.6x one link's time). A tree in which finished targets become
senders still needs log2(N+1) full transfers in a row when the model is one big file. So:

* Targets that need the same files form a **pipelined chain**: the holder streams a tar of
  those files to the first target, which writes it to its staging directory *while* `tee`
  forwards the same bytes to the second, and so on. Every link carries the data once, all links
  work at the same time, and the whole chain finishes about one link's time (plus a few
  milliseconds per hop) after it starts, whatever its length. The SSH connections along the
  chain are opened beforehand, in parallel (`arm`), as OpenSSH control masters, so nothing in
  the data path waits for a handshake.
* A target that needs a set of files of its own (it was interrupted, or a file of it is
  corrupt) **pulls** them with rsync from a holder: `--append-verify` resumes a half-written
  file where it stopped; only regular files are taken from the peer (`--no-links`), the
  directories and symlinks are the ones `prepare` made from the manifest.
* Every target that completes is published and **becomes a holder**: later jobs (the next
  round after a failure, single-target pulls waiting for a free sender) take the least
  loaded holder. Each holder serves at most `streams_per_sender` streams at once, and every
  connection a node opens to a peer retries pre-authentication resets (sshd's `MaxStartups`
  drops handshakes when many arrive together).
* When a node in a chain dies, the nodes before it finish (its predecessor drains the stream
  instead of blocking), the nodes after it are stopped, re-planned from what they already
  hold, and served in the next round (at most MAX_ROUNDS) from the holders that exist by then.
* A hop that cannot be opened (no route, a changed host key between two nodes) marks only
  that *pair* (the node that opened -> its peer) as unusable, with its cause ("host key
  changed between node-04 and node-05"). The next round orders chains so that no failed pair
  is a hop (a node that failed to open connections goes last, and is pushed to rather than
  pulling), and takes no holder whose connection to the first receiver failed. A target no
  peer can serve goes through the controller (relay) automatically: no holder could push to
  it and it could not pull, or the network failed both into and out of it (a node cut off
  from its peers), or it is the last round.

Integrity
---------
* The source computes a **manifest** once per run: every file's relative path, size and
  sha256, directories, and symlinks that resolve inside the model with every link of the
  model followed (others are left out, with a warning; `skeleton_app.safepath`). Its digest
  identifies the model. The source's listing is hostile input: a name `find` never prints
  (absolute, "", "." or ".." components, control characters, an entry under a non-directory)
  stops the run before anything moves, naming the source. Hashes are cached on the source
  keyed by size, mtime, ctime and inode (a write always changes ctime), so an unchanged
  multi-GB model is not re-read on every run; `verify=True` ignores that cache.
* Each node keeps the manifest it published next to the model (`.skeleton-manifests/`). A
  target is **up to date** when that claim has the source's digest and every file has the
  manifest's size (`verify=True`: and its sha256, re-hashed on the target). Up-to-date targets
  are skipped; only the source and targets written in this run serve as holders, so a copy
  that was never checked in this run never spreads.
* Copies are built in `.skeleton-staging/NAME` next to the model. Unchanged files are hard
  links to the published copy (no bytes, no disk), missing ones are streamed. A file there at
  its full size is complete: tar and rsync `--append-verify` only ever append. Before it is
  published the staged copy must match the manifest exactly (types, sizes, symlink targets,
  every link resolving inside, no transferred file a hard link, the sha256 of every
  transferred file). A receiver's tar takes only the listed files from a stream, into
  directories `prepare` made, and hashes them when the stream ends; anything the manifest
  does not list (a link for a file, an extra entry) is "hostile": the staged copy goes,
  nothing is published and the run stops naming the sender. With `relay=True` the
  controller checks every header it relays first (`skeleton_app.tarcheck`). Each receiver
  checks all this itself when its stream ends, against the listing the controller uploaded
  with `prepare`, publishes, and reports back through the chain; the controller probes only
  the receivers that did not report success, deletes anything not in the manifest and
  publishes what is right.
  Publishing swaps the copy into place with two renames, so a daemon never loads a partial
  model.
* An interrupted run leaves its staging directory; the next run keeps every complete file and
  resumes partial ones (rsync appends to them and verifies the whole file).
* Preflight refuses a target whose free disk is below what it still needs (the model size for
  an empty target) before a byte moves; the others go ahead.

Paths: `models_path` defaults to each node's `app.models_dir`; a relative one is taken under
each node's app dir and must stay inside it; a directory elsewhere is allowed only when given
absolute. Without `model`, every top-level entry of the source's models directory (directory
or file, not hidden) is synced, each published on its own.

Modules, in the order a run uses them
-------------------------------------
``paths`` (where things sit on a node), ``answer`` (models.sh's NUL-separated answers),
``manifest`` (Entry, Manifest, checks of the source's listing), ``plan`` (the per-target
plan: pure functions), ``leases`` and ``remote`` (the node conversation), ``peers`` (the
ssh commands nodes use to reach each other), ``holders``, ``chain`` (targets, jobs, routing
around failed pairs), ``progress``, ``context`` (what the phases share), then the phases:
``source`` (read the source), ``prepare`` (plan a round on the nodes), ``transfer`` (run its
jobs) with ``relay``, ``publish``, and ``sync`` (the run and its clean-up). ``outcome``: what
each target reports (`SyncOutcome`).
"""

from __future__ import annotations

from skeleton_app.ops.sync_models.answer import Facts, Stat, parse_answer
from skeleton_app.ops.sync_models.chain import MAX_ROUNDS, HopFailure, hop_cause
from skeleton_app.ops.sync_models.manifest import Entry, Manifest
from skeleton_app.ops.sync_models.outcome import SyncOutcome
from skeleton_app.ops.sync_models.paths import models_dir
from skeleton_app.ops.sync_models.plan import Plan, plan_target
from skeleton_app.ops.sync_models.progress import ProgressFn, SyncProgress
from skeleton_app.ops.sync_models.sync import DEFAULT_STREAMS_PER_SENDER, sync_models

__all__ = [
    "DEFAULT_STREAMS_PER_SENDER",
    "MAX_ROUNDS",
    "Entry",
    "Facts",
    "HopFailure",
    "Manifest",
    "Plan",
    "ProgressFn",
    "Stat",
    "SyncOutcome",
    "SyncProgress",
    "hop_cause",
    "models_dir",
    "parse_answer",
    "plan_target",
    "sync_models",
]
