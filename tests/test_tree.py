"""The deploy tree digest and its hash cache (skeleton_app.tree), on real files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from skeleton_app import tree


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
