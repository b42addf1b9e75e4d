"""`cluster sync-models` against real hosts: node-to-node copies, integrity, faults.

Every test uses a models directory of its own (a unique name, with a space in it), so tests
never see each other's models on the shared session testbed. Tests that break a host either
restore it in `finally` or use a testbed of their own (make_testbed).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import load_config
from skeleton_app.errors import NodeErrorKind, UsageError
from skeleton_app.ops import sync_models as mops
from skeleton_app.ops.sync_models import Entry, Manifest, SyncProgress, sync_models
from skeleton_app.ops.sync_models.holders import Holders
from skeleton_app.ops.sync_models.manifest import link_is_safe
from skeleton_app.ops.sync_models.paths import check_model_name
from skeleton_app.testing import testbed as tb
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import chown_to_user as _chown_tree
from tests.support.helpers import config_variant, skeleton
from tests.support.models import MIB, expected_tree, leftovers, make_model, models_root, tree

# ---------------------------------------------------------------------------- helpers


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def rel() -> str:
    """A models directory of this test's own, relative to the app dir, with a space."""
    return f"models {uuid.uuid4().hex[:8]}"


@pytest.fixture
def cluster(testbed: Testbed) -> Iterator[Cluster]:
    with Cluster(load_config(testbed.config_path, env={})) as c:
        yield c


# ---------------------------------------------------------------------------- pure parts


def test_manifest_round_trip_and_digest() -> None:
    entries = [Entry("", "d"), Entry("a b", "f", 3, "00" * 32), Entry("lnk", "l", target="a b"),
               Entry("odd\udcff", "f", 1, "11" * 32)]
    man = Manifest.build("m", "dir", entries)
    again, stat = Manifest.from_json("m", man.to_json({"m/a b": {"key": [], "sha256": "x"}}))
    assert again == man and stat == {"m/a b": {"key": [], "sha256": "x"}}
    other = Manifest.build("renamed", "dir", reversed(entries))
    assert other.digest == man.digest  # the name and the order do not change the digest
    changed = Manifest.build("m", "dir", [*entries[:1], Entry("a b", "f", 3, "22" * 32)])
    assert changed.digest != man.digest
    tampered = man.to_json().replace(b'"a b","f",3', b'"a b","f",4')
    assert Manifest.from_json("m", tampered) == (None, {})
    assert Manifest.from_json("m", b"not json") == (None, {})


@pytest.mark.parametrize(("rel", "target", "safe"), [
    ("a", "b", True), ("d/a", "../b", True), ("d/a", "..", True), ("a", "../b", False),
    ("a", "/etc/passwd", False), ("d/e/a", "../../../x", False), ("a", "", False),
])
def test_symlink_safety(rel: str, target: str, safe: bool) -> None:
    assert link_is_safe(rel, target) is safe


def test_holders_cap_streams_per_sender() -> None:
    from skeleton_app.nodes import Node

    holders = Holders(cap=2)
    src, other = Node(id="src", host="10.0.0.1"), Node(id="other", host="10.0.0.2")
    holders.add(src)
    assert holders.acquire(lambda: True) == src
    assert holders.acquire(lambda: True) == src
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(holders.acquire(lambda: True)))
    waiter.start()
    time.sleep(0.3)
    assert got == []  # src serves 2 streams already: the third waits
    holders.add(other)  # a target finished: it becomes a sender
    waiter.join(5)
    assert got == [other]
    holders.release(src)
    assert holders.acquire(lambda: True) == src  # least loaded first
    holders.remove(src)
    holders.remove(other)
    assert holders.acquire(lambda: True) is None  # nobody holds the model any more


def test_models_dir_rules(cluster: Cluster) -> None:
    node = cluster.node("node-01")
    assert mops.models_dir(cluster, node, None) == "/home/skeleton/app/models"
    assert mops.models_dir(cluster, node, "my models") == "/home/skeleton/app/my models"
    assert mops.models_dir(cluster, node, "/srv/models/") == "/srv/models"
    for bad in ("../elsewhere", "a/../../b", "/"):
        with pytest.raises(UsageError):
            mops.models_dir(cluster, node, bad)
    for name in ("../x", "a/b", ".hidden", "", "."):
        with pytest.raises(UsageError):
            check_model_name(name)


