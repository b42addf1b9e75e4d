"""The deploy tree digest and its hash cache (skeleton_app.transfers.tree), on real files."""

from __future__ import annotations

import os
import pwd
import stat
import time
from pathlib import Path

import pytest

from skeleton_app.testing.testbed import Testbed
from skeleton_app.transfers import tree
from tests.support.helpers import skeleton


@pytest.fixture
def src(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    for i in range(20):
        (root / "pkg" / f"m{i}.py").write_text(f"value = {i}\n")
    (root / "skip.pyc").write_bytes(b"compiled")
    return root


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every file the digest reads."""
    seen: list[str] = []
    real = tree._file_hash

    def spy(path: str) -> bytes:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(tree, "_file_hash", spy)
    return seen


def test_cached_digest_reads_nothing_and_sees_a_same_size_rewrite(
        src: Path, hashes: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree, "_RACY", 0.0)  # files written just now may be cached
    first = tree.tree_digest(src, ["*.pyc"])
    assert len(hashes) == 20  # the .pyc is excluded
    assert first == tree.tree_digest(src, ["*.pyc"], cache=False)
    hashes.clear()
    assert tree.tree_digest(src, ["*.pyc"]) == first
    assert hashes == []  # every hash came from the cache
    # Same size, times put back: only the ctime tells, and it is part of the key.
    target = src / "pkg" / "m7.py"
    before = target.stat()
    for _ in range(200):  # kernels before 6.13 stamp ctime per clock tick (1-4 ms)
        target.write_text("value = 8\n")
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
        if target.stat().st_ctime_ns != before.st_ctime_ns:
            break
        time.sleep(0.001)
    changed = tree.tree_digest(src, ["*.pyc"])
    assert hashes == [str(target)]
    assert changed != first
    assert changed == tree.tree_digest(src, ["*.pyc"], cache=False)


def test_recent_files_are_not_cached(src: Path, hashes: list[str]) -> None:
    tree.tree_digest(src)
    hashes.clear()
    tree.tree_digest(src)
    # All were written within the last _RACY seconds: a second write in the same clock
    # tick could leave their times unchanged, so they are read again.
    assert len(hashes) == 21


def test_a_broken_cache_is_ignored(src: Path, hashes: list[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree, "_RACY", 0.0)
    want = tree.tree_digest(src)
    (cache,) = tree.cache_dir().glob("tree-*.json")
    cache.write_text('{"format": 2, "files": {"pkg/m1.py": [1, 2, 3, 4, 5, "00"]}')  # cut off
    hashes.clear()
    assert tree.tree_digest(src) == want
    assert len(hashes) == 21
    cache.write_text("[]")
    assert tree.tree_digest(src) == want
    cache.write_text('{"format": 2, "files": {"pkg/m1.py": 7, "pkg/m2.py": [1, "x"]}}')
    assert tree.tree_digest(src) == want  # malformed entries are misses, not errors


# ---------------------------------------------------------------------------- a hostile cache dir


def _nobody() -> tuple[int, int]:
    account = pwd.getpwnam("nobody")
    return account.pw_uid, account.pw_gid


def _secret(tmp_path: Path) -> Path:
    """A root-only file: what a planted symlink aims at."""
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    return secret


def _plant(directory: Path, names: list[str], target: Path) -> None:
    """Symlinks owned by another user, named like our cache file and its temporary files."""
    for name in names:
        os.symlink(target, directory / name)
        os.lchown(directory / name, *_nobody())


def _planted_names(src: Path) -> list[str]:
    name = tree._cache_name(src, ("*.pyc",))
    pids = range(max(2, os.getpid() - 50), os.getpid() + 50)
    return [name, *(f".{name}.{pid}" for pid in pids)]


def test_cache_dir_of_another_user_is_refused_and_its_links_never_followed(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = _secret(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # world-writable, like a shared XDG_CACHE_HOME
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    theirs = shared / "skeleton_app"
    theirs.mkdir()
    os.chown(theirs, *_nobody())
    theirs.chmod(0o777)
    _plant(theirs, _planted_names(src), secret)
    with pytest.raises(tree.UsageError, match=r"owned by uid \d+, not by this user"):
        tree.tree_digest(src, ["*.pyc"])
    assert secret.read_text() == "root only\n"
    # Ours, but open to others: refused too.
    os.chown(theirs, 0, 0)
    with pytest.raises(tree.UsageError, match="writable by group or others"):
        tree.tree_digest(src, ["*.pyc"])
    # A symlink planted in place of the directory (to one of ours): refused, not followed.
    for p in theirs.iterdir():
        p.unlink()
    theirs.rmdir()
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    os.symlink(ours, theirs)
    os.lchown(theirs, *_nobody())
    with pytest.raises(tree.UsageError, match="is a symlink"):
        tree.tree_digest(src, ["*.pyc"])
    assert list(ours.iterdir()) == []
    assert secret.read_text() == "root only\n"
    # Without the cache, the digest does not need the directory at all.
    assert tree.tree_digest(src, ["*.pyc"], cache=False).files == 20


def test_own_cache_dir_is_private_and_planted_links_in_it_are_misses(
        src: Path, tmp_path: Path, hashes: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree, "_RACY", 0.0)
    secret = _secret(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    _plant(shared, _planted_names(src), secret)  # next to our directory: irrelevant
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    want = tree.tree_digest(src, ["*.pyc"], cache=False)
    assert tree.tree_digest(src, ["*.pyc"]) == want
    ours = shared / "skeleton_app"
    assert stat.S_IMODE(ours.lstat().st_mode) == 0o700 and ours.lstat().st_uid == 0
    # Links that got in before (or by any other way): never read, never written through.
    for p in ours.iterdir():
        p.unlink()
    _plant(ours, _planted_names(src), secret)
    hashes.clear()
    assert tree.tree_digest(src, ["*.pyc"]) == want
    assert len(hashes) == 20  # the planted "cache" was a miss
    assert secret.read_text() == "root only\n"
    cache = ours / tree._cache_name(src, ("*.pyc",))
    assert not cache.is_symlink() and stat.S_IMODE(cache.stat().st_mode) == 0o600
    hashes.clear()
    assert tree.tree_digest(src, ["*.pyc"]) == want
    assert hashes == []  # the real cache written over the link serves again


def test_deploy_with_a_hostile_cache_dir_is_one_line_exit_2_nothing_runs(
        testbed: Testbed, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "skeleton_app").mkdir(parents=True)
    (shared / "skeleton_app").chmod(0o777)
    src = tmp_path / "src"
    src.mkdir()
    (src / "main.py").write_text("VERSION = 'A'\n")
    dest = f"/home/skeleton/cache-test-{os.getpid()}"
    proc = skeleton("cluster", "deploy", "--source", str(src), "--dest", dest, "-n",
                    "node-01", config=testbed.config_path,
                    env={"XDG_CACHE_HOME": str(shared)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skeleton: error: hash cache directory")
    assert "writable by group or others" in lines[0]
    assert not (testbed.host("node-01").home / dest.removeprefix("/home/skeleton/")).exists()
