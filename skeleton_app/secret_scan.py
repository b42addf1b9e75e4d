"""Private key material in a tree that is about to be pushed: found before anything is sent.

A deploy sends a whole directory to every node. A private key in it (the controller's
`~/.ssh/id_ed25519`, a TLS key, a PuTTY key) would be copied to every machine of the
cluster, so `cluster deploy` refuses such a tree unless the files are excluded or
`--allow-secrets` is given. A file counts as a secret when

* its name is an OpenSSH private key's (`id_` followed by letters, digits, `_` or `-`, no
  extension: `id_rsa`, `id_ed25519_sk`; `id_rsa.pub` and `id_map.py` are not), or
* its first `HEAD_BYTES` hold a PEM/OpenSSH private key header (BEGIN ... PRIVATE KEY,
  unencrypted, encrypted, RSA, EC, DSA, OpenSSH) or a PuTTY key file's first line.

Key files start with their header, so the head is enough. The verdict of every file is
cached like the deploy's content hashes (skeleton_app.tree): keyed by size, mtime, ctime,
inode and device, with the same "racy" rule. A no-change redeploy of 2,000 files then reads
no file; the walk (one lstat per entry) is all it costs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skeleton_app.errors import UsageError
from skeleton_app.tree import cache_dir, walk_tree

HEAD_BYTES = 8192
SHOWN = 5  # file names in the refusal; the rest are counted

# Written so that this file does not match itself (it is deployed with the project).
_HEADER_RE = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----|PuTTY-User-Key-File-[0-9]+:")
_NAME_RE = re.compile(r"id_[A-Za-z0-9_-]+")
_CACHE_FORMAT = 1
_RACY_NS = 2_000_000_000  # as tree._RACY: a file written within 2 s may change unseen


@dataclass(frozen=True, slots=True)
class SecretScan:
    """The files of a tree that hold private key material (relative paths, walk order)."""

    files: tuple[str, ...]

    def refusal(self, *, what: str = "deploy") -> str:
        """The one-line refusal: the first few files, how many more, and the two ways out."""
        shown = ", ".join(self.files[:SHOWN])
        more = len(self.files) - SHOWN
        if more > 0:
            shown += f" and {more} more"
        return (f"{what}: refusing to send private key material: {shown}"
                " (exclude it in deploy.exclude, or pass --allow-secrets)")


def looks_secret(name: str, head: bytes) -> bool:
    """The rule above for one file: its base name and its first bytes."""
    return bool(_NAME_RE.fullmatch(name)) or _HEADER_RE.search(head) is not None


def scan_tree(root: str | os.PathLike[str], exclude: Iterable[str] = (), *,
              cache: bool = True) -> SecretScan:
    """The files under `root` (rsync's view with these excludes) that look like secrets.
    UsageError when a file cannot be read (rsync could not send it either)."""
    exclude = tuple(exclude)
    cache_file = _cache_file(root, exclude) if cache else None
    known = _load(cache_file) if cache_file else {}
    keep: dict[str, list[Any]] = {}
    read = False
    racy_after = time.time_ns() - _RACY_NS
    found: list[str] = []
    for path, st, full in walk_tree(root, exclude):
        if not stat.S_ISREG(st.st_mode):
            continue  # a symlink is sent as a link; its target is not sent
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
        entry = known.get(path)
        if isinstance(entry, list) and len(entry) == 6 and entry[:5] == key:
            secret = bool(entry[5])
        else:
            secret = looks_secret(os.path.basename(path), _head(full))
            read = True
        if max(st.st_mtime_ns, st.st_ctime_ns) < racy_after and st.st_ctime_ns % 1_000_000_000:
            keep[path] = [*key, int(secret)]
        if secret:
            found.append(path)
    if cache_file and (read or len(keep) != len(known)):
        _save(cache_file, keep)
    return SecretScan(tuple(found))


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(HEAD_BYTES)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _cache_file(root: str | os.PathLike[str], exclude: tuple[str, ...]) -> Path:
    name = hashlib.sha256(
        json.dumps([os.path.abspath(root), exclude]).encode()).hexdigest()[:24]
    return cache_dir() / f"secrets-{name}.json"


def _load(path: Path) -> dict[str, list[Any]]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _save(path: Path, files: dict[str, list[Any]]) -> None:
    """Atomically; a cache that cannot be written only costs time."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"format": _CACHE_FORMAT, "files": files}))
        os.replace(tmp, path)
