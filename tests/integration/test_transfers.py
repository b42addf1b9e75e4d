"""The rsync wrapper over real ssh to the testbed: paths with spaces, quotes and `$(...)`,
identity files with spaces, strict host keys, Fabric connections. Its pure parts (argv and -e
quoting, output parsers, the exclude matcher) are tested in tests/unit/test_transfers_unit.py."""

from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path

from fabric import Connection

from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.errors import NodeErrorKind
from skeleton_app.testing.testbed import Testbed
from skeleton_app.transfers import classify_failure, rsync

# ------------------------------------------------------------------ real transfers


def _home(testbed: Testbed, node: str) -> Path:
    return testbed.host(node).home


def test_paths_with_spaces_quotes_and_dollar(testbed: Testbed, settings: Settings,
                                             tmp_path: Path) -> None:
    # Relative: if a shell ever ran it, it would land in the remote user's home.
    canary = f"skeleton-pwned-{uuid.uuid4().hex}"
    src = tmp_path / "source dir's \"x\""
    (src / "sub dir").mkdir(parents=True)
    (src / "sub dir" / "file with 'quote'").write_text("payload\n")
    (src / "$(touch canary)").write_text("literal\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o750)
    os.utime(src / "run.sh", (1_600_000_000, 1_600_000_000))
    dest_name = f"t-transfer it's \"q\" $(touch {canary}) ;x"
    node = settings.nodes[0]
    result = rsync(node, f"{src}/", f"/home/skeleton/{dest_name}/", settings=settings.ssh)
    assert result.ok, result.error_message()
    landed = _home(testbed, node.id) / dest_name
    assert (landed / "sub dir" / "file with 'quote'").read_text() == "payload\n"
    assert (landed / "$(touch canary)").read_text() == "literal\n"
    st = (landed / "run.sh").stat()
    assert st.st_mode & 0o777 == 0o750  # permissions kept
    assert int(st.st_mtime) == 1_600_000_000  # times kept
    assert not (_home(testbed, node.id) / canary).exists()
    paths = {c.path for c in result.changes}
    assert "sub dir/file with 'quote'" in paths and "run.sh" in paths
    assert result.stats is not None and result.stats.files_transferred == 3
    assert result.bytes_sent > 0

    again = rsync(node, f"{src}/", f"/home/skeleton/{dest_name}/", settings=settings.ssh)
    assert again.ok and again.files_changed == 0  # only changed files move


def test_identity_file_with_spaces_and_fabric_connections(testbed: Testbed, settings: Settings,
                                                          tmp_path: Path) -> None:
    keydir = tmp_path / "key dir's"
    keydir.mkdir()
    key = keydir / "id ed25519"
    key.write_bytes(testbed.identity_file.read_bytes())
    key.chmod(0o600)
    ssh = dataclasses.replace(settings.ssh, identity_file=str(key))
    node = dataclasses.replace(settings.nodes[1], identity_file=None)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("one\n")
    r = rsync(node, f"{src}/", "/home/skeleton/t-identity/", settings=ssh)
    assert r.ok, r.error_message()
    assert (_home(testbed, node.id) / "t-identity" / "f").read_text() == "one\n"

    # Our pooled Fabric connection, and a plain Fabric Connection (patchwork's call shape).
    with Cluster(settings) as cluster:
        conn = cluster.connection(node.id)
        (src / "f").write_text("two\n")
        r = rsync(conn, f"{src}/", "/home/skeleton/t-identity/")
        assert r.ok, r.error_message()
    assert (_home(testbed, node.id) / "t-identity" / "f").read_text() == "two\n"
    plain = Connection(node.host, user=node.user, port=node.port,
                       connect_kwargs={"key_filename": [str(key)]})
    (src / "f").write_text("three\n")
    r = rsync(plain, f"{src}/", "/home/skeleton/t-identity/", settings=settings.ssh,
              exclude=["nothing"], delete=True)
    assert r.ok, r.error_message()
    assert (_home(testbed, node.id) / "t-identity" / "f").read_text() == "three\n"


def test_unknown_host_key_is_refused(testbed: Testbed, settings: Settings,
                                     tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ssh = dataclasses.replace(settings.ssh, known_hosts=str(empty))
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    r = rsync(settings.nodes[2], f"{src}/", "/home/skeleton/t-hostkey/", settings=ssh)
    assert not r.ok
    kind, message = classify_failure(r, settings.nodes[2].id)
    assert kind is NodeErrorKind.HOSTKEY_UNKNOWN, message
    assert not (_home(testbed, settings.nodes[2].id) / "t-hostkey").exists()



def test_same_size_rewrite_in_the_same_second_is_sent(testbed: Testbed, settings: Settings,
                                                      tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    second = 1_700_000_000 * 10**9
    (src / "f").write_text("old!")
    os.utime(src / "f", ns=(second + 1000, second + 1000))
    node = settings.nodes[3]
    assert rsync(node, f"{src}/", "/home/skeleton/t-nsec/", settings=settings.ssh).ok
    (src / "f").write_text("new!")
    os.utime(src / "f", ns=(second + 2000, second + 2000))
    r = rsync(node, f"{src}/", "/home/skeleton/t-nsec/", settings=settings.ssh)
    assert r.ok and [c.path for c in r.changes if c.content_sent] == ["f"]
    assert (_home(testbed, node.id) / "t-nsec" / "f").read_text() == "new!"
