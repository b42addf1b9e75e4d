"""Secrets in a tree that is about to be pushed: found before anything is sent.

A deploy sends a whole directory to every node. A private key in it (the controller's
`~/.ssh/id_ed25519`, a TLS key, a PuTTY key) would be copied to every machine of the
cluster, so `cluster deploy` refuses such a tree unless the files are excluded or
`--allow-secrets` is given. A file counts as a secret when

* its name is an OpenSSH private key's (`id_` followed by letters, digits, `_` or `-`, no
  extension: `id_rsa`, `id_ed25519_sk`; `id_rsa.pub` and `id_map.py` are not), or
* its first `HEAD_BYTES` hold a PEM/OpenSSH private key header (BEGIN ... PRIVATE KEY,
  unencrypted, encrypted, RSA, EC, DSA, OpenSSH) or a PuTTY key file's first line, or
* it holds a database DSN with a password in a setting: a line `dsn: ...` (config.yaml's
  `registry.dsn`), `SKELETON_DATABASE_URL=...` or `DATABASE_URL=...` whose value has
  `user:PASSWORD@` or `password=`. That is the operator's DSN, with rights on every registry
  row: deployed, it would hand every node the power to rewrite the others' rows. Nodes get
  their own role instead (`skeleton nodes credentials ID --install`).

Key files start with their header, so the head is enough; a config-like file (`.yaml`,
`.yml`, `.env`, `.conf`, `.ini`, `.toml`, `.cfg`) is read up to CONFIG_BYTES (config.yaml's
own size limit), as its registry section may come late. The tree walk that digests the
deploy (skeleton_app.transfers.tree) applies this rule to every file it sends and caches the verdict
with the file's hash (same key: size, mtime, ctime, inode, device), so the check costs a
no-change redeploy nothing: one walk, no file read. Separate walks cost 50 ms more for 2,000
files here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from skeleton_app.errors import UsageError

HEAD_BYTES = 8192
CONFIG_BYTES = 1 << 20
SHOWN = 5  # file names in the refusal; the rest are counted

# Written so that this file does not match itself (it is deployed with the project).
_HEADER_RE = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----|PuTTY-User-Key-File-[0-9]+:")
_NAME_RE = re.compile(r"id_[A-Za-z0-9_-]+")
# A setting named dsn / SKELETON_DATABASE_URL / DATABASE_URL (YAML, flow style, shell, .env)
# whose value is a URI with `user:PW@` or a key=value DSN with `password=` (this comment is
# worded so that the file does not match itself). A DSN without a password (peer auth,
# ~/.pgpass) is fine.
_DSN_PASSWORD_RE = re.compile(
    rb"(?<![A-Za-z0-9_])(?:dsn|SKELETON_DATABASE_URL|DATABASE_URL)[\"']?[ \t]*[:=][ \t]*[\"']?"
    rb"(?:[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:\"']*:[^@\s\"']+@"
    rb"|[^\n]*?(?<![A-Za-z0-9_])password[ \t]*=[ \t]*[^\s\"'])",
    re.IGNORECASE)
_CONFIG_SUFFIXES = (".yaml", ".yml", ".env", ".conf", ".ini", ".toml", ".cfg")


@dataclass(frozen=True, slots=True)
class SecretScan:
    """The files of a tree that hold private key material (relative paths, walk order):
    `SecretScan(tree_digest(root, exclude).secrets)`."""

    files: tuple[str, ...]
    passwords: tuple[str, ...] = ()  # those of `files` that hold a database password

    @classmethod
    def of(cls, root: str, files: tuple[str, ...]) -> SecretScan:
        """`files` (relative to `root`, as the tree walk flagged them), each told apart as a
        key or a database password: read again, on the refusal path only."""
        passwords = tuple(f for f in files
                          if _holds_dsn_password(_head(os.path.join(root, f), f)))
        return cls(files, passwords)

    def refusal(self, *, what: str = "deploy") -> str:
        """The one-line refusal: the first few files, how many more, and the ways out."""
        keys = tuple(f for f in self.files if f not in self.passwords)
        parts = []
        if keys:
            parts.append(f"private key material: {_shown(keys)}")
        if self.passwords:
            parts.append(f"a database password: {_shown(self.passwords)}")
        advice = "exclude it in deploy.exclude, or pass --allow-secrets"
        if self.passwords:
            advice = ("keep the DSN on the controller, in SKELETON_DATABASE_URL or a config file"
                      " outside the tree (nodes use their own: `skeleton nodes credentials ID"
                      " --install`); or " + advice)
        return f"{what}: refusing to send {'; and '.join(parts)} ({advice})"


def _shown(files: tuple[str, ...]) -> str:
    """The first few names, then how many more."""
    shown = ", ".join(files[:SHOWN])
    more = len(files) - SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def looks_secret(name: str, head: bytes) -> bool:
    """The rule above for one file: its base name and its first bytes."""
    return (bool(_NAME_RE.fullmatch(name)) or _HEADER_RE.search(head) is not None
            or _holds_dsn_password(head))


def _holds_dsn_password(head: bytes) -> bool:
    return _DSN_PASSWORD_RE.search(head) is not None


def is_secret_file(name: str, path: str) -> bool:
    """The rule for one file on disk (its first HEAD_BYTES, or CONFIG_BYTES for a
    config-like name, are read). UsageError when it cannot be read: rsync could not send
    it either."""
    return looks_secret(name, _head(path, name))


def _head(path: str, name: str) -> bytes:
    size = CONFIG_BYTES if _is_config_name(os.path.basename(name)) else HEAD_BYTES
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _is_config_name(name: str) -> bool:
    return name.endswith(_CONFIG_SUFFIXES) or name.startswith(".env")
