"""What `exec` takes from the controller, for every front end (`skeleton cluster exec`,
`inv exec`, `fab run`): the command's words, `--stdin`'s bytes and the sudo password.

- words: joined with single spaces, as ssh and pdsh do (`-- ls /tmp '|' wc -l` is the node
  shell's `ls /tmp | wc -l`; quote a word to keep its spaces or shell characters together).
- `--stdin`: read once, whole, before anything runs; at most STDIN_LIMIT bytes; a terminal
  is refused (the command would wait for Ctrl-D on every node).
- the sudo password: from the file named by SKELETON_SUDO_PASSWORD_FILE (refused when other
  users may read or write it, as ssh refuses such a private key), else asked once on
  the controlling terminal (/dev/tty, so `--stdin`'s pipe is left alone, as sudo and ssh do).
  Neither: a UsageError (exit 2) naming the nodes that need it.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from collections.abc import Mapping, Sequence
from typing import BinaryIO

from skeleton_app.errors import UsageError
from skeleton_app.nodes import fold
from skeleton_app.ops.sudo import PasswordSource

STDIN_LIMIT = 64 * 1024 * 1024  # bytes of --stdin held in memory and sent to every node
PASSWORD_FILE_ENV = "SKELETON_SUDO_PASSWORD_FILE"
_PASSWORD_FILE_LIMIT = 4096


def join_words(words: Sequence[str]) -> str:
    """The command line the node's shell gets: the words joined with spaces (ssh, pdsh)."""
    command = " ".join(words)
    if not command.strip():
        raise UsageError("no command given: skeleton cluster exec [OPTIONS] -- COMMAND...")
    return command


def read_stdin(stream: BinaryIO | None = None, *, limit: int = STDIN_LIMIT) -> bytes:
    """All of the controller's stdin for `--stdin`; UsageError (exit 2) if it is a terminal
    or holds more than `limit` bytes, and when there is no stdin to read (`<&-`: Python then
    has no sys.stdin at all) or it cannot be read."""
    if stream is None:
        if sys.stdin is None:
            raise UsageError("--stdin: stdin is closed (pipe or redirect the input)")
        stream = sys.stdin.buffer
    try:
        interactive = stream.isatty()
    except ValueError:  # closed
        raise UsageError("--stdin: stdin is closed (pipe or redirect the input)") from None
    if interactive:
        raise UsageError("--stdin: stdin is a terminal (pipe or redirect the input)")
    try:
        data = stream.read(limit + 1)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"--stdin: cannot read stdin: {reason}") from None
    if len(data) > limit:
        raise UsageError(f"--stdin: more than {limit} bytes on stdin (the limit: it is held"
                         " in memory and sent to every node)")
    return data


def _read_password_file(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            # As ssh does for a private key: a password file others may read (or write) is
            # refused, not used. A pipe (`<(pass show sudo)`) is the user's own: no mode.
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                raise UsageError(
                    f"{PASSWORD_FILE_ENV}: {path} is accessible by other users (mode"
                    f" {stat.S_IMODE(st.st_mode):04o}): chmod 600 it (not used)")
            raw = fh.read(_PASSWORD_FILE_LIMIT + 1)
    except OSError as exc:
        raise UsageError(f"{PASSWORD_FILE_ENV}: cannot read {path}: {exc.strerror}") from None
    if len(raw) > _PASSWORD_FILE_LIMIT:
        raise UsageError(f"{PASSWORD_FILE_ENV}: {path} is larger than a password")
    text = raw.decode("utf-8", "replace")
    text = text[:-1] if text.endswith("\n") else text  # one trailing newline, as echo writes
    text = text[:-1] if text.endswith("\r") else text
    if not text:
        raise UsageError(f"{PASSWORD_FILE_ENV}: {path} is empty")
    if "\n" in text:
        raise UsageError(f"{PASSWORD_FILE_ENV}: {path} holds more than one line")
    return text


def _has_terminal() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def sudo_password_source(env: Mapping[str, str] | None = None) -> PasswordSource:
    """The `PasswordSource` of `--sudo`: asked at most once, and only when a node needs it."""
    env = os.environ if env is None else env
    cached: list[str] = []

    def source(nodes: Sequence[str]) -> str:
        if cached:
            return cached[0]
        path = env.get(PASSWORD_FILE_ENV)
        if path:
            password = _read_password_file(path)
        elif _has_terminal():
            try:
                password = getpass.getpass(f"[sudo] password on {fold(list(nodes))}: ")
            except EOFError:
                raise UsageError("--sudo: no password given") from None
        else:
            raise UsageError(
                f"--sudo: {fold(list(nodes))} need a sudo password and there is no terminal"
                f" to ask it on: set {PASSWORD_FILE_ENV} to a file that holds it")
        cached.append(password)
        return password

    return source