# ---------------------------------------------------------------------------- happy paths


def test_sync_cli_copies_exactly_then_skips_up_to_date(testbed: Testbed, rel: str) -> None:
    model = make_model(testbed, "node-01", rel, "voice en")
    proc = skeleton("cluster", "sync-models", "--source-node", "node-01", "--node",
                    "node-0[1-4]", "--models-path", rel, "--model", "voice en", "--json",
                    config=testbed.config_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    data = json.loads(proc.stdout)
    assert sorted(data["nodes"]) == ["node-02", "node-03", "node-04"]
    assert any("evil" in w and "outside the model" in w for w in data["warnings"])
    want = expected_tree(model)
    for host in ("node-02", "node-03", "node-04"):
        node = data["nodes"][host]["data"]
        assert node["status"] == "synced"
        assert tree(models_root(testbed, host, rel) / "voice en") == want
        root = models_root(testbed, host, rel)
        assert not (root / ".skeleton-staging").exists()
        assert (root / ".skeleton-manifests" / "voice en.json").is_file()
        assert leftovers(testbed, host) == []
    assert leftovers(testbed, "node-01") == []
    # node-05 and node-06 were not selected
    assert not models_root(testbed, "node-05", rel).exists()

    proc = skeleton("cluster", "sync-models", "--source-node", "node-01", "--node",
                    "node-0[1-4]", "--models-path", rel, "--json", config=testbed.config_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {n["data"]["status"] for n in data["nodes"].values()} == {"up-to-date"}


def test_all_models_dirs_and_files_hidden_ignored(cluster: Cluster, testbed: Testbed,
                                                  rel: str) -> None:
    make_model(testbed, "node-02", rel, "stt", size=MIB)
    root = models_root(testbed, "node-02", rel)
    (root / "voice.onnx").write_bytes(os.urandom(MIB + 3))
    (root / ".cache").mkdir()
    (root / ".cache" / "junk").write_text("not a model")
    _chown_tree(root)
    events: list[SyncProgress] = []
    result = sync_models(cluster, source_node="node-02", targets=cluster.select(["node-05"]),
                         models_path=rel, on_progress=events.append)
    assert result.exit_code() == 0, result.to_json()
    assert result["node-05"].outcome.models == ("stt", "voice.onnx")
    target = models_root(testbed, "node-05", rel)
    assert (target / "voice.onnx").read_bytes() == (root / "voice.onnx").read_bytes()
    assert tree(target / "stt") == expected_tree(root / "stt")
    assert not (target / ".cache").exists()
    assert {e.phase for e in events} >= {"preflight", "done"}
    done = [e for e in events if e.phase == "done"][-1]
    assert done.node == "node-05" and done.done == done.total > 2 * MIB


def test_update_sends_only_changes_and_keeps_unchanged_files(cluster: Cluster,
                                                             testbed: Testbed, rel: str) -> None:
    model = make_model(testbed, "node-01", rel, "m", size=2 * MIB)
    targets = cluster.select(["node-0[2-3]"])
    assert sync_models(cluster, source_node="node-01", targets=targets,
                       models_path=rel).exit_code() == 0
    big = models_root(testbed, "node-02", rel) / "m" / "weights.bin"
    inode = big.stat().st_ino
    # Same size, new content (rsync's size+mtime check would miss it); one file added, one gone.
    vocab = model / "sub dir" / "vocab.txt"
    stat = vocab.stat()
    vocab.write_text("x\ny\nz\n")
    os.utime(vocab, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (model / "added.txt").write_text("new file\n")
    (model / "sub dir" / "config.json").unlink()
    _chown_tree(model)
    result = sync_models(cluster, source_node="node-01", targets=targets, models_path=rel)
    assert result.exit_code() == 0, result.to_json()
    for host in ("node-02", "node-03"):
        assert tree(models_root(testbed, host, rel) / "m") == expected_tree(model)
        assert result[host].outcome.moved == len("x\ny\nz\n") + len("new file\n")
    # The unchanged 2 MiB file was linked into the new copy, not sent again.
    assert big.stat().st_ino == inode


def test_single_target_with_absolute_path_outside_app_dir(cluster: Cluster, testbed: Testbed,
                                                          rel: str) -> None:
    outside = f"/home/skeleton/outside {rel}"
    src = testbed.host("node-03").home / outside.removeprefix("/home/skeleton/") / "tts"
    src.mkdir(parents=True)
    (src / "voice.bin").write_bytes(os.urandom(MIB))
    _chown_tree(testbed.host("node-03").home / outside.removeprefix("/home/skeleton/"))
    result = sync_models(cluster, source_node="node-03", targets=cluster.select(["node-06"]),
                         models_path=outside, model="tts")
    assert result.exit_code() == 0, result.to_json()
    assert result["node-06"].outcome.path == outside
    copy = testbed.host("node-06").home / outside.removeprefix("/home/skeleton/") / "tts"
    assert (copy / "voice.bin").read_bytes() == (src / "voice.bin").read_bytes()
    assert result["node-06"].outcome.via == ("rsync from node-03",)


def test_relay_streams_through_the_controller(cluster: Cluster, testbed: Testbed,
                                              rel: str) -> None:
    """With ssh unusable between nodes, only --relay can work: prove it does."""
    model = make_model(testbed, "node-04", rel, "m", size=MIB)
    hidden = []
    try:
        for host in ("node-04", "node-05", "node-06"):
            tb.hide_command(testbed, host, "/usr/bin/ssh")
            hidden.append(host)
        result = sync_models(cluster, source_node="node-04",
                             targets=cluster.select(["node-0[5-6]"]), models_path=rel,
                             relay=True)
    finally:
        for host in hidden:
            tb.unhide_command(testbed, host, "/usr/bin/ssh")
    assert result.exit_code() == 0, result.to_json()
    for host in ("node-05", "node-06"):
        assert result[host].outcome.via == ("relayed from node-04",)
        assert tree(models_root(testbed, host, rel) / "m") == expected_tree(model)


# ---------------------------------------------------------------------------- integrity


def test_verify_finds_and_repairs_a_corrupted_file(cluster: Cluster, testbed: Testbed,
                                                   rel: str) -> None:
    model = make_model(testbed, "node-01", rel, "m", size=MIB)
    targets = cluster.select(["node-0[2-3]"])
    assert sync_models(cluster, source_node="node-01", targets=targets,
                       models_path=rel).exit_code() == 0
    # Flip one byte in place on node-03; size and mtime stay what they were.
    bad = models_root(testbed, "node-03", rel) / "m" / "weights.bin"
    stat = bad.stat()
    with open(bad, "r+b") as f:
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(bad, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # The default check (sizes + manifest digest) cannot see it, by design.
    quick = sync_models(cluster, source_node="node-01", targets=targets, models_path=rel)
    assert quick["node-03"].outcome.status == "up-to-date"
    checked = sync_models(cluster, source_node="node-01", targets=targets, models_path=rel,
                          verify=True)
    assert checked.exit_code() == 0, checked.to_json()
    assert checked["node-02"].outcome.status == "up-to-date"
    assert checked["node-03"].outcome.status == "repaired"
    assert checked["node-03"].outcome.repaired == ("m/weights.bin",)
    assert bad.read_bytes() == (model / "weights.bin").read_bytes()
    assert checked["node-03"].outcome.moved == MIB  # only that file moved


def test_interrupted_staging_is_resumed_and_strays_never_published(
        cluster: Cluster, testbed: Testbed, rel: str) -> None:
    """A staging directory as an interrupted run leaves it: the manifest it was built for,
    half of the big file, and a file that manifest does not have."""
    model = make_model(testbed, "node-01", rel, "m", size=2 * MIB)
    target = cluster.select(["node-05"])
    root = models_root(testbed, "node-05", rel)
    assert sync_models(cluster, source_node="node-01", targets=target, models_path=rel,
                       model="m").exit_code() == 0
    stage = root / ".skeleton-staging"
    (stage / ".manifests").mkdir(parents=True)
    (root / ".skeleton-manifests" / "m.json").rename(stage / ".manifests" / "m.json")
    shutil.rmtree(root / "m")
    (stage / "m" / "sub dir").mkdir(parents=True)
    (stage / "m" / "weights.bin").write_bytes((model / "weights.bin").read_bytes()[:MIB + 1000])
    (stage / "m" / "stray.txt").write_text("not in the manifest")
    _chown_tree(root)

    result = sync_models(cluster, source_node="node-01", targets=target, models_path=rel,
                         model="m")
    assert result.exit_code() == 0, result.to_json()
    assert tree(root / "m") == expected_tree(model)  # no stray.txt
    assert result["node-05"].outcome.moved < MIB  # the first MiB was not sent again
    assert not stage.exists()


# ---------------------------------------------------------------------------- bad input, faults


def test_bad_paths_and_names_exit_2_nothing_started(testbed: Testbed, rel: str) -> None:
    make_model(testbed, "node-01", rel, "m", size=1000)
    cases = [
        (["--models-path", "../outside"], "outside the app dir"),
        (["--models-path", rel, "--model", "../m"], "--model"),
        (["--models-path", rel, "--model", "nope"], "not found"),
        (["--models-path", "no such dir"], "does not exist"),
        (["--source-node", "node-99"], "unknown node"),
    ]
    for extra, message in cases:
        argv = ["cluster", "sync-models", "--node", "node-0[1-2]", *extra]
        if "--source-node" not in extra:
            argv += ["--source-node", "node-01"]
        proc = skeleton(*argv, config=testbed.config_path)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert message in proc.stderr, (extra, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not models_root(testbed, "node-02", rel).exists()


@pytest.mark.parametrize("named", [False, True], ids=["all-models", "named-model"])
def test_source_down_clear_error_nothing_started(testbed: Testbed, rel: str,
                                                 named: bool) -> None:
    """Named, the model's targets are probed while the source is (and start connecting to
    their next peers): a source that turns out to be down still leaves nothing on them."""
    make_model(testbed, "node-06", rel, "m", size=1000)
    tb.stop_sshd(testbed, "node-06")
    try:
        proc = skeleton("cluster", "sync-models", "--source-node", "node-06", "--node",
                        "node-0[4-6]", "--models-path", rel, *(["--model", "m"] if named else []),
                        config=testbed.config_path)
    finally:
        tb.start_sshd(testbed, "node-06")
    assert proc.returncode == 4, proc.stderr
    assert "source node node-06" in proc.stderr and "nothing was transferred" in proc.stderr
    for host in ("node-04", "node-05"):
        assert not models_root(testbed, host, rel).exists()
        assert leftovers(testbed, host) == []


def test_target_disk_too_small_refused_before_transfer(cluster: Cluster, testbed: Testbed,
                                                       rel: str) -> None:
    make_model(testbed, "node-01", rel, "m", size=3 * MIB)
    with tb.small_disk(testbed, "node-04", "2M"):
        result = sync_models(cluster, source_node="node-01",
                             targets=cluster.select(["node-0[3-4]"]), models_path=rel)
        inside = cluster.run("find /home/skeleton/app -mindepth 1", cluster.select(["node-04"]))
    assert result.exit_code() == 1, result.to_json()
    assert result["node-03"].outcome.status == "synced"
    refused = result["node-04"]
    assert refused.outcome.status == "refused"
    assert "not enough free disk space" in refused.stderr and "nothing was transferred" in (
        refused.stderr)
    # Not a byte, not even the models directory, reached the small disk.
    assert inside["node-04"].stdout == ""


def test_target_dies_mid_transfer_others_finish_rerun_resumes(make_testbed: object,
                                                               tmp_path: Path) -> None:
    bed: Testbed = make_testbed(4, rate="20mbit")  # type: ignore[operator]
    config = config_variant(bed, tmp_path / "fast.yaml",
                            ssh={"keepalive": 1, "connect_timeout": 3})
    size = 12 * MIB
    model = make_model(bed, "node-01", "models", "big", size=size)
    result: dict[str, object] = {}
    staged = models_root(bed, "node-03", "models") / ".skeleton-staging" / "big" / "weights.bin"

    with Cluster(load_config(config, env={})) as cluster:
        def run() -> None:
            result["first"] = sync_models(cluster, source_node="node-01",
                                          targets=cluster.select(["node-0[2-4]"]))

        worker = threading.Thread(target=run)
        worker.start()
        try:
            wait_for(lambda: staged.exists() and staged.stat().st_size > 2 * MIB, 60,
                     "node-03 to receive 2 MiB")
            tb.link_down(bed, "node-03")  # the middle of the chain disappears
            worker.join(120)
            assert not worker.is_alive()
        finally:
            tb.link_up(bed, "node-03")
        first = result["first"]
        assert first.exit_code() == 4, first.to_json()  # type: ignore[attr-defined]
        assert first["node-03"].error_kind in (  # type: ignore[index]
            NodeErrorKind.UNREACHABLE, NodeErrorKind.LOST, NodeErrorKind.TIMEOUT)
        for host in ("node-02", "node-04"):
            assert first[host].outcome.status == "synced", first.to_json()  # type: ignore[index,attr-defined]
            assert tree(models_root(bed, host, "models") / "big") == expected_tree(model)
        kept = staged.stat().st_size
        assert kept > 2 * MIB
        # node-03 was offline when the first run cleaned up: its work dir stays (swept once a
        # day old), and its receiver may still wait for a stream that will never come: the
        # next run stops it. Everything else the runs made must go.
        before = {item for item in leftovers(bed, "node-03") if item.startswith("/")}

        second = sync_models(cluster, source_node="node-01",
                             targets=cluster.select(["node-0[2-4]"]))
    assert second.exit_code() == 0, second.to_json()
    assert second["node-03"].outcome.status == "synced"
    assert second["node-02"].outcome.status == "up-to-date"
    assert tree(models_root(bed, "node-03", "models") / "big") == expected_tree(model)
    # Resumed: what node-03 already had was not sent again.
    assert second["node-03"].outcome.moved <= size + 100 - kept
    for host in bed.ids:
        assert set(leftovers(bed, host)) <= (before if host == "node-03" else set())


def test_preauth_resets_are_retried(make_testbed: object, tmp_path: Path) -> None:
    """sshd drops handshakes beyond MaxStartups; the nodes' connections retry them."""
    bed: Testbed = make_testbed(2)  # type: ignore[operator]
    host = bed.host("node-01")
    conf = host.sshd_config.read_text().replace("MaxStartups 200:30:400", "MaxStartups 1:100:1")
    host.sshd_config.write_text(conf)
    tb.stop_sshd(bed, "node-01")
    tb.start_sshd(bed, "node-01")
    model = make_model(bed, "node-01", "models", "m", size=MIB)
    import socket

    with Cluster(load_config(bed.config_path, env={})) as cluster:
        assert cluster.run("true", cluster.nodes).exit_code() == 0  # controller connected
        # Hold node-01's only pre-auth slot: node-02's handshakes to it are dropped ...
        blocker = socket.create_connection((host.ip, 22))
        done = threading.Event()

        def release_after_first_drop() -> None:
            while not done.wait(0.05):
                if "past MaxStartups" in host.sshd_log.read_text():
                    break
            blocker.close()

        releaser = threading.Thread(target=release_after_first_drop)
        releaser.start()
        try:
            result = sync_models(cluster, source_node="node-01",
                                 targets=cluster.select(["node-02"]))
        finally:
            done.set()
            releaser.join(10)
            blocker.close()
    # ... until the slot frees up; the pull then goes through.
    assert result.exit_code() == 0, result.to_json()
    assert tree(models_root(bed, "node-02", "models") / "m") == expected_tree(model)
    assert "past MaxStartups" in host.sshd_log.read_text()
