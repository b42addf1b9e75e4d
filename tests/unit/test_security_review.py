"""Attacks from the #15 security review that need no host: each test is an attack that once
worked, kept so it never works again.

- `cluster fetch`: a node that sends its files mode 0777 left world-writable files on this
  machine (the extractor set the node's bits as they came, past the user's umask).
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from skeleton_app.ops.fetch_extract import NodeTree, TarExtractor, open_node_dir, process_umask


def _tar(name: str, data: bytes, mode: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.mode, info.size = mode, len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_the_umask_is_read_without_being_changed() -> None:
    old = os.umask(0o027)
    try:
        assert process_umask() == 0o027
        assert os.umask(0o027) == 0o027  # unchanged by the read
    finally:
        os.umask(old)


@pytest.mark.parametrize(("sent", "umask", "kept"), [
    (0o777, 0o022, 0o755), (0o666, 0o022, 0o644), (0o6777, 0o077, 0o700),
    (0o640, 0o022, 0o640), (0o775, 0o002, 0o775),
])
def test_a_node_cannot_leave_files_here_more_open_than_the_umask(
        tmp_path: Path, sent: int, umask: int, kept: int) -> None:
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    node_fd = open_node_dir(root_fd, "node-01")
    tree = NodeTree(node_fd)
    try:
        ex = TarExtractor(tree, ["app"], umask=umask)
        ex.feed(_tar("app", b"#!/bin/sh\n", sent))
        ex.close()
    finally:
        tree.close()
        os.close(node_fd)
        os.close(root_fd)
    assert stat.S_IMODE((tmp_path / "node-01" / "app").stat().st_mode) == kept
