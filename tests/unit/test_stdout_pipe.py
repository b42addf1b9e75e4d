"""app/stdout_pipe.reader_gone: a pipe whose reader closed it, and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

from skeleton_app.app.stdout_pipe import reader_gone


def test_a_pipe_whose_reader_closed_it_and_nothing_else(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        assert not reader_gone(w)  # open at both ends
        os.close(r)
        assert reader_gone(w)
    finally:
        os.close(w)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        assert not reader_gone(fd)  # a file is never "gone"
    finally:
        os.close(fd)
    assert not reader_gone(9999)  # not an open fd: no answer, no exception
