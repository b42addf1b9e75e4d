"""Whether stdout's reader went away (`skeleton ... | head -1`), for the exit code.

A write into a closed pipe raises BrokenPipeError, but not always: a large write that the
pipe took in part (64 KiB) returns that part, and CPython's buffered writer then drops the
EPIPE of the rest (seen under strace: a 460 KB JSON write, exit 0). The write end of a pipe
whose reader has closed it reports POLLERR, which no lost exception can hide.
"""

from __future__ import annotations

import os
import select
import stat


def reader_gone(fd: int = 1) -> bool:
    """`fd` is a pipe whose reader has closed it."""
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)  # POLLERR is reported whatever is asked for
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False
