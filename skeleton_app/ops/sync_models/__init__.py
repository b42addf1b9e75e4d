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
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import secrets
import shlex
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from skeleton_app import cancel, payloads
from skeleton_app.cluster import Cluster
from skeleton_app.errors import NodeError, NodeErrorKind, SkeletonError, UsageError
from skeleton_app.nodes import Node
from skeleton_app.results import ClusterResult, NodeResult, failure
from skeleton_app.safepath import name_problem, resolve_in_tree
from skeleton_app.ssh.openssh import ssh_argv
from skeleton_app.ssh.runner import RunOptions
from skeleton_app.tarcheck import TarGuard
from skeleton_app.transfers import build_rsync_argv, remote_spec

__all__ = [
    "DEFAULT_STREAMS_PER_SENDER",
    "Entry",
    "Manifest",
    "SyncProgress",
    "models_dir",
    "summary_rows",
    "sync_models",
]

STAGE = ".skeleton-staging"
CLAIMS = ".skeleton-manifests"
RUNS_DIR = ".cache/skeleton-sync"  # relative to the login user's home on every node
SCRIPT = "models.sh"
MAX_ROUNDS = 3
DEFAULT_STREAMS_PER_SENDER = 4
# Deadlines of transfers assume at least this rate, so that a slow link is not killed while a
# dead one still is (liveness is checked separately, every ssh.keepalive seconds).
MIN_RATE = 256 * 1024
HASH_RATE = 20 * 1024 * 1024
POLL_INTERVAL = 1.0
RELAY_CHUNK = 1 << 20
# AES-GCM first: with AES-NI it costs a fraction of chacha20's CPU per byte, and every byte
# of a chain is encrypted and decrypted once per hop. The others keep any sshd reachable.
HOP_CIPHERS = ("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
               "aes128-ctr")
# X25519 instead of OpenSSH 9's default post-quantum hybrid (sntrup761x25519): measured here
# a node-to-node handshake took 200 ms with the hybrid and 135 ms without, and a chain opens
# one per target at the same time on CPUs that also carry the stream. It is the key exchange
# our Paramiko connections use anyway (Paramiko has no sntrup761). A full list rather than
# "^" (prepend to the defaults), which OpenSSH before 8.x rejects; every name here is known
# to OpenSSH 7.4 and later, so no node's ssh refuses the option.
HOP_KEX = ("curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,"
           "ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group-exchange-sha256,"
           "diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,"
           "diffie-hellman-group14-sha256")
_CLAIM_VERSION = 1

ProgressFn = Callable[["SyncProgress"], None]


# ---------------------------------------------------------------------------- values


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
        ordered = tuple(sorted(entries, key=lambda e: _sort_key(e.path)))
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


