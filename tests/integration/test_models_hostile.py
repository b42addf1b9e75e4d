"""`cluster sync-models` against a source that lies (issue #12, section 1), on real hosts.

The source node is compromised: a `find` planted in its mount namespace reports links and
names built to lead out of the model, or a planted `tar` streams members the manifest does
not list. Whatever it does, no target may get a byte written outside its models directory
(their homes are hashed before and after), nothing is published, and the run names the
source. An honest source's nested links that leave the model are left out, with a warning.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import load_config
from skeleton_app.errors import SkeletonError
from skeleton_app.ops.sync_models import sync_models
from skeleton_app.ops.sync_models.answer import Stat
from skeleton_app.ops.sync_models.manifest import link_is_safe, listing_problem
from skeleton_app.safepath import link_resolves_inside, name_problem
from skeleton_app.tarcheck import TarGuard
from skeleton_app.testing import testbed as tb
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import chown_to_user as _chown_tree
from tests.support.helpers import skeleton
from tests.support.models import models_root

SOURCE = "node-01"
TARGETS = ("node-02", "node-03", "node-04")
ATTACKER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAttackerAttackerAttackerAttacker evil\n"


@pytest.fixture
def rel() -> str:
    return f"models {uuid.uuid4().hex[:8]}"


@pytest.fixture
def cluster(testbed: Testbed) -> Iterator[Cluster]:
    with Cluster(load_config(testbed.config_path, env={})) as c:
        yield c


def home_snapshot(bed: Testbed, host: str, rel: str) -> dict[str, tuple[str, str]]:
    """Path -> (kind, sha256 / link target / mode) of everything in the host's home except
    its models directory `rel` and the run directories sync-models keeps while it runs."""
    home = bed.host(host).home
    skip = {models_root(bed, host, rel), home / ".cache" / "skeleton-sync"}
    out: dict[str, tuple[str, str]] = {}
    for root, dirs, files in os.walk(home):
        dirs[:] = [d for d in dirs if Path(root, d) not in skip]
        for name in dirs + files:
            full = Path(root, name)
            key = str(full.relative_to(home))
            if full.is_symlink():
                out[key] = ("l", os.readlink(full))
            elif key == ".cache":
                continue  # made by the first sync-models on this host, to hold its run dirs
            elif full.is_dir():
                out[key] = ("d", oct(full.stat().st_mode))
            else:
                out[key] = ("f", hashlib.sha256(full.read_bytes()).hexdigest())
    return out


def nothing_published(bed: Testbed, host: str, rel: str) -> bool:
    root = models_root(bed, host, rel)
    return not (root / "m").exists() and not (root / ".skeleton-manifests" / "m.json").exists()


def _model_with_planted_key(bed: Testbed, rel: str) -> Path:
    """On the source: `esc -> keys`, keys/.ssh/authorized_keys holding the attacker's key
    (what its tar reads for esc/.ssh/authorized_keys), `a/b/c/d/u -> ../../..` and a weights
    file."""
    model = models_root(bed, SOURCE, rel) / "m"
    (model / "keys" / ".ssh").mkdir(parents=True)
    (model / "keys" / ".ssh" / "authorized_keys").write_text(ATTACKER_KEY)
    os.symlink("keys", model / "esc")
    (model / "a" / "b" / "c" / "d").mkdir(parents=True)
    os.symlink("../../..", model / "a" / "b" / "c" / "d" / "u")
    (model / "weights.bin").write_bytes(os.urandom(256 * 1024))
    _chown_tree(bed.host(SOURCE).app_dir)
    return model


def _lying_find(real: Path) -> str:
    """A find that runs the real one, then, when it lists entries for models.sh (`-printf
    e\\0...`), adds records that override the truth: `esc` is listed as a link that, read as
    text, stays in the model but, through `u`, leads to the home of a target (whose staging
    directory is two levels deeper than the model); a file is listed under it; and a
    directory with ".." components. (Before the fix, the targets' authorized_keys was
    replaced through esc and X was created in their app dir.)"""
    lies = [
        ("l 32 1 1.0 1.0 8", "./m/esc", "a/b/c/d/u/../../../../.."),
        (f"f {len(ATTACKER_KEY)} 1 1.0 1.0 9", "./m/esc/.ssh/authorized_keys", ""),
        ("d 4096 2 1.0 1.0 10", "./m/evil2/../../../../X", ""),
    ]
    records = "".join(f"e\\0{meta}\\0{path}\\0{target}\\0" for meta, path, target in lies)
    return (f"#!/bin/sh\n{real} \"$@\"\nrc=$?\n"
            "case \"$*\" in\n"
            f"    *'-printf e\\0'*) printf '{records}' ;;\n"
            "esac\nexit $rc\n")


@pytest.mark.parametrize(("relay", "targets"), [
    (False, TARGETS), (True, TARGETS), (False, ("node-05",)),
], ids=["chain", "relay", "pull"])
def test_lying_find_on_the_source_writes_nothing_outside(cluster: Cluster, testbed: Testbed,
                                                          rel: str, relay: bool,
                                                          targets: tuple[str, ...]) -> None:
    _model_with_planted_key(testbed, rel)
    before = {h: home_snapshot(testbed, h, rel) for h in targets}
    keys = {h: (testbed.host(h).home / ".ssh" / "authorized_keys").read_bytes()
            for h in targets}
    tb.plant_command(testbed, SOURCE, "/usr/bin/find",
                     _lying_find(tb.real_command(testbed, "/usr/bin/find")))
    try:
        with pytest.raises(SkeletonError) as caught:
            sync_models(cluster, source_node=SOURCE, targets=cluster.select(list(targets)),
                        models_path=rel, model="m", relay=relay)
    finally:
        tb.unhide_command(testbed, SOURCE, "/usr/bin/find")
    message = str(caught.value)
    assert f"source node {SOURCE}" in message and "hostile" in message, message
    assert "nothing was transferred" in message
    for host in targets:
        assert (testbed.host(host).home / ".ssh" / "authorized_keys").read_bytes() == keys[host]
        assert home_snapshot(testbed, host, rel) == before[host], host
        assert nothing_published(testbed, host, rel)


def test_lying_find_through_the_cli_exits_non_zero_naming_the_source(testbed: Testbed,
                                                                     rel: str) -> None:
    _model_with_planted_key(testbed, rel)
    before = home_snapshot(testbed, "node-05", rel)
    tb.plant_command(testbed, SOURCE, "/usr/bin/find",
                     _lying_find(tb.real_command(testbed, "/usr/bin/find")))
    try:
        proc = skeleton("cluster", "sync-models", "--source-node", SOURCE, "--node",
                        f"{SOURCE},node-05", "--models-path", rel,
                        config=testbed.config_path)
    finally:
        tb.unhide_command(testbed, SOURCE, "/usr/bin/find")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skeleton: error: source node node-01")
    assert home_snapshot(testbed, "node-05", rel) == before
    assert nothing_published(testbed, "node-05", rel)


def _hostile_stream(path: Path) -> None:
    """The tar a lying source sends for the model below instead of its files: the listed
    weights file as a link to the home's authorized_keys, a symlink over the listed
    directory `a`, members with absolute and ".." names, a hard link to a home file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
                link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("./m/a", tarfile.SYMTYPE, link="../../../..")
        add("./m/a/f", data=b"through the link\n")
        add("/home/skeleton/.ssh/authorized_keys", data=ATTACKER_KEY.encode())
        add("./m/../../../../.ssh/authorized_keys", data=ATTACKER_KEY.encode())
        add("./m/weights.bin", tarfile.SYMTYPE, link="../../../../.ssh/authorized_keys")
        add("./m/planted", data=ATTACKER_KEY.encode())
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("relay", [False, True], ids=["chain", "relay"])
def test_hostile_tar_stream_is_refused_on_the_targets(cluster: Cluster, testbed: Testbed,
                                                      rel: str, relay: bool) -> None:
    """The listing is honest, the stream is not: the targets' own tar takes only the listed
    names, the seal finds a link where a file was listed, nothing is published and the
    source is named."""
    model = models_root(testbed, SOURCE, rel) / "m"
    (model / "a").mkdir(parents=True)
    (model / "a" / "f").write_text("honest\n")
    (model / "weights.bin").write_bytes(os.urandom(64 * 1024))
    _chown_tree(testbed.host(SOURCE).app_dir)
    stream = testbed.state_dir / "planted" / f"stream-{rel[-8:]}.tar"
    stream.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _hostile_stream(stream)
    stream.chmod(0o644)
    real = tb.real_command(testbed, "/usr/bin/tar")
    # Creating (-c): the crafted stream; anything else (the run dir's upload): the real tar.
    script = (f"#!/bin/sh\ncase \" $* \" in\n    *' -c '*) exec cat {stream} ;;\nesac\n"
              f"exec {real} \"$@\"\n")
    before = {h: home_snapshot(testbed, h, rel) for h in TARGETS}
    tb.plant_command(testbed, SOURCE, "/usr/bin/tar", script)
    try:
        result = sync_models(cluster, source_node=SOURCE,
                             targets=cluster.select(list(TARGETS)), models_path=rel,
                             model="m", relay=relay)
    finally:
        tb.unhide_command(testbed, SOURCE, "/usr/bin/tar")
    assert result.exit_code() == 1, result.to_json()
    for host in TARGETS:
        r = result[host]
        assert r.outcome.status == "failed"
        assert f"{SOURCE} sent what its manifest does not list" in r.stderr, r.stderr
        assert "nothing was published" in r.stderr
        # Relayed, the controller stops the stream at its first bad member; in a chain, each
        # target's seal finds the listed file turned into a link.
        assert ("./m/a is sent as tar type '2'" if relay
                else "(m/weights.bin -> ../../../../.ssh/authorized_keys is not what the manifest"
                ) in r.stderr, r.stderr
        assert home_snapshot(testbed, host, rel) == before[host], host
        assert nothing_published(testbed, host, rel)
        staging = models_root(testbed, host, rel) / ".skeleton-staging"
        assert not (staging / "m").exists()  # what the stream planted went with it


