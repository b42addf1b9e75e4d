"""The local tree a deploy sends: walked as rsync walks it, and digested.

The digest is a content hash of exactly what `rsync -rlpt` with the deploy's excludes would
send. A no-change redeploy is decided by comparing it with the digest each node keeps, so it
is on the path of every deploy; reading every file each time cost ~30 ms for 2,000 files
here. File hashes are therefore cached per tree (under $XDG_CACHE_HOME/skeleton_app), keyed
by size, mtime, ctime, inode and device: any write to a file changes its ctime. As in git's
index, an entry is not cached while its times are within `_RACY` seconds of now (a second
write in the same clock tick would leave them unchanged), so it is hashed again next time;
nor is one whose ctime has no sub-second part (a file system with coarse timestamps).

The cache directory is trusted only when it is private: created 0700, and refused (one line,
UsageError) when it is a symlink, not ours, or writable by group or others — another user
able to write there could plant symlinks named like our temporary files and make a root
deploy overwrite any file. Everything in it is opened relative to the directory's own
descriptor with O_NOFOLLOW (temporary files also O_EXCL), so nothing it holds is followed,
and a cache file that is not a regular file of ours, or does not parse, is a miss.

The same walk finds the files that hold private key material (skeleton_app.secret_scan),
and the cache keeps that verdict with the hash: deploy refuses such a tree, at no cost to a
no-change redeploy.

The node daemon reports this digest too (`tree:` + `TreeDigest.version`, skeleton_app.agent
.version) as the code version of a tree that was neither deployed nor a git checkout.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skeleton_app import secret_scan
from skeleton_app.errors import UsageError
from skeleton_app.transfers.filters import RsyncFilter

_DIGEST_FORMAT = b"skeleton-deploy-tree/1\0"
_CACHE_FORMAT = 3  # 2: entries carry the secret verdict; 3: DSN passwords count as secrets
_RACY = 2.0  # seconds
_CACHE_MAX_AGE = 30 * 86400  # cache files of trees not deployed for this long are removed


@dataclass(frozen=True, slots=True)
class TreeDigest:
    """Content hash of the tree rsync would send: paths, types, permissions, file contents and
    symlink targets (not times: a touched but unchanged file is no reason to deploy)."""

    hex: str
    files: int
    bytes: int
    # Files holding private key material (relative paths, walk order): not part of the hash.
    secrets: tuple[str, ...] = ()

    @property
    def version(self) -> str:
        """The short form shown as the code version (first line of the digest file)."""
        return self.hex[:16]


def walk_tree(root: str | os.PathLike[str], exclude: Iterable[str] = ()
              ) -> Iterator[tuple[str, os.stat_result, str]]:
    """(relative path, lstat, absolute path) of every entry rsync -rlpt would send with these
    excludes, depth first in byte order of names; excluded directories are not entered.
    Sockets, fifos and devices are left out, as rsync without -D skips them."""
    flt = RsyncFilter(exclude)
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        directory, rel = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: os.fsencode(e.name))
        except OSError as exc:
            raise UsageError(f"cannot read {directory}: {exc.strerror}") from None
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise UsageError(f"cannot read {entry.path}: {exc.strerror}") from None
            is_dir = stat.S_ISDIR(st.st_mode)
            if not (is_dir or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                continue
            if flt.excluded(path, is_dir):
                continue
            yield path, st, entry.path
            if is_dir:
                subdirs.append((entry.path, path))
        # Children before the next sibling directory: the same tree always walks the same way.
        stack.extend(reversed(subdirs))


def tree_digest(root: str | os.PathLike[str], exclude: Iterable[str] = (), *,
                cache: bool = True) -> TreeDigest:
    """Digest of `root` as rsync (-rlpt, these excludes) would send it. UsageError if a file
    cannot be read: rsync could not send it either. `cache=False` reads every file."""
    exclude = tuple(exclude)
    cache_fd = _open_cache_dir(cache_dir()) if cache else None
    try:
        return _digest(root, exclude, cache_fd)
    finally:
        if cache_fd is not None:
            os.close(cache_fd)


def _digest(root: str | os.PathLike[str], exclude: tuple[str, ...],
            cache_fd: int | None) -> TreeDigest:
    cache_file = _cache_name(root, exclude)
    known = _load(cache_fd, cache_file) if cache_fd is not None else {}
    keep: dict[str, list[Any]] = {}
    hashed = False
    racy_after = (time.time() - _RACY) * 1e9
    h = hashlib.sha256(_DIGEST_FORMAT)
    count = 0
    total = 0
    flagged: list[str] = []
    h.update(b"R\0%o\0" % stat.S_IMODE(_stat(os.fspath(root)).st_mode))
    for path, st, full in walk_tree(root, exclude):
        raw = os.fsencode(path)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            h.update(b"D\0%s\0%o\0" % (raw, stat.S_IMODE(mode)))
        elif stat.S_ISLNK(mode):
            h.update(b"L\0%s\0%s\0" % (raw, os.fsencode(_readlink(full))))
            count += 1
        else:
            h.update(b"F\0%s\0%o\0%d\0" % (raw, stat.S_IMODE(mode), st.st_size))
            key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
            cached = _cached(known.get(path), key)
            if cached is None:
                digest = _file_hash(full)
                secret = secret_scan.is_secret_file(os.path.basename(path), full)
                hashed = True
            else:
                digest, secret = cached
            if secret:
                flagged.append(path)
            if (max(st.st_mtime_ns, st.st_ctime_ns) < racy_after
                    and st.st_ctime_ns % 1_000_000_000):
                keep[path] = [*key, digest.hex(), int(secret)]
            h.update(digest)
            count += 1
            total += st.st_size
    if cache_fd is not None and (hashed or len(keep) != len(known)):
        _save(cache_fd, cache_file, keep)
    return TreeDigest(h.hexdigest(), count, total, tuple(flagged))


def _cached(entry: Any, key: list[int]) -> tuple[bytes, bool] | None:
    """The cached hash and secret verdict when `entry` is well formed and has this key."""
    if not (isinstance(entry, list) and len(entry) == 7 and entry[:5] == key
            and entry[6] in (0, 1)):
        return None
    try:
        digest = bytes.fromhex(entry[5])
    except (TypeError, ValueError):
        return None
    return (digest, bool(entry[6])) if len(digest) == 32 else None


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _file_hash(path: str) -> bytes:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return h.digest()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "skeleton_app"


def _open_cache_dir(path: Path) -> int:
    """A descriptor of the cache directory `path`, made 0700 if missing (its missing parents
    too, as the XDG spec asks). UsageError when it is a symlink, not a directory, owned by
    another user or writable by group or others: its contents could not be trusted."""
    with contextlib.suppress(OSError):  # the open below says what is wrong
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        why = "is a symlink" if os.path.islink(path) else exc.strerror
        raise UsageError(f"hash cache directory {path} {why}: refusing to use it; set"
                         " XDG_CACHE_HOME to a private directory") from None
    st = os.fstat(fd)
    problem = None
    if st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        problem = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem is not None:
        os.close(fd)
        raise UsageError(f"hash cache directory {path} {problem}: refusing to use it; make"
                         " it private (chmod 700) or set XDG_CACHE_HOME elsewhere")
    return fd


def _cache_name(root: str | os.PathLike[str], exclude: tuple[str, ...]) -> str:
    name = hashlib.sha256(
        json.dumps([os.path.abspath(root), exclude]).encode()).hexdigest()[:24]
    return f"tree-{name}.json"


def _load(dir_fd: int, name: str) -> dict[str, list[Any]]:
    """The cached entries, or none when the file is missing, unreadable, not a regular file
    of ours (never followed if a symlink) or not ours in format."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                return {}
            data = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _save(dir_fd: int, name: str, files: dict[str, list[Any]]) -> None:
    """Write atomically; a cache that cannot be written only costs time. The temporary file
    is new (O_EXCL), never a symlink (O_NOFOLLOW), and rename() replaces whatever sits at
    `name` without following it."""
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({"format": _CACHE_FORMAT, "files": files}))
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        _prune(dir_fd)


def _prune(dir_fd: int) -> None:
    """Remove caches of trees not deployed for a month, and temporary files a day old (a
    process that ended while writing one)."""
    now = time.time()
    for name in os.listdir(dir_fd):
        if fnmatch.fnmatchcase(name, "tree-*.json"):
            age = _CACHE_MAX_AGE
        elif fnmatch.fnmatchcase(name, ".tree-*.json.*"):
            age = 86400
        else:
            continue
        with contextlib.suppress(OSError):
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime < now - age:
                os.unlink(name, dir_fd=dir_fd)