def _sort_key(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _digest(kind: str, entries: Sequence[Entry]) -> str:
    body = json.dumps([kind, [e.as_list() for e in entries]], ensure_ascii=True,
                      separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SyncProgress:
    """One progress event for one target. `phase`: preflight, up-to-date, refused, transfer,
    verify, done, failed. `done`/`total` are bytes still to move for this target."""

    node: str
    phase: str
    done: int = 0
    total: int = 0
    rate: float = 0.0  # bytes per second since the transfer started
    message: str = ""


# ---------------------------------------------------------------------------- paths


def _check_path(value: str, what: str) -> str:
    if not value or "\0" in value:
        raise UsageError(f"{what}: expected a non-empty path without NUL bytes, got {value!r}")
    return value


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


def _check_model_name(name: str) -> str:
    if (not name or "/" in name or "\0" in name or name in (".", "..") or name.startswith(".")
            or len(name.encode("utf-8", "surrogateescape")) > 250):
        raise UsageError(
            f"--model: expected the name of an entry of the models directory (no '/', not"
            f" hidden, at most 250 bytes), got {name!r}")
    return name


def _node_path(name: str, rel: str, *, staged: bool = False) -> str:
    """Path relative to M as the node script takes it: "./NAME/rel" or "./.skeleton-staging/..."."""
    base = f"./{STAGE}/{name}" if staged else f"./{name}"
    return f"{base}/{rel}" if rel else base


def _link_is_safe(rel: str, target: str, links: Mapping[str, str] | None = None) -> bool:
    """A symlink at `rel` (relative to the model root) pointing at `target` stays inside the
    model, with every other symlink of the model (`links`: path -> target) followed on the
    way, as the kernel of a target will follow them."""
    return resolve_in_tree(rel, {**(links or {}), rel: target}) is not None


def _listing_problem(name: str, tree: Mapping[str, _Stat]) -> str | None:
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


# ---------------------------------------------------------------------------- node answers


@dataclass(frozen=True, slots=True)
class _Stat:
    kind: str  # find's %y: f d l p s c b
    size: int
    nlink: int
    key: tuple[str, ...]  # size, mtime, ctime, inode: the hash cache key
    target: str


@dataclass
class _Facts:
    """What one `probe` (or other step) printed. Paths are relative to M, without "./"."""

    avail: int = 0
    avail_path: str = ""
    exists: bool = False
    entries: dict[str, _Stat] = field(default_factory=dict)
    final_claims: dict[str, bytes] = field(default_factory=dict)
    stage_claims: dict[str, bytes] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    staged: int = 0
    reports: dict[int, tuple[str, str]] = field(default_factory=dict)  # peer -> (state, why)
    finished: set[int] = field(default_factory=set)  # peers that removed their run dir


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _strip_dot(path: str) -> str:
    return path[2:] if path.startswith("./") else ("" if path == "." else path)


def parse_answer(data: bytes) -> _Facts:
    """Parse the NUL-separated records of models.sh (see its header)."""
    facts = _Facts()
    pos = 0

    def token() -> bytes:
        nonlocal pos
        end = data.find(b"\0", pos)
        if end < 0:
            raise NodeError(NodeErrorKind.PROTOCOL, "truncated answer from models.sh")
        tok = data[pos:end]
        pos = end + 1
        return tok

    while pos < len(data):
        tag = token()
        if tag == b"df":
            facts.avail = int(token() or b"0")
            facts.avail_path = _decode(token())
        elif tag == b"M":
            facts.exists = token() == b"yes"
        elif tag == b"e":
            meta, path, target = token().split(b" "), _decode(token()), _decode(token())
            kind, size, nlink = meta[0].decode(), int(meta[1]), int(meta[2])
            key = (meta[1].decode(), meta[3].decode(), meta[4].decode(), meta[5].decode())
            facts.entries[_strip_dot(path)] = _Stat(kind, size, nlink, key, target)
        elif tag == b"c":
            which, name, length = token(), _decode(token()), int(token())
            content = data[pos:pos + length]
            pos += length
            (facts.final_claims if which == b"final" else facts.stage_claims)[name] = content
        elif tag == b"H":
            while True:
                rec = token()
                if rec == b"/H":
                    break
                if len(rec) > 66:
                    facts.hashes[_strip_dot(_decode(rec[66:]))] = rec[:64].decode()
        elif tag == b"staged":
            facts.staged = int(token() or b"0")
        elif tag == b"R":
            peer, state, why = token(), _decode(token()), _decode(token())
            if peer.isdigit():
                facts.reports[int(peer)] = (state, why)
        elif tag == b"F":
            peer = token()
            if peer.isdigit():
                facts.finished.add(int(peer))
        elif tag in (b"uploaded", b"sent", b"aborted", b"finished"):
            continue
        else:
            raise NodeError(NodeErrorKind.PROTOCOL, f"unexpected record {tag[:20]!r} from"
                            " models.sh")
    return facts


class _StepFailed(SkeletonError):
    """models.sh ran and exited non-zero. `facts`: what it printed before (reports of the
    nodes after a chain's broken hop, for one)."""

    def __init__(self, code: int, message: str, facts: _Facts | None = None):
        self.code = code
        self.message = message
        self.facts = facts or _Facts()
        super().__init__(message)


# ---------------------------------------------------------------------------- remote steps


def _script() -> bytes:
    return payloads.data(SCRIPT)


def _tar(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644 if name.endswith(SCRIPT) else 0o600
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _nul_list(items: Iterable[str]) -> bytes:
    return b"".join(item.encode("utf-8", "surrogateescape") + b"\0" for item in items)


def _lease_command(run_dir: str) -> str:
    """The node side of a run's lease (see _Leases): wait for EOF on stdin, then do what
    `models.sh finish` does (stop the run's process groups recorded in its run dir, close its
    control masters, remove the run dir). Nothing is written back: the channel may be gone."""
    run = shlex.quote(run_dir)
    return (f"exec >/dev/null 2>&1; trap '' HUP; cat;"
            f" if [ -f {run}/{SCRIPT} ]; then sh {run}/{SCRIPT} finish {run}/lease; fi;"
            f" rm -rf -- {run}")


# Step failures after which the connection (and with it the node's lease) may be gone.
_BROKEN = frozenset({NodeErrorKind.LOST, NodeErrorKind.UNREACHABLE, NodeErrorKind.REFUSED,
                     NodeErrorKind.PROTOCOL, NodeErrorKind.ERROR, NodeErrorKind.TIMEOUT})


class _Leases:
    """The run's lease on each node it touches: one channel per node, opened with the node's
    first step (on the pooled connection that step uses: no handshake of its own, and the
    channel opens in the background), whose end the node watches. An honest run closes them
    after its own clean-up; a controller killed with SIGKILL closes them too (its sockets go
    with it), and every node then stops what the run left there within about a second,
    instead of letting the chain stream on and its control masters linger for
    ControlPersist's 120 s."""

    def __init__(self, cluster: Cluster, run_dir: str):
        self.cluster = cluster
        self.command = _lease_command(run_dir)
        self._lock = threading.Lock()
        self._closers: list[Callable[[], None]] = []
        self._held: set[str] = set()  # nodes whose lease is believed to be open
        self._released = False

    def take(self, node: Node, *, cancellable: bool) -> None:
        """Before the node's first step: NodeError if it cannot be reached (as the step)."""
        with self._lock:
            if self._released or node.id in self._held:
                return
        # A connector injected for scripts or tests may have no `hold`: no lease then.
        hold = getattr(self.cluster.connector, "hold", None)
        if hold is None:
            return
        close = hold(node, self.command, cancellable=cancellable)
        with self._lock:
            if not self._released and node.id not in self._held:
                self._held.add(node.id)
                self._closers.append(close)
                return
        close()  # released meanwhile, or another thread took this node's lease first

    def lapse(self, node: Node) -> None:
        """The node's connection broke: its lease may have ended with it (and the node
        cleaned up), so its next step takes a new one. The old one is closed at release."""
        with self._lock:
            self._held.discard(node.id)

    def release(self) -> None:
        with self._lock:
            self._released = True
            closers, self._closers = self._closers, []
        for close in closers:
            close()


class _Remote:
    """Runs models.sh steps on nodes: uploads its inputs as a tar on stdin, collects its
    NUL-separated answer byte for byte (NodeResult.stdout is text and may be truncated)."""

    def __init__(self, cluster: Cluster, runid: str, paths: Mapping[str, str],
                 hops: Callable[[Node], bytes]):
        self.cluster = cluster
        self.run_dir = f"{RUNS_DIR}/{runid}"
        self.paths = paths
        self.hops = hops
        self._step = 0
        self._lock = threading.Lock()
        self.initialized: set[str] = set()
        self.leases = _Leases(cluster, self.run_dir)
        self._lapsed: set[str] = set()  # initialized, but the connection broke since

    def next_id(self, prefix: str) -> str:
        with self._lock:
            self._step += 1
            return f"{prefix}{self._step}"

    def env(self, node: Node) -> bytes:
        return f"M={shlex.quote(self.paths[node.id])}\n".encode()

    def call(self, node: Node, action: str, args: Sequence[str] = (), *,
             files: Mapping[str, bytes] | None = None, timeout: float | None = None,
             job: str | None = None, job_files: Mapping[str, bytes] | None = None,
             cancellable: bool = True) -> _Facts:
        """Run one action; NodeError when the node broke, _StepFailed when the script failed.
        `cancellable=False` for clean-up steps that must run after a Ctrl-C too.
        `files` land in this step's directory, `job_files` in RUN/JOB (where the next node
        of a chain and later steps find them). The first call to a node (or the first after
        it cleaned up) also uploads the script."""
        with self._lock:
            init = node.id not in self.initialized or node.id in self._lapsed
        step = self.next_id("s")
        upload: dict[str, bytes] = {}
        if init:
            self.leases.take(node, cancellable=cancellable)
            upload[SCRIPT] = _script()
            upload["env.sh"] = self.env(node)
            upload["hops.sh"] = self.hops(node)
        for name, content in (files or {}).items():
            upload[f"{step}/{name}"] = content
        for name, content in (job_files or {}).items():
            upload[f"{job}/{name}"] = content
        run = shlex.quote(self.run_dir)
        parts = []
        if init:
            # Runs of controllers that died leave their directory: sweep those older than a day.
            parts.append(
                f"mkdir -p {shlex.quote(RUNS_DIR)} && chmod 700 {shlex.quote(RUNS_DIR)} &&"
                f" {{ find {shlex.quote(RUNS_DIR)} -mindepth 1 -maxdepth 1 -mtime +1"
                f" -exec rm -rf {{}} + 2>/dev/null; true; }} && mkdir -p {run}")
        parts.append(f"tar -x -f - -C {run}")
        argv = ["sh", f"{self.run_dir}/{SCRIPT}", action, f"{self.run_dir}/{step}", *args]
        command = " && ".join(parts) + " && " + shlex.join(argv)
        out = bytearray()

        def sink(_node: str, stream: str, data: bytes) -> None:
            if stream == "stdout":
                out.extend(data)

        result = self.cluster.connector.run(
            node, command, RunOptions(timeout=timeout, stdin=_tar(upload), sink=sink,
                                      cancellable=cancellable))
        if init and result.error_kind is None:
            with self._lock:
                self.initialized.add(node.id)
                self._lapsed.discard(node.id)
        self._note_broken(node, result)
        if action == "finish" and result.error_kind is None and result.exit_code == 0:
            self.finished([node])
        if result.error_kind is not None:
            raise NodeError(result.error_kind, result.error or "failed", node=node.id)
        if result.exit_code != 0:
            lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
            message = lines[-1] if lines else f"models.sh {action} exited {result.exit_code}"
            try:
                facts = parse_answer(bytes(out))
            except NodeError:
                facts = None
            raise _StepFailed(result.exit_code or 1,
                              message.removeprefix("skeleton-models: "), facts)
        return parse_answer(bytes(out))

    def finished(self, nodes: Iterable[Node]) -> None:
        with self._lock:
            for node in nodes:
                self.initialized.discard(node.id)

    def _note_broken(self, node: Node, result: NodeResult[Any]) -> None:
        if result.error_kind in _BROKEN:
            # The lease may have ended with the connection, and the node's run dir with it:
            # the next step uploads the script again, under a new lease.
            self.leases.lapse(node)
            with self._lock:
                self._lapsed.add(node.id)

    def shell(self, node: Node, command: str, timeout: float = 15.0) -> NodeResult[Any]:
        result = self.cluster.connector.run(node, command, RunOptions(timeout=timeout))
        self._note_broken(node, result)
        return result

    def job_dir(self, job: str) -> str:
        return f"{self.run_dir}/{job}"

    def remote_command(self, action: str, job: str) -> str:
        """The command line that runs `action` of `job` (used for node-to-node hops)."""
        path = f"{self.run_dir}/{job}"
        return shlex.join(["sh", f"{self.run_dir}/{SCRIPT}", action, path, path])


# ---------------------------------------------------------------------------- planning


@dataclass
class _Plan:
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


def _under(entries: Mapping[str, _Stat], root: str) -> dict[str, _Stat]:
    """Entries at `root` or below it, keyed by path relative to `root`."""
    out: dict[str, _Stat] = {}
    prefix = root + "/"
    for path, st in entries.items():
        if path == root:
            out[""] = st
        elif path.startswith(prefix):
            out[path[len(prefix):]] = st
    return out


def _matches(tree: Mapping[str, _Stat], man: Manifest, hashes: Mapping[str, str] | None,
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


def plan_target(facts: _Facts, manifests: Mapping[str, Manifest], *, verify: bool) -> _Plan:
    """Decide, from a target's facts, what is up to date, what can be linked or kept, and what
    must be transferred (see the module docstring)."""
    plan = _Plan()
    hashes = facts.hashes if verify else None
    for name, man in manifests.items():
        final_claim, _ = Manifest.from_json(name, facts.final_claims.get(name))
        stage_claim, _ = Manifest.from_json(name, facts.stage_claims.get(name))
        final = _under(facts.entries, name)
        staged = _under(facts.entries, f"{STAGE}/{name}")
        if final_claim is not None and final_claim.digest == man.digest:
            wrong = _matches(final, man, hashes, name)
            if not wrong:
                plan.up_to_date.append(name)
                continue
            plan.repaired += [f"{name}/{rel}" if rel else name for rel in wrong
                              if man.entry(rel) is not None]
        plan.names.append(name)
        _plan_model(plan, name, man, final, staged, final_claim, stage_claim, facts.hashes,
                    verify)
    return plan


def _plan_model(plan: _Plan, name: str, man: Manifest, final: Mapping[str, _Stat],
                staged: Mapping[str, _Stat], final_claim: Manifest | None,
                stage_claim: Manifest | None, hashes: Mapping[str, str], verify: bool) -> None:
    root = man.entry("")
    assert root is not None
    want = {e.path: e for e in man.entries}

    def sp(rel: str) -> str:
        return _node_path(name, rel, staged=True)

    def fp(rel: str) -> str:
        return _node_path(name, rel)

    def known_sha(claim: Manifest | None, rel: str, path: str) -> str | None:
        if verify:
            return hashes.get(_strip_dot(path))
        entry = claim.entry(rel) if claim is not None else None
        return entry.sha256 if entry is not None and entry.kind == "f" else None

    top = staged.get("")
    if top is not None and top.kind != root.kind:
        plan.rm.append(sp(""))
        staged = {}
    # Anything staged that the manifest does not have goes (only the topmost of a subtree).
    removed: list[str] = []
    for rel in sorted(staged, key=_sort_key):
        if rel in want and staged[rel].kind == want[rel].kind:
            continue
        if any(rel.startswith(r + "/") for r in removed):
            continue
        removed.append(rel)
        plan.rm.append(sp(rel))
    gone = set(removed)

    def present(rel: str) -> _Stat | None:
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


# ---------------------------------------------------------------------------- targets, holders


@dataclass
class _Target:
    node: Node
    status: str = "pending"  # pending, up-to-date, synced, refused, failed
    facts: _Facts | None = None
    plan: _Plan | None = None
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


class _Holders:
    """Nodes that hold a verified copy, each serving at most `cap` streams at once."""

    def __init__(self, cap: int):
        self.cap = cap
        self._load: dict[str, int] = {}
        self._nodes: dict[str, Node] = {}
        self._cond = threading.Condition()

    def add(self, node: Node) -> None:
        with self._cond:
            self._nodes[node.id] = node
            self._load.setdefault(node.id, 0)
            self._cond.notify_all()

    def remove(self, node: Node) -> None:
        with self._cond:
            self._nodes.pop(node.id, None)
            self._cond.notify_all()

    def ids(self) -> set[str]:
        with self._cond:
            return set(self._nodes)

    def acquire(self, busy: Callable[[], bool],
                usable: Callable[[Node], bool] | None = None) -> Node | None:
        """The least loaded holder with a free slot; waits while `busy()` says other jobs may
        still free one or add a holder. None when there is no holder at all, or none that is
        `usable` (one known unable to reach the receiver: the next round re-plans it)."""
        with self._cond:
            while True:
                nodes = [n for n in self._nodes.values() if usable is None or usable(n)]
                if self._nodes and not nodes:
                    return None
                free = [n for n in nodes if self._load[n.id] < self.cap]
                if free:
                    node = min(free, key=lambda n: self._load[n.id])
                    self._load[node.id] += 1
                    return node
                if not self._nodes or not busy():
                    return None
                self._cond.wait(0.5)

    def release(self, node: Node) -> None:
        with self._cond:
            self._load[node.id] = max(0, self._load.get(node.id, 0) - 1)
            self._cond.notify_all()


# models.sh's exit-4 message when a node could not open its connection to a peer; the cause
# is ssh's own last line, or "host key changed" / "host key not known".
_HOP_FAILURE = re.compile(r"cannot reach peer ([0-9]+): (.*)")


@dataclass(frozen=True, slots=True)
class _HopFailure:
    """`opener` could not open its SSH connection to `peer` (the sender of a chain opens it
    to the receiver, the receiver of a pull to the holder). The other direction may work."""

    opener: str
    peer: str
    cause: str  # names the pair: "host key changed between node-04 and node-05"
    network: bool  # the network failed (not a key or login): the node may be cut off


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


@dataclass
class _Job:
    id: str
    members: list[_Target]
    files: list[str]  # ./NAME/rel, as they sit in every holder's models dir
    total: int
    mode: str  # chain, pull, relay
    reports: dict[int, tuple[str, str]] = field(default_factory=dict)  # what members sealed
    finished: set[int] = field(default_factory=set)  # members that cleaned up after sealing

    def absorb(self, facts: _Facts) -> None:
        self.reports.update(facts.reports)
        self.finished |= facts.finished


# ---------------------------------------------------------------------------- the run


class _Sync:
    def __init__(self, cluster: Cluster, source: Node, targets: Sequence[Node], *,
                 models_path: str | None, model: str | None, verify: bool, relay: bool,
                 on_progress: ProgressFn | None, streams_per_sender: int,
                 timeout: float | None):
        self.cluster = cluster
        self.settings = cluster.settings
        self.source = source
        self.model = _check_model_name(model) if model is not None else None
        self.verify = verify
        self.relay = relay
        self.on_progress = on_progress
        self.timeout = timeout
        self.paths = {n.id: models_dir(cluster, n, models_path)
                      for n in (source, *targets)}
        # Peers are numbered (source 0, targets from 1): control sockets are named by number
        # (a node id would not fit the 108 bytes of a unix socket path).
        self.index = {n.id: i for i, n in enumerate((source, *targets))}
        self.peers = (source, *targets)
        self.remote = _Remote(cluster, secrets.token_hex(6), self.paths, self._hops_sh)
        self.targets = [_Target(n) for n in targets]
        self.holders = _Holders(streams_per_sender)
        self.manifests: dict[str, Manifest] = {}
        self.source_claims: dict[str, bytes] = {}
        self.warnings: list[str] = []
        self._active_jobs = 0
        self.offender: str | None = None  # a holder that broke its manifest (run_job)
        # Pairs that failed in this run: never planned again, routed around (see jobs()).
        self.hop_failures: dict[tuple[str, str], _HopFailure] = {}
        self._hop_lock = threading.Lock()
        self.round_no = 1
        self._warm_wait: Callable[[], None] = lambda: None
        self._early = ThreadPoolExecutor(max_workers=1, thread_name_prefix="early")
        self._jobs_lock = threading.Lock()
        self._progress_lock = threading.Lock()
        self.fanout = max(1, self.settings.ssh.fanout)

    # -- helpers

    def progress(self, target: _Target, phase: str, done: int = 0, total: int = 0,
                 rate: float = 0.0, message: str = "") -> None:
        if self.on_progress is not None:
            with self._progress_lock:
                self.on_progress(SyncProgress(target.node.id, phase, done, total, rate,
                                              message))

    def parallel(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if not items:
            return []
        # cancel.executor: a KeyboardInterrupt here stops the nodes' work before it goes up.
        with cancel.executor(min(self.fanout, len(items)), "models") as pool:
            return list(pool.map(fn, items))

    def model_bytes(self) -> int:
        return sum(m.size for m in self.manifests.values())

    def deadline(self, nbytes: int, rate: int = MIN_RATE) -> float:
        if self.timeout is not None:
            return self.timeout
        return max(self.settings.ssh.command_timeout, 120.0 + nbytes / rate)

    # -- the source

    def read_source(self) -> None:
        """Read the source's models and hash what its cache does not cover, while the targets
        are probed in parallel."""
        src = self.source
        names = [self.model] if self.model else []
        early: Future[None] | None = None
        if self.model is not None and not self.verify:
            # The model is named: the targets' probes (and the connections they start to
            # their next peers) go out with the source's. If the source then fails, `_finish`
            # cleans up after them on every target they reached.
            early = self._early.submit(self.preflight, names, 0)
        else:
            # At least the targets' handshakes overlap the source's probe (nothing runs on
            # them yet: a source that turns out to be down leaves nothing behind).
            self._warm_wait = self.cluster.connector.warm(
                [t.node for t in self.targets][:self.fanout])
        try:
            facts = self.remote.call(src, "probe", self._connect_hint(src) + names)
        except NodeError as exc:
            raise NodeError(exc.kind, f"source node {src.id}: {exc.message}; nothing was"
                            " transferred", node=None) from None
        except _StepFailed as exc:
            raise UsageError(f"source node {src.id}: {exc.message}") from None
        finally:
            if early is not None:
                # Whatever happens next, the targets' probes have ended (and `_finish` knows
                # every node they reached).
                early.result()
        where = self.paths[src.id]
        if not facts.exists:
            raise UsageError(f"the models directory {where} does not exist on the source node"
                             f" {src.id}")
        names = self._model_names(facts, where)
        for name in names:
            # Before anything is hashed or planned (checked again on the final listing).
            self._refuse_listing(name, _under(facts.entries, name))
        kinds: dict[str, str] = {}
        claims: dict[str, tuple[Manifest | None, dict[str, Any]]] = {}
        to_hash: list[str] = []
        for name in names:
            kinds[name] = "dir" if facts.entries[name].kind == "d" else "file"
            claims[name] = Manifest.from_json(name, facts.final_claims.get(name))
            _, cache = claims[name]
            for path, st in _under(facts.entries, name).items():
                full = f"{name}/{path}" if path else name
                cached = cache.get(full)
                if st.kind == "f" and (self.verify or not isinstance(cached, dict)
                                       or cached.get("key") != list(st.key)
                                       or not cached.get("sha256")):
                    to_hash.append("./" + full)
        hashes: dict[str, str] = {}
        size = sum(facts.entries[p[2:]].size for p in to_hash)
        hashed: list[_Facts] = []
        problem: list[BaseException] = []

        def hash_source() -> None:
            try:
                hashed.append(self.remote.call(src, "probe", names,
                                               files={"hash.lst": _nul_list(to_hash)},
                                               timeout=self.deadline(size, HASH_RATE)))
            except (NodeError, _StepFailed) as exc:
                problem.append(exc)

        total = sum(st.size for path, st in facts.entries.items() if st.kind == "f")
        with cancel.executor(2, "source") as pool:
            hashing = pool.submit(hash_source) if to_hash else None
            probing = pool.submit(self.preflight, names, total) if early is None else None
            if hashing is not None:
                hashing.result()
            if probing is not None:
                probing.result()
        if problem:
            raise NodeError(NodeErrorKind.LOST, f"source node {src.id}: hashing the model"
                            f" failed: {problem[0]}; nothing was transferred") from None
        if hashed:
            hashes = hashed[0].hashes
            facts = hashed[0]  # the newer listing goes with the hashes
        for name in names:
            self.manifests[name] = self._manifest(name, kinds[name], facts, hashes,
                                                  claims[name][1])

    def _model_names(self, facts: _Facts, where: str) -> list[str]:
        src = self.source.id
        if self.model is not None:
            st = facts.entries.get(self.model)
            if st is None:
                raise UsageError(f"model {self.model!r} not found in {where} on the source node"
                                 f" {src}")
            if st.kind not in ("d", "f"):
                raise UsageError(f"{where}/{self.model} on {src} is not a directory or a"
                                 " regular file (a symlink?): name the model it points to")
            return [self.model]
        names = []
        for path, st in sorted(facts.entries.items()):
            if "/" in path or path.startswith("."):
                continue
            if st.kind in ("d", "f"):
                names.append(path)
            else:
                self.warnings.append(f"{where}/{path} on {src} is neither a directory nor a"
                                     " regular file: not synced")
        if not names:
            raise UsageError(f"no models in {where} on the source node {src}")
        return names

    def _refuse_listing(self, name: str, tree: Mapping[str, _Stat]) -> None:
        """Stop the run, naming the source, when its listing is one no honest node sends: a
        name built to lead outside the model must never reach a target's mkdir, ln or tar."""
        problem = _listing_problem(name, tree)
        if problem is not None:
            raise SkeletonError(
                f"source node {self.source.id} sent a listing that find never prints"
                f" ({problem}): refused as hostile; nothing was transferred")

    def _manifest(self, name: str, kind: str, facts: _Facts, hashes: Mapping[str, str],
                  cache: Mapping[str, Any]) -> Manifest:
        entries: list[Entry] = []
        stat: dict[str, Any] = {}
        where = self.paths[self.source.id]
        tree = _under(facts.entries, name)
        self._refuse_listing(name, tree)
        links = {rel: st.target for rel, st in tree.items() if st.kind == "l"}
        for rel, st in tree.items():
            full = f"{name}/{rel}" if rel else name
            if st.kind == "d":
                entries.append(Entry(rel, "d"))
            elif st.kind == "f":
                cached = cache.get(full)
                sha = hashes.get(full) or (cached.get("sha256") if isinstance(cached, dict)
                                           else None)
                if not sha:
                    raise NodeError(NodeErrorKind.ERROR, f"source node {self.source.id}: could"
                                    f" not hash {where}/{full} (vanished or unreadable);"
                                    " nothing was transferred")
                entries.append(Entry(rel, "f", st.size, sha))
                stat[full] = {"key": list(st.key), "sha256": sha}
            elif st.kind == "l" and _link_is_safe(rel, st.target, links):
                entries.append(Entry(rel, "l", target=st.target))
            elif st.kind == "l":
                self.warnings.append(f"{where}/{full} on {self.source.id} is a symlink leading"
                                     f" outside the model ({st.target}): not synced")
            else:
                self.warnings.append(f"{where}/{full} on {self.source.id} is not a regular"
                                     " file, directory or symlink: not synced")
        man = Manifest.build(name, kind, entries)
        claim = man.to_json(stat)
        if claim != facts.final_claims.get(name):
            self.source_claims[name] = claim
        return man

    # -- targets

    def _connect_hint(self, node: Node) -> list[str]:
        """`--connect IDX` for the peer `node` will most likely send to first: the next target
        in order (a chain follows it unless some target is already up to date)."""
        if self.relay:
            return []
        i = self.index[node.id]
        return ["--connect", str(i + 1)] if i + 1 < len(self.peers) else []

    def preflight(self, names: list[str], total: int) -> None:
        """Probe every target (free disk, what it holds; with verify, hashes): nothing moves."""
        args = (["--hash-all"] if self.verify else []) + names
        deadline = self.deadline(total, HASH_RATE) if self.verify else None

        def probe(t: _Target) -> None:
            try:
                t.facts = self.remote.call(t.node, "probe", self._connect_hint(t.node) + args,
                                           timeout=deadline)
            except NodeError as exc:
                t.fail(exc.message, exc.kind)
            except _StepFailed as exc:
                t.fail(exc.message)

        self.parallel(probe, self.targets)

    def replan(self, pending: list[_Target]) -> None:
        names = list(self.manifests)
        args = (["--hash-all"] if self.verify else []) + names
        deadline = self.deadline(self.model_bytes(), HASH_RATE) if self.verify else None

        def probe(t: _Target) -> None:
            try:
                t.facts = self.remote.call(t.node, "probe", args, timeout=deadline)
            except NodeError as exc:
                t.fail(exc.message, exc.kind)
            except _StepFailed as exc:
                t.fail(exc.message)

        self.parallel(probe, pending)

    def prepare(self, pending: list[_Target]) -> list[_Job]:
        """Plan every pending target; refuse those short of disk; prepare the rest."""
        ready: list[_Target] = []
        for t in pending:
            if t.status != "pending" or t.facts is None:
                continue
            plan = plan_target(t.facts, self.manifests, verify=self.verify)
            t.plan = plan
            t.models = plan.names or plan.up_to_date
            for path in plan.repaired:
                if path not in t.repaired:
                    t.repaired.append(path)
            if not plan.names:
                if t.status == "pending" and not t.via:
                    t.status = "up-to-date"
                    self.progress(t, "up-to-date", message="already up to date")
                else:
                    t.status = "synced"
                continue
            if plan.need_bytes > t.facts.avail:
                t.status = "refused"
                t.message = (f"not enough free disk space in {t.facts.avail_path}:"
                             f" {_size(plan.need_bytes)} needed, {_size(t.facts.avail)}"
                             " available; nothing was transferred")
                self.progress(t, "refused", message=t.message)
                continue
            ready.append(t)
        jobs = self.jobs(ready)
        nxt: dict[str, Node | None] = {}
        for job in jobs:
            for i, t in enumerate(job.members):
                t.job = job.id
                t.hop_error = ""
                if job.mode == "chain":
                    nxt[t.node.id] = (job.members[i + 1].node if i + 1 < len(job.members)
                                      else None)

        def run(t: _Target) -> None:
            plan = t.plan
            assert plan is not None
            files = {
                "rm.lst": _nul_list(plan.rm), "mkdir.lst": _nul_list(plan.mkdir),
                "link.lst": _nul_list(plan.link), "symlink.lst": _nul_list(plan.symlink),
            }
            for name in plan.names:
                files[f"sclaims/{name}.json"] = self.manifests[name].to_json()
            job_files = {"job.sh": self._job_sh(t.job, nxt.get(t.node.id), t.node),
                         **self._seal_files(t)}
            try:
                facts = self.remote.call(t.node, "prepare", [self.remote.job_dir(t.job)],
                                         files=files, job=t.job, job_files=job_files,
                                         timeout=self.settings.ssh.command_timeout)
                t.staged_base = facts.staged
                self.progress(t, "preflight", 0, plan.need_bytes)
            except NodeError as exc:
                t.fail(exc.message, exc.kind)
            except _StepFailed as exc:
                receiver = nxt.get(t.node.id)
                if exc.code == 4 and receiver is not None:
                    # Ready, but its chain breaks after it.
                    t.hop_error = self._hop_failed(t.node, receiver, exc.message) or exc.message
                else:
                    t.fail(exc.message)

        self.parallel(run, ready)
        return [job for job in jobs if any(t.status == "pending" for t in job.members)]

    # -- jobs

    def jobs(self, ready: list[_Target]) -> list[_Job]:
        """Group targets by the files they need: a chain (or relay) per group, a pull for a
        target alone with its needs. Pairs that failed earlier in the run are routed around:
        chains are ordered (and split) so that no failed pair is a hop, and a target no peer
        can reach goes through the controller (relay)."""
        groups: dict[tuple[str, ...], list[_Target]] = {}
        for t in ready:
            assert t.plan is not None
            groups.setdefault(t.plan.key, []).append(t)
        jobs = []
        for members in groups.values():
            plan = members[0].plan
            assert plan is not None
            files = [p for p, _, _ in plan.need]
            total = sum(size for _, size, _ in plan.need)
            if self.relay:
                jobs.append(_Job(self.remote.next_id("j"), members, files, total, "relay"))
                continue
            stranded = []
            for t in members:
                t.relay_why = self._stranded(t)
                if t.relay_why:
                    stranded.append(t)
            if stranded:
                jobs.append(_Job(self.remote.next_id("j"), stranded, files, total, "relay"))
            for chain in self._chains([t for t in members if not t.relay_why]):
                # A target alone pulls, unless it failed to open connections itself: then
                # the holder pushes (a chain of one).
                mode = ("pull" if len(chain) == 1 and not self._opened_badly(chain[0])
                        else "chain")
                jobs.append(_Job(self.remote.next_id("j"), chain, files, total, mode))
        return jobs

    # -- routing around failed hops

    def _hop_failed(self, opener: Node, peer: Node, message: str) -> str:
        """Record that `opener` cannot open a connection to `peer` (from a step's exit-4
        message); returns the cause, naming the pair ("" when the step failed otherwise)."""
        found = _HOP_FAILURE.search(message)
        if found is None:
            return ""
        cause, network = hop_cause(opener.id, peer.id, found.group(2))
        with self._hop_lock:
            if (opener.id, peer.id) not in self.hop_failures:
                self.warnings.append(f"{cause}; routed around it")
            self.hop_failures[(opener.id, peer.id)] = _HopFailure(opener.id, peer.id, cause,
                                                                  network)
        return cause

    def _bad(self, opener: Node, peer: Node) -> bool:
        """`opener` failed to open a connection to `peer` in this run."""
        return (opener.id, peer.id) in self.hop_failures

    def _opened_badly(self, t: _Target) -> bool:
        """`t` failed to open a connection to a peer in this run."""
        return any(f.opener == t.node.id for f in self.hop_failures.values())

    def _stranded(self, t: _Target) -> str:
        """Why no peer can serve `t` (its failed hops), or "" while one may. Stranded: no
        holder could push to it and it could not pull (from every holder, or the network
        failed its own connections), or the network failed both into and out of it (a node
        cut off from its peers: trying each holder would cost a connect timeout each), or
        this is the last round."""
        me = t.node.id
        into = [f for f in self.hop_failures.values() if f.peer == me]
        out = [f for f in self.hop_failures.values() if f.opener == me]
        if not into and not out:
            return ""
        holders = self.holders.ids()
        cut_in, cut_out = any(f.network for f in into), any(f.network for f in out)
        no_push = bool(into) and holders <= {f.opener for f in into}
        no_pull = bool(out) and (holders <= {f.peer for f in out} or cut_out)
        if self.round_no >= MAX_ROUNDS or (no_push and no_pull) or (cut_in and cut_out):
            return "; ".join(dict.fromkeys(f.cause for f in [*into, *out]))
        return ""

    def _chains(self, members: list[_Target]) -> list[list[_Target]]:
        """`members` as chains in which no hop is a pair that failed. Without failures: one
        chain in the targets' order (the fast path). Members that failed to open connections
        go last, where they forward to nobody."""
        rest = sorted(members, key=lambda t: (self._opened_badly(t), self.index[t.node.id]))
        chains = []
        while rest:
            chain = [rest.pop(0)]
            while True:
                nxt = next((m for m in rest if not self._bad(chain[-1].node, m.node)), None)
                if nxt is None:
                    break
                rest.remove(nxt)
                chain.append(nxt)
            chains.append(chain)
        return chains

    def _rerouted(self, targets: Iterable[_Target], cause: str) -> None:
        for t in targets:
            if cause not in t.rerouted:
                t.rerouted.append(cause)

    def run_jobs(self, jobs: list[_Job]) -> None:
        with self._jobs_lock:
            self._active_jobs = len(jobs)

        def busy() -> bool:
            with self._jobs_lock:
                return self._active_jobs > 0

        def run(job: _Job) -> None:
            try:
                self.run_job(job, busy)
            finally:
                with self._jobs_lock:
                    self._active_jobs -= 1

        if jobs:
            with cancel.executor(len(jobs), "job") as pool:
                list(pool.map(run, jobs))

    def run_job(self, job: _Job, busy: Callable[[], bool]) -> None:
        if cancel.cancelled():
            return  # Ctrl-C: no new transfer starts (its members stay pending)
        head = next((t for t in job.members if t.status == "pending"), None)

        def usable(node: Node) -> bool:
            # A pair whose connection failed is not tried again (the other direction may be).
            if job.mode == "relay" or head is None:
                return True
            if job.mode == "pull":
                return not self._bad(head.node, node)
            return not self._bad(node, head.node)

        holder = self.holders.acquire(busy, usable)
        if holder is None:
            for t in job.members:
                t.message = t.message or "no node holding the model is reachable any more"
            return
        started = time.monotonic()
        note = ""
        try:
            if job.mode == "pull":
                note = self._pull(job, holder)
            elif job.mode == "relay":
                note = self._relay(job, holder)
            else:
                note = self._chain(job, holder)
        except (NodeError, _StepFailed) as exc:
            note = str(exc)
            if isinstance(exc, _StepFailed) and exc.code == 4 and head is not None:
                # The holder could not reach the first receiver (chain), or a puller the
                # holder: that pair is out, the job is re-planned in the next round.
                cause = (self._hop_failed(head.node, holder, exc.message) if job.mode == "pull"
                         else self._hop_failed(holder, head.node, exc.message))
                if cause:
                    note = cause
                    self._rerouted(job.members, cause)
            # Did the sender die? Then it serves nobody else.
            self._check_holder(holder)
        finally:
            self.holders.release(holder)
        elapsed = time.monotonic() - started
        how = {"pull": "rsync from", "relay": "relayed from", "chain": "chain from"}[job.mode]
        unsealed = []
        self.remote.finished(t.node for t in job.members
                             if self.index[t.node.id] in job.finished)
        states = {self.index[t.node.id]: job.reports.get(self.index[t.node.id], ("", ""))
                  for t in job.members}
        hostile = next((why for state, why in states.values() if state == "hostile"), None)
        for t in job.members:
            t.via.append(f"{how} {holder.id}" + (f": no peer could reach it ({t.relay_why})"
                                                 if job.mode == "relay" and t.relay_why
                                                 else ""))
            state, why = states[self.index[t.node.id]]
            if state == "published":
                self._published(t, elapsed)
            elif hostile is not None:
                self._refuse_sender(t, holder, why if state == "hostile" else hostile)
            else:
                unsealed.append(t)
                note = note or why
        # Members that did not publish themselves: find out why, and publish what is right.
        self.parallel(lambda t: self.finalize(t, job, elapsed, note), unsealed)

    def _refuse_sender(self, t: _Target, holder: Node, why: str) -> None:
        """`holder` sent `t` (or a member of its job) something its manifest does not list:
        nothing of the job is published, the holder serves nobody else, and the run stops
        after this round (see `run`), naming it."""
        self.holders.remove(holder)
        self.offender = self.offender or holder.id
        self._drop_staged(t)
        t.fail(f"{holder.id} sent what its manifest does not list ({why}): refused as hostile;"
               " nothing was published")
        self.progress(t, "failed", message=t.message)

    def _drop_staged(self, t: _Target) -> None:
        """Stop `t`'s transfers of this run and remove its staged copies (and what a hostile
        stream may have left in them) with their stage claims."""
        self._abort(t.node, t.job or "*")
        if t.plan is None or not t.plan.names:
            return
        base = f"{self.paths[t.node.id]}/{STAGE}"
        paths = [p for name in t.plan.names
                 for p in (f"{base}/{name}", f"{base}/.manifests/{name}.json")]
        self.remote.shell(t.node, "rm -rf -- " + shlex.join(paths))

    def _check_holder(self, holder: Node) -> None:
        r = self.remote.shell(holder, "true", timeout=self.settings.ssh.connect_timeout + 5)
        if r.error_kind is not None:
            self.holders.remove(holder)

    def _abort(self, node: Node, job: str) -> None:
        with contextlib.suppress(NodeError, _StepFailed):
            self.remote.call(node, "abort", [job], timeout=30, cancellable=False)

    def _hop_ssh(self, dst: Node, *, master: str) -> list[str]:
        """OpenSSH argv a node uses to reach peer `dst`: the node's own key and known_hosts
        (the controller's files are not there), our host-key policy, finite timeouts, and a
        control master per peer so that later streams skip the handshake."""
        ssh = self.settings.ssh
        policy = "accept-new" if ssh.host_key_policy == "accept-new" else "yes"
        return [
            "ssh", "-T", "-x", "-a", "-p", str(dst.port), "-l", dst.user,
            "-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={policy}",
            "-o", f"ConnectTimeout={max(1, int(ssh.connect_timeout))}",
            "-o", f"ServerAliveInterval={max(1, int(ssh.keepalive))}",
            "-o", "ServerAliveCountMax=3", "-o", "Compression=no", "-o", "LogLevel=ERROR",
            "-c", HOP_CIPHERS, "-o", f"KexAlgorithms={HOP_KEX}",
            "-o", f"ControlPath=~/{self.remote.run_dir}/cm-{self.index[dst.id]}",
            "-o", f"ControlMaster={master}",
        ] + (["-o", "ControlPersist=120"] if master == "auto" else [])

    def _hops_sh(self, node: Node) -> bytes:
        """hop_connect IDX and hop_send IDX COMMAND for every other peer of this run."""
        if self.relay:
            return b""
        connect, send = [], []
        for peer in self.peers:
            if peer.id == node.id:
                continue
            i = self.index[peer.id]
            argv = [*self._hop_ssh(peer, master="auto"), "--", peer.host, "true"]
            connect.append(f"    {i}) {shlex.join(argv)} ;;")
            argv = [*self._hop_ssh(peer, master="no"), "--", peer.host]
            send.append(f"    {i}) {shlex.join(argv)} \"$2\" ;;")
        fallback = "    *) echo \"no peer $1\" >&2; return 2 ;;"
        return ("hop_connect() {\n  case $1 in\n" + "\n".join([*connect, fallback])
                + "\n  esac\n}\nhop_send() {\n  case $1 in\n" + "\n".join([*send, fallback])
                + "\n  esac\n}\n").encode()

    def _job_sh(self, job: str, nxt: Node | None, me: Node, extra: str = "") -> bytes:
        head = f"ME={self.index[me.id]}\nFINISH=1\n"
        if nxt is None:
            return (head + "HAS_NEXT=0\n" + extra).encode()
        command = self.remote.remote_command("recv", job)
        return (head + f"HAS_NEXT=1\nNEXT={self.index[nxt.id]}\n"
                f"NEXT_CMD={shlex.quote(command)}\n" + extra).encode()

    def _seal_files(self, t: _Target) -> dict[str, bytes]:
        """What a receiver needs to check and publish its own copy (models.sh seal): the
        staged tree as it must be, the transferred files' hashes, the claims."""
        plan = t.plan
        assert plan is not None
        records: list[bytes] = []
        for name in plan.names:
            for e in self.manifests[name].entries:
                path = _node_path(name, e.path, staged=True)
                text = {"f": f"f {e.size} {path}", "d": f"d {path}",
                        "l": f"l {path}\x01{e.target}"}[e.kind]
                records.append(text.encode("utf-8", "surrogateescape") + b"\0")
        files = {"expect": b"".join(sorted(records)), "pub.lst": _nul_list(plan.names),
                 # the only members its tar extracts from a stream (models.sh extract)
                 "recv.lst": _nul_list(p for p, _, _ in plan.need)}
        # Every transferred file is checked against its sha256 before publishing, --verify
        # or not: the stream may have passed through other peers of the chain.
        sums = []
        for path, _, _ in plan.need:
            name, rel = _split_name(path)
            entry = self.manifests[name].entry(rel)
            assert entry is not None
            sums.append(f"{entry.sha256}  {path}".encode("utf-8", "surrogateescape") + b"\0")
        files["expect.sha"] = b"".join(sorted(sums))
        for name in plan.names:
            files[f"fclaims/{name}.json"] = self.manifests[name].to_json()
        return files

    def _chain(self, job: _Job, holder: Node) -> str:
        # A member that failed to prepare is out; one that could not connect to its next
        # node ends the chain (the rest wait for the next round, and any holder).
        members = [t for t in job.members if t.status == "pending"]
        cut = next((i for i, t in enumerate(members) if t.hop_error), None)
        if cut is not None:
            for t in members[cut + 1:]:
                t.message = members[cut].hop_error
            self._rerouted(members[cut + 1:], members[cut].hop_error)
            members = members[:cut + 1]
            self.remote.call(members[-1].node, "upload", job=job.id,
                             job_files={"job.sh": self._job_sh(job.id, None,
                                                               members[-1].node)})
        job.members = members
        if not members:
            return ""
        poller = _Poller(self, job)
        poller.start()
        try:
            facts = self.remote.call(
                holder, "send", [self.remote.job_dir(job.id)], job=job.id,
                job_files={"job.sh": self._job_sh(job.id, members[0].node, holder),
                           "send.lst": _nul_list(job.files)},
                timeout=self.deadline(job.total))
        except _StepFailed as exc:
            job.absorb(exc.facts)
            raise
        finally:
            poller.stop()
        job.absorb(facts)
        return ""

    def _pull(self, job: _Job, holder: Node) -> str:
        t = job.members[0]
        ssh = self.settings.ssh
        rsh = [*self._hop_ssh(holder, master="no"), "--"]
        argv = build_rsync_argv(
            [remote_spec(holder.host, self.paths[holder.id] + "/")], f"./{STAGE}/",
            rsh=rsh, compress=False, partial_dir=None, protect_args="-s",
            io_timeout=max(30, int(ssh.keepalive * 10)),
            # Only the listed regular files come: the holder may be a hostile source, and a
            # symlink (even a "safe" one: a chain of them leads anywhere) or a directory
            # entry of its choosing must not replace the real directories prepare made.
            rsync_opts=["--no-links", "--no-implied-dirs", "--append-verify", "--from0"],
        )
        split = argv.index("--")
        job_sh = self._job_sh(job.id, None, t.node, extra=(
            f"PEER={self.index[holder.id]}\n"
            f"pull_rsync() {{ {shlex.join(argv[:split])} \"$@\""
            f" {shlex.join(argv[split:])}; }}\n"))
        poller = _Poller(self, job)
        poller.start()
        try:
            facts = self.remote.call(t.node, "pull", [self.remote.job_dir(job.id)],
                                     job=job.id, timeout=self.deadline(job.total),
                                     job_files={"job.sh": job_sh,
                                                "pull.lst": _nul_list(job.files)})
        finally:
            poller.stop()
        job.absorb(facts)
        return ""

    def _stream_guard(self, job: _Job) -> TarGuard:
        """The members a relayed stream may hold: the job's files at the manifest's sizes."""
        allowed: dict[bytes, int] = {}
        for path in job.files:
            name, rel = _split_name(path)
            entry = self.manifests[name].entry(rel)
            assert entry is not None
            allowed[path.encode("utf-8", "surrogateescape")] = entry.size
        return TarGuard(allowed)

    def _relay(self, job: _Job, holder: Node) -> str:
        """Stream a tar from the holder into every member through the controller: two (or
        more) SSH channels piped in memory, nothing written here."""
        job.members = [t for t in job.members if t.status == "pending"]
        self.remote.call(holder, "upload", job=job.id,
                         job_files={"job.sh": self._job_sh(job.id, None, holder),
                                    "send.lst": _nul_list(job.files)})
        procs: dict[str, subprocess.Popen[bytes]] = {}
        errs: dict[str, bytearray] = {}
        outs: dict[str, bytearray] = {}
        readers: list[threading.Thread] = []

        def collect(stream: Any, buf: bytearray, keep: int) -> None:
            fd = stream.fileno()
            for chunk in iter(lambda: os.read(fd, 65536), b""):
                buf.extend(chunk)
                del buf[:-keep]

        def ssh(node: Node, action: str, **kwargs: Any) -> subprocess.Popen[bytes]:
            argv = [*ssh_argv(node, self.settings.ssh, extra=["-T"]), "--", node.host,
                    self.remote.remote_command(action, job.id)]
            proc = subprocess.Popen(argv, stderr=subprocess.PIPE,
                                    preexec_fn=cancel.die_with_parent(), **kwargs)
            streams = [(proc.stderr, errs.setdefault(node.id, bytearray()), 4096)]
            if action == "recv":
                # stdout: the member's seal report (a few bytes, once its stream has ended).
                streams.append((proc.stdout, outs.setdefault(node.id, bytearray()), 65536))
            for stream, buf, keep in streams:
                th = threading.Thread(target=collect, args=(stream, buf, keep), daemon=True,
                                      name="relay-reader")
                th.start()
                readers.append(th)
            return proc

        deadline = time.monotonic() + self.deadline(job.total)
        src = None

        def stop_all() -> None:  # Ctrl-C: the streams stop at once (the finally reaps)
            for proc in [*procs.values(), *([src] if src is not None else [])]:
                with contextlib.suppress(OSError):
                    proc.kill()

        stopping = contextlib.ExitStack()
        stopping.enter_context(cancel.TOKEN.on_cancel(stop_all))
        try:
            for t in job.members:
                procs[t.node.id] = ssh(t.node, "recv", stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE)
            src = ssh(holder, "send-stdout", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            assert src.stdout is not None
            moved = 0
            started = time.monotonic()
            last = 0.0
            alive = dict(procs)
            out_fd = src.stdout.fileno()
            guard = self._stream_guard(job)
            for chunk in iter(lambda: os.read(out_fd, RELAY_CHUNK), b""):
                if time.monotonic() > deadline:
                    raise NodeError(NodeErrorKind.TIMEOUT, "relay exceeded its deadline",
                                    node=holder.id)
                problem = guard.feed(chunk)
                if problem is not None:
                    # Not one byte of this chunk goes on; the receivers are killed below
                    # (before their stream ends, so none of them seals).
                    for t in job.members:
                        job.reports[self.index[t.node.id]] = ("hostile", problem)
                    return f"relay from {holder.id} stopped: {problem}"
                for node_id, proc in list(alive.items()):
                    try:
                        assert proc.stdin is not None
                        proc.stdin.write(chunk)
                    except (BrokenPipeError, OSError):
                        alive.pop(node_id)
                moved += len(chunk)
                now = time.monotonic()
                if now - last >= POLL_INTERVAL:
                    last = now
                    for t in job.members:
                        if t.node.id in alive:
                            self.progress(t, "transfer", min(moved, job.total), job.total,
                                          moved / max(now - started, 1e-6))
            for proc in alive.values():
                with contextlib.suppress(OSError):
                    assert proc.stdin is not None
                    proc.stdin.close()
            code = src.wait(timeout=max(1.0, deadline - time.monotonic()))
            for proc in procs.values():
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            for th in readers:
                th.join(timeout=5)
            for report in outs.values():
                with contextlib.suppress(NodeError, ValueError):
                    job.absorb(parse_answer(bytes(report)))
            if code != 0:
                tail = bytes(errs.get(holder.id, b"")).decode("utf-8", "replace").strip()
                return f"relay from {holder.id} failed (exit {code}): {tail}"
            return ""
        finally:
            for proc in [*procs.values(), *([src] if src is not None else [])]:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        with contextlib.suppress(OSError):
                            stream.close()
            for th in readers:
                th.join(timeout=5)
            stopping.close()

    # -- finishing a target

    def _call_or_fail(self, t: _Target, action: str, args: Sequence[str] = (),
                      **kwargs: Any) -> _Facts | None:
        """`remote.call` on target `t`; if the node or the step fails, `t` fails (and says so)
        and the answer is None."""
        try:
            return self.remote.call(t.node, action, args, **kwargs)
        except NodeError as exc:
            t.fail(exc.message, exc.kind)
        except _StepFailed as exc:
            t.fail(exc.message)
        self.progress(t, "failed", message=t.message)
        return None

    def finalize(self, t: _Target, job: _Job, elapsed: float, note: str) -> None:
        plan = t.plan
        if plan is None or t.status != "pending":
            return
        names = plan.names
        # What was transferred is hashed, --verify or not (see _seal_files).
        files = {"hash.lst": _nul_list(_node_path(*_split_name(p), staged=True)
                                       for p in job.files)}
        self.progress(t, "verify", job.total, job.total)
        facts = self._call_or_fail(t, "probe", names, files=files,
                                   timeout=self.deadline(job.total, HASH_RATE))
        if facts is None:
            return
        t.facts = facts
        problems: list[str] = []
        strays: list[str] = []
        corrupt: list[str] = []
        transferred = set(job.files)
        for name in names:
            man = self.manifests[name]
            staged = _under(facts.entries, f"{STAGE}/{name}")
            hashes: dict[str, str] = {}
            for rel in (e.path for e in man.entries if e.kind == "f"):
                key = _strip_dot(_node_path(name, rel, staged=True))
                if _node_path(name, rel) in transferred:
                    hashes[key] = facts.hashes.get(key, "")
                else:
                    entry = man.entry(rel)
                    hashes[key] = entry.sha256 if entry else ""  # checked before linking
            wrong = _matches(staged, man, hashes, f"{STAGE}/{name}")
            corrupt += [f"{self.paths[t.node.id]}/{_node_path(name, rel, staged=True)[2:]}"
                        for rel in wrong
                        if _node_path(name, rel) in transferred
                        and _full_size(staged.get(rel), man.entry(rel))]
            want = {e.path for e in man.entries}
            strays += [_node_path(name, rel, staged=True) for rel in wrong if rel not in want]
            problems += [f"{name}/{rel}" if rel else name for rel in wrong if rel in want]
        if problems:
            shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more"
                                               if len(problems) > 3 else "")
            t.message = (note + "; " if note else "") + f"incomplete after transfer: {shown}"
            if corrupt:
                # Full size, wrong content: a later round would take them for complete.
                self.remote.shell(t.node, "rm -f -- " + shlex.join(corrupt))
            if job.mode in ("chain", "relay"):
                # A receiver behind a dead node may still wait for the rest of its stream:
                # stop it before the next round writes into the same staging directory.
                self._abort(t.node, job.id)
            return
        pub = {"pub.lst": _nul_list(names), "rmx.lst": _nul_list(strays)}
        for name in names:
            pub[f"fclaims/{name}.json"] = self.manifests[name].to_json()
        if self._call_or_fail(t, "publish", files=pub) is None:
            return
        self._published(t, elapsed)

    def _published(self, t: _Target, elapsed: float) -> None:
        plan = t.plan
        assert plan is not None
        t.status = "synced"
        t.moved += plan.need_bytes
        t.seconds += elapsed
        t.message = ""
        self.progress(t, "done", plan.need_bytes, plan.need_bytes,
                      plan.need_bytes / max(elapsed, 1e-6))
        self.holders.add(t.node)

    # -- the whole run

    def run(self) -> ClusterResult[Any]:
        started = time.monotonic()
        try:
            self.read_source()
            self.holders.add(self.source)
            pending = [t for t in self.targets if t.status == "pending"]
            for round_no in range(1, MAX_ROUNDS + 1):
                if not pending or cancel.cancelled():
                    break
                self.round_no = round_no
                if round_no > 1:
                    self.replan(pending)
                self.run_jobs(self.prepare(pending))
                pending = [t for t in self.targets if t.status == "pending"]
                if self.offender is not None:
                    for t in pending:
                        t.fail(f"not synced: {self.offender} sent what its manifest does not"
                               " list; the run was stopped")
                        self.progress(t, "failed", message=t.message)
                    pending = []
            if cancel.cancelled():
                self._interrupted()
            for t in (t for t in self.targets if t.status == "pending"):
                t.fail(t.message or "did not complete", t.error_kind)
                self.progress(t, "failed", message=t.message)
        except BaseException:
            self._abort_all()
            raise
        finally:
            self._early.shutdown()
            self._finish()
            self.remote.leases.release()  # after finish: the nodes find nothing left to do
            self._warm_wait()
        return ClusterResult([self._result(t) for t in self.targets], operation="sync-models",
                             duration=time.monotonic() - started, warnings=self.warnings)

    def _interrupted(self) -> None:
        """After a Ctrl-C: stop every transfer process of this run on the nodes, then ask each
        target that has not reported its copy published whether it has our manifests'
        claims (published just before the stop): the result then says exactly what was
        published where. Nothing else is ever published: a copy is swapped into place only
        after it was checked whole."""
        self._abort_all()
        names = list(self.manifests)

        def settle(t: _Target) -> None:
            if t.status not in ("pending", "failed") or (
                    t.status == "failed" and t.error_kind != NodeErrorKind.INTERRUPTED):
                return
            facts = None
            if names and t.plan is not None:
                # It may have published and removed its run dir before the stop: upload
                # the script again (`_finish` removes what this probe makes).
                self.remote.finished([t.node])
                with contextlib.suppress(NodeError, _StepFailed):
                    facts = self.remote.call(t.node, "probe", names, timeout=30,
                                             cancellable=False)
            if facts is not None and all(
                    (Manifest.from_json(n, facts.final_claims.get(n))[0] or _NONE).digest
                    == self.manifests[n].digest for n in names):
                t.status, t.error_kind, t.message = "synced", None, ""
                t.moved += t.plan.need_bytes if t.plan else 0
                return
            t.fail(f"{cancel.INTERRUPTED}: nothing published on this node in this run"
                   " (a partial copy stays in staging, for the next run to resume)",
                   NodeErrorKind.INTERRUPTED)
            self.progress(t, "failed", message=t.message)

        self.parallel(settle, self.targets)

    def _abort_all(self) -> None:
        nodes = [n for n in (self.source, *(t.node for t in self.targets))
                 if n.id in self.remote.initialized]
        self.parallel(lambda n: self._abort(n, "*"), nodes)

    def _finish(self) -> None:
        nodes = [n for n in (self.source, *(t.node for t in self.targets))
                 if n.id in self.remote.initialized]

        def finish(node: Node) -> None:
            files: dict[str, bytes] = {}
            args: list[str] = []
            if node.id == self.source.id and self.source_claims:
                files = {f"fclaims/{name}.json": claim
                         for name, claim in self.source_claims.items()}
                args = ["--claims"]
            with contextlib.suppress(NodeError, _StepFailed):
                self.remote.call(node, "finish", args, files=files, timeout=30,
                                 cancellable=False)

        self.parallel(finish, nodes)

    def _result(self, t: _Target) -> NodeResult[Any]:
        data: dict[str, Any] = {
            "status": t.status, "source": self.source.id, "models": t.models,
            "bytes": t.moved, "seconds": round(t.seconds, 3),
            "rate": round(t.moved / t.seconds, 1) if t.seconds > 0 else 0.0,
            "via": t.via, "repaired": t.repaired, "rerouted": t.rerouted,
            "path": self.paths[t.node.id],
        }
        if t.status in ("synced", "up-to-date"):
            if t.status == "synced" and t.repaired:
                data["status"] = "repaired"
            return NodeResult(node=t.node.id, exit_code=0, duration=t.seconds, data=data,
                              stdout=_summary(data) + "\n")
        if t.error_kind is not None:
            r = failure(t.node.id, t.error_kind, t.message)
            return NodeResult(node=r.node, error_kind=r.error_kind, error=r.error,
                              duration=t.seconds, data=data)
        return NodeResult(node=t.node.id, exit_code=1, stderr=t.message + "\n",
                          duration=t.seconds, data=data)


def _full_size(st: _Stat | None, entry: Entry | None) -> bool:
    """A staged regular file at the manifest's size (complete, so its hash was compared)."""
    return (st is not None and entry is not None and st.kind == entry.kind == "f"
            and st.size == entry.size)


_NONE = Manifest(name="", kind="", entries=(), digest="")  # no claim: matches no digest


def _split_name(path: str) -> tuple[str, str]:
    """"./NAME/rel" -> (NAME, rel)."""
    name, _, rel = _strip_dot(path).partition("/")
    return name, rel


class _Poller:
    """Reports the bytes arriving in each member's staging directory once a second."""

    def __init__(self, sync: _Sync, job: _Job):
        self.sync = sync
        self.job = job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="models-progress")
        self._started = time.monotonic()

    def start(self) -> None:
        if self.sync.on_progress is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_INTERVAL):
            for t in self.job.members:
                if self._stop.is_set():
                    return
                path = shlex.quote(f"{self.sync.paths[t.node.id]}/{STAGE}")
                r = self.sync.remote.shell(t.node, f"du -sb -- {path} 2>/dev/null", 10)
                if r.exit_code not in (0, 1) or not r.stdout.strip():
                    continue
                try:
                    now_bytes = int(r.stdout.split()[0])
                except ValueError:
                    continue
                done = max(0, min(self.job.total, now_bytes - t.staged_base))
                rate = done / max(time.monotonic() - self._started, 1e-6)
                self.sync.progress(t, "transfer", done, self.job.total, rate)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _summary(data: Mapping[str, Any]) -> str:
    if data["status"] == "up-to-date":
        return "up to date"
    text = f"{data['status']}: {_size(data['bytes'])} in {data['seconds']:.1f}s"
    if data["via"]:
        text += f" ({data['via'][-1]})"
    return text


def summary_rows(result: ClusterResult[Any]) -> list[list[str]]:
    """Rows for a summary table: node, status, bytes moved, time, rate, how (or why not)."""
    rows = []
    for node, r in result.items():
        d = r.data
        status = "failed" if r.error_kind is not None else str(d.get("status", "failed"))
        if r.error_kind is not None:
            how = r.summary()
        elif r.exit_code != 0:
            how = r.stderr.strip()
        else:
            how = "; ".join(d.get("via", [])) or "-"
        # Hops routed around; a relay's own line names them already.
        rerouted = [cause for cause in d.get("rerouted", []) if cause not in how]
        if rerouted:
            how += f"; routed around: {'; '.join(rerouted)}"
        if d.get("repaired"):
            how += f"; repaired: {', '.join(d['repaired'][:3])}"
            how += f" and {len(d['repaired']) - 3} more" if len(d["repaired"]) > 3 else ""
        rows.append([
            node, status, _size(d["bytes"]) if d.get("bytes") else "-",
            f"{d['seconds']:.1f}s" if d.get("seconds") else "-",
            f"{_size(d['rate'])}/s" if d.get("rate") else "-", how,
        ])
    return rows


# ---------------------------------------------------------------------------- entry point


def sync_models(
    cluster: Cluster,
    *,
    source_node: Node | str,
    targets: Sequence[Node] | None = None,
    models_path: str | None = None,
    model: str | None = None,
    verify: bool = False,
    relay: bool = False,
    on_progress: ProgressFn | None = None,
    streams_per_sender: int = DEFAULT_STREAMS_PER_SENDER,
    timeout: float | None = None,
) -> ClusterResult[Any]:
    """Spread `model` (default: every model) from `source_node` to `targets` (default: every
    other node). One NodeResult per target; `data["status"]` is up-to-date, synced, repaired,
    refused or failed. Raises NodeError when the source cannot be read (nothing transferred)
    and UsageError for bad paths or names."""
    source = source_node if isinstance(source_node, Node) else cluster.node(source_node)
    chosen = list(cluster.nodes if targets is None else targets)
    seen: set[str] = set()
    target_nodes = []
    for n in chosen:
        if n.id != source.id and n.id not in seen:
            seen.add(n.id)
            target_nodes.append(n)
    if not target_nodes:
        raise UsageError(f"no target nodes: the selection holds only the source {source.id}")
    if streams_per_sender < 1:
        raise UsageError(f"streams per sender must be at least 1, got {streams_per_sender}")
    sync = _Sync(cluster, source, target_nodes, models_path=models_path, model=model,
                 verify=verify, relay=relay, on_progress=on_progress,
                 streams_per_sender=streams_per_sender, timeout=timeout)
    return sync.run()
