"""The web page's token: read once from a file only its owner can read (like an ssh key),
compared in constant time on every request, and the rule of which binds need one.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import stat
from dataclasses import dataclass

from skeleton_app.errors import UsageError

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_\-.~+/=]{16,256}")
LOOPBACK_NAMES = ("localhost",)


def is_loopback(bind: str) -> bool:
    """Whether `bind` (an address or `localhost`) reaches this machine only."""
    if bind in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token_file(path: str) -> str:
    """The token in `path`: a regular file (never followed through a link) that no one but
    its owner may read or write (mode 0600 or 0400), holding 16..256 characters of
    [A-Za-z0-9_-.~+/=]. UsageError (exit 2) saying what is wrong, otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY)
    except OSError as exc:
        raise UsageError(f"--token-file {path}: cannot open: {exc.strerror}") from None
    with os.fdopen(fd) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"--token-file {path}: not a regular file")
        if st.st_mode & 0o077:
            raise UsageError(f"--token-file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets"
                             " others read or write it: chmod 600 it, as for an ssh key")
        if st.st_uid != os.getuid():
            raise UsageError(f"--token-file {path}: owned by another user")
        text = fh.read(1024).strip()
    if not TOKEN_PATTERN.fullmatch(text):
        raise UsageError(f"--token-file {path}: expected one token of 16 to 256 characters"
                         " (letters, digits, _-.~+/=), e.g. from `openssl rand -hex 24`")
    return text


@dataclass(frozen=True, slots=True)
class Access:
    """Who may read the page: everyone on a loopback bind without a token, else only the
    holders of `token`. `host_names` are the Host headers a tokenless server accepts (a
    loopback page must not be readable through DNS rebinding by a web site)."""

    token: str | None
    host_names: frozenset[str] = frozenset()

    @classmethod
    def for_bind(cls, bind: str, token_file: str | None) -> Access:
        if token_file is None:
            if not is_loopback(bind):
                raise UsageError(f"--bind {bind} is not a loopback address: it needs"
                                 " --token-file (a file of mode 0600 holding the token)")
            return cls(None, frozenset({"localhost", "127.0.0.1", "::1", bind.strip("[]")}))
        return cls(read_token_file(token_file))

    def allows(self, offered: str | None, host: str | None) -> bool:
        """A request with this token (cookie, header or query) and Host header may read."""
        if self.token is None:
            return host is not None and _host_name(host) in self.host_names
        if offered is None:
            return False
        # Constant-time: the comparison must not leak the token byte by byte.
        return hmac.compare_digest(offered.encode("utf-8", "replace"),
                                   self.token.encode())


def _host_name(host: str) -> str:
    """The name of a Host header without its port: `[::1]:8780` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host