@pytest.mark.parametrize("relay", [False, True], ids=["chain", "relay"])
def test_a_stream_with_other_bytes_is_never_published(cluster: Cluster, testbed: Testbed,
                                                      rel: str, relay: bool) -> None:
    """Right names, types and sizes, other bytes (a pickle swapped for a payload): every
    transferred file is checked against the manifest's sha256, --verify or not."""
    model = models_root(testbed, SOURCE, rel) / "m"
    model.mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"honest weights " * 4000)
    _chown_tree(testbed.host(SOURCE).app_dir)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        payload = b"evil!  weights " * 4000  # the same size
        info = tarfile.TarInfo("./m/weights.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    stream = testbed.state_dir / "planted" / f"bytes-{rel[-8:]}.tar"
    stream.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    stream.write_bytes(buf.getvalue())
    stream.chmod(0o644)
    real = tb.real_command(testbed, "/usr/bin/tar")
    script = (f"#!/bin/sh\ncase \" $* \" in\n    *' -c '*) exec cat {stream} ;;\nesac\n"
              f"exec {real} \"$@\"\n")
    tb.plant_command(testbed, SOURCE, "/usr/bin/tar", script)
    try:
        result = sync_models(cluster, source_node=SOURCE,
                             targets=cluster.select(list(TARGETS)), models_path=rel,
                             model="m", relay=relay)
    finally:
        tb.unhide_command(testbed, SOURCE, "/usr/bin/tar")
    assert result.exit_code() == 1, result.to_json()
    for host in TARGETS:
        assert result[host].outcome.status == "failed"
        assert "m/weights.bin" in result[host].stderr, result[host].stderr
        assert nothing_published(testbed, host, rel)
        staged = models_root(testbed, host, rel) / ".skeleton-staging" / "m" / "weights.bin"
        assert not staged.exists()  # not kept as "complete" for a later run
    # An honest source then fills the same targets: nothing of the payload survives.
    result = sync_models(cluster, source_node=SOURCE, targets=cluster.select(list(TARGETS)),
                         models_path=rel, model="m", relay=relay)
    assert result.exit_code() == 0, result.to_json()
    for host in TARGETS:
        copy = models_root(testbed, host, rel) / "m" / "weights.bin"
        assert copy.read_bytes() == (model / "weights.bin").read_bytes()


def test_honest_nested_links_leaving_the_model_are_left_out(cluster: Cluster,
                                                            testbed: Testbed,
                                                            rel: str) -> None:
    model = models_root(testbed, "node-06", rel) / "m"
    deep = model / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (model / "w.bin").write_bytes(os.urandom(32 * 1024))
    os.symlink("../../..", deep / "u")
    os.symlink("a/b/c/d/u/../../..", model / "esc")
    os.symlink("a/b/c/d/u/..", model / "inside")  # u -> a, a/.. -> the model root
    _chown_tree(testbed.host("node-06").app_dir)
    result = sync_models(cluster, source_node="node-06",
                         targets=cluster.select(["node-04", "node-05"]), models_path=rel,
                         model="m")
    assert result.exit_code() == 0, result.to_json()
    assert any("m/esc" in w and "outside the model" in w for w in result.warnings)
    for host in ("node-04", "node-05"):
        copy = models_root(testbed, host, rel) / "m"
        assert not os.path.lexists(copy / "esc")
        assert os.readlink(copy / "a" / "b" / "c" / "d" / "u") == "../../.."
        assert os.readlink(copy / "inside") == "a/b/c/d/u/.."
        for root, dirs, files in os.walk(copy):
            for name in dirs + files:
                full = Path(root, name)
                if full.is_symlink():
                    resolved = Path(os.path.realpath(full))
                    assert resolved == copy.resolve() or copy.resolve() in resolved.parents


@pytest.mark.parametrize("relay", [False, True], ids=["chain", "relay"])
def test_honest_hard_links_and_odd_names_pass_the_checks(cluster: Cluster, testbed: Testbed,
                                                         rel: str, relay: bool) -> None:
    """Two names of one file (sent as two files), names tar would read as patterns or
    escapes: an honest model is not taken for a hostile one."""
    model = models_root(testbed, "node-06", rel) / "m"
    (model / "d[1]").mkdir(parents=True)
    (model / "w.bin").write_bytes(os.urandom(40 * 1024))
    os.link(model / "w.bin", model / "d[1]" / "same.bin")
    (model / "st*r").write_text("star\n")
    (model / "back\\slash").write_text("backslash\n")
    _chown_tree(testbed.host("node-06").app_dir)
    result = sync_models(cluster, source_node="node-06",
                         targets=cluster.select(["node-0[2-4]"]), models_path=rel, model="m",
                         relay=relay)
    assert result.exit_code() == 0, result.to_json()
    for host in ("node-02", "node-03", "node-04"):
        copy = models_root(testbed, host, rel) / "m"
        assert sorted(p.name for p in copy.iterdir()) == ["back\\slash", "d[1]", "st*r",
                                                          "w.bin"]
        assert (copy / "d[1]" / "same.bin").read_bytes() == (model / "w.bin").read_bytes()
        assert (copy / "st*r").read_text() == "star\n"


# ---------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("rel", "bad"), [
    ("a/b", False), ("", False), ("odd name \udcff", False),
    ("/etc", True), ("a/../b", True), ("..", True), ("a//b", True), ("a/", True),
    ("./a", True), ("a\nb", True), ("a\0b", True), ("a\x1bb", True),
])
def test_name_problem(rel: str, bad: bool) -> None:
    assert (name_problem(rel) is not None) is bad


