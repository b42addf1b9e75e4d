"""payloads/releases.sh under dash, as it is sent (`sh -s -- ARGS`, the script on stdin), on a
scratch app dir: the layout, the switch, pruning, rollback, and hostile `releases/` entries.
The whole deploy over SSH is tests/integration/test_releases.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from skeleton_app import payloads
from skeleton_app.ops.deploy.releases import RELEASE_ID_RE

DASH = shutil.which("dash") or "/bin/sh"
IDS = [f"2026010{i}T000000000Z-0000000{i}" for i in range(1, 6)]


def run(*args: str) -> tuple[int, dict[str, list[str]]]:
    proc = subprocess.run([DASH, "-s", "--", *args], input=payloads.data("releases.sh"),
                          capture_output=True, timeout=30, check=False)
    said: dict[str, list[str]] = {}
    for line in proc.stdout.decode().splitlines():
        key, _, value = line.partition("=")
        said.setdefault(key, []).append(value)
    return proc.returncode, said


def release(app: Path, rid: str, version: str = "v") -> None:
    rc, said = run("prepare", str(app), rid)
    assert rc == 0, said
    (app / "releases" / rid / "VERSION").write_text(version)
    rc, said = run("switch", str(app), rid, "3", said["previous"][0] or "-", version,
                   "deployed_at=now")
    assert rc == 0 and said["switched"] == [rid], said


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app dir"  # a space: every expansion must be quoted
    (path / ".skeleton-deploy").mkdir(parents=True)
    return path


def test_ids_match_the_scripts_pattern() -> None:
    assert all(RELEASE_ID_RE.match(i) for i in IDS)
    assert not RELEASE_ID_RE.match(IDS[0] + "\n")


def test_switch_prune_and_rollback(app: Path) -> None:
    for rid in IDS:
        release(app, rid, rid[:8])
    assert os.readlink(app / "current") == f"releases/{IDS[4]}"
    # keep 3: the two oldest went (the previous one, IDS[3], was among the kept anyway).
    assert sorted(p.name for p in (app / "releases").iterdir()) == IDS[2:]
    rc, said = run("list", str(app))
    assert rc == 0 and said["current"] == [IDS[4]]
    assert [r.split()[0] for r in said["release"]] == IDS[2:]

    rc, said = run("rollback", str(app))
    assert rc == 0 and said["from"] == [IDS[4]] and said["to"] == [IDS[3]], said
    assert (app / ".skeleton-deploy/digest").read_text() == f"{IDS[3][:8]}\ndeployed_at=now\n"
    rc, said = run("rollback", str(app), IDS[0])
    assert rc == 1 and said["error"] == [f"unknown release {IDS[0]}"], said
    assert said["releases"] == [" ".join(IDS[2:])]
    rc, said = run("rollback", str(app), IDS[2])
    assert rc == 0 and os.readlink(app / "current") == f"releases/{IDS[2]}"
    rc, said = run("rollback", str(app))
    assert rc == 1 and said["error"] == [f"no release older than {IDS[2]}"], said


def test_abort_removes_only_an_unswitched_release(app: Path) -> None:
    release(app, IDS[0])
    rc, said = run("abort", str(app), IDS[0])
    assert rc == 1 and (app / "releases" / IDS[0]).is_dir(), said  # current: kept
    run("prepare", str(app), IDS[1])
    rc, _ = run("abort", str(app), IDS[1])
    assert rc == 0 and not (app / "releases" / IDS[1]).exists()


def test_link_makes_shared_links_and_refuses_escapes(app: Path) -> None:
    (app / "config.yaml").write_text("a: 1\n")
    run("prepare", str(app), IDS[0])
    rel = app / "releases" / IDS[0]
    rc, said = run("link", str(app), IDS[0], ".venv", "data/models", "config.yaml?", "x?")
    assert rc == 0, said
    assert os.readlink(rel / ".venv") == f"{app}/.venv"
    assert os.readlink(rel / "data/models") == f"{app}/data/models"
    assert os.readlink(rel / "config.yaml") == f"{app}/config.yaml"
    assert not (rel / "x").exists()  # optional and absent at the app dir
    for bad in ("../x", "/etc", "a/../../b", "", "a//b"):
        rc, said = run("link", str(app), IDS[0], bad)
        assert rc == 2, (bad, said)


def test_hostile_entries_are_never_followed_listed_or_deleted(app: Path,
                                                              tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "canary").mkdir(parents=True)
    (app / "releases").mkdir()
    fake = "20000101T000000000Z-deadbeef"
    (app / "releases" / fake).symlink_to(outside)
    for name in ("with space", "..x", f"{fake}\nx", "20000101T000000000Z-dead beef"):
        (app / "releases" / name).mkdir()
    for rid in IDS:  # keep 3: pruning runs every time
        release(app, rid)
    assert (outside / "canary").is_dir()
    left = {p.name for p in (app / "releases").iterdir()}
    assert {fake, "with space", "..x", f"{fake}\nx", "20000101T000000000Z-dead beef"} <= left
    rc, said = run("list", str(app))
    assert [r.split()[0] for r in said["release"]] == IDS[2:]
    for rid in ("../x", "a b", f"{fake}/.."):
        assert run("rollback", str(app), rid)[0] == 1
        assert run("prepare", str(app), rid)[0] == 2
        assert run("abort", str(app), rid)[0] == 2
    # The valid-looking symlink: not a release to roll back to, build into or remove.
    assert run("rollback", str(app), fake)[0] == 1
    assert run("prepare", str(app), fake)[0] == 1
    assert run("abort", str(app), fake)[0] == 0
    assert (outside / "canary").is_dir() and (app / "releases" / fake).is_symlink()

    # current pointing outside: no release is current; rollback refuses; prepare goes on.
    (app / "current").unlink()
    (app / "current").symlink_to(outside)
    rc, said = run("list", str(app))
    assert said["current"] == [""]
    assert run("rollback", str(app))[0] == 1
    rc, said = run("prepare", str(app), "20270101T000000000Z-00000009")
    assert rc == 0 and said["previous"] == [""]


def test_releases_dir_that_is_a_symlink_is_refused(app: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (app / "releases").symlink_to(tmp_path / "elsewhere")
    rc, said = run("prepare", str(app), IDS[0])
    assert rc == 1 and "not a directory" in said["error"][0], said
    assert not any((tmp_path / "elsewhere").iterdir())
    assert run("list", str(app))[1].get("release") is None