def test_links_resolved_with_every_link_of_the_tree() -> None:
    links = {"a/b/c/d/u": "../../..", "esc": "a/b/c/d/u/../../..", "ok": "a/b/c/d/u/..",
             "loop1": "loop2", "loop2": "loop1", "abs": "/etc", "via": "esc/x",
             "chain": "ok/a", "dangling": "nope/.."}
    inside = {name: link_resolves_inside(name, links) for name in links}
    assert inside == {"a/b/c/d/u": True, "esc": False, "ok": True, "loop1": False,
                      "loop2": False, "abs": False, "via": False, "chain": True,
                      "dangling": True}
    # The text alone says "inside" for esc: the old check.
    assert link_is_safe("esc", "a/b/c/d/u/../../..") is True  # u unknown: taken as a dir
    assert link_is_safe("esc", "a/b/c/d/u/../../..", links) is False


def test_listing_problems() -> None:
    def st(kind: str) -> Stat:
        return Stat(kind, 0, 1, ("0", "0", "0", "0"), "")

    honest = {"": st("d"), "a": st("d"), "a/f": st("f"), "l": st("l")}
    assert listing_problem("m", honest) is None
    assert "'..'" in (listing_problem("m", {**honest, "x/../../y": st("d")}) or "")
    assert "not a directory" in (listing_problem("m", {**honest, "l/f": st("f")}) or "")
    assert "not listed" in (listing_problem("m", {**honest, "q/f": st("f")}) or "")
    assert listing_problem("", honest) is not None
    assert listing_problem("m\n", honest) is not None


def _tar_bytes(members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_guard_passes_the_listed_files_in_chunks_of_any_size(fmt: int) -> None:
    long = "./m/" + "d" * 120 + "/w.bin"  # a GNU long name, or a ustar prefix
    data = _tar_bytes([("./m/a", b"x" * 700), (long, b"y" * 3)], fmt)
    allowed = {b"./m/a": 700, long.encode(): 3}
    for size in (1, 7, 512, 1 << 20):
        guard = TarGuard(allowed)
        assert all(guard.feed(data[i:i + size]) is None for i in range(0, len(data), size))
        assert guard.members == 2


def test_tar_guard_stops_at_the_first_member_not_allowed() -> None:
    ok = {b"./m/a": 3}
    assert TarGuard(ok).feed(_tar_bytes([("./m/b", b"abc")])) == \
        "./m/b is not a file this transfer asked for"
    assert "manifest says 3" in (TarGuard(ok).feed(_tar_bytes([("./m/a", b"abcd")])) or "")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("./m/a")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../.."
        tar.addfile(info)
    assert "not a regular file" in (TarGuard(ok).feed(buf.getvalue()) or "")
    broken = bytearray(_tar_bytes([("./m/a", b"abc")]))
    broken[0:1] = b"X"  # the checksum no longer matches
    assert TarGuard(ok).feed(bytes(broken)) == "a tar header with a bad checksum"
    # Hidden after end-of-archive zeros: still checked.
    hidden = bytes(1024) + _tar_bytes([("./m/evil", b"abc")])
    assert "not a file this transfer asked for" in (TarGuard(ok).feed(hidden) or "")
