"""Private key material in a tree that is about to be pushed: found before anything is sent.

A deploy sends a whole directory to every node. A private key in it (the controller's
`~/.ssh/id_ed25519`, a TLS key, a PuTTY key) would be copied to every machine of the
cluster, so `cluster deploy` refuses such a tree unless the files are excluded or
`--allow-secrets` is given. A file counts as a secret when

* its name is an OpenSSH private key's (`id_` followed by letters, digits, `_` or `-`, no
  extension: `id_rsa`, `id_ed25519_sk`; `id_rsa.pub` and `id_map.py` are not), or
* its first `HEAD_BYTES` hold a PEM/OpenSSH private key header (BEGIN ... PRIVATE KEY,
  unencrypted, encrypted, RSA, EC, DSA, OpenSSH) or a PuTTY key file's first line.

Key files start with their header, so the head is enough. The tree walk that digests the
deploy (skeleton_app.tree) applies this rule to every file it sends and caches the verdict
with the file's hash (same key: size, mtime, ctime, inode, device), so the check costs a
no-change redeploy nothing: one walk, no file read. Separate walks cost 50 ms more for 2,000
files here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from skeleton_app.errors import UsageError

HEAD_BYTES = 8192
SHOWN = 5  # file names in the refusal; the rest are counted

# Written so that this file does not match itself (it is deployed with the project).
_HEADER_RE = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----|PuTTY-User-Key-File-[0-9]+:")
_NAME_RE = re.compile(r"id_[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class SecretScan:
    """The files of a tree that hold private key material (relative paths, walk order):
    `SecretScan(tree_digest(root, exclude).secrets)`."""

    files: tuple[str, ...]

    def refusal(self, *, what: str = "deploy") -> str:
        """The one-line refusal: the first few files, how many more, and the two ways out."""
        shown = ", ".join(self.files[:SHOWN])
        more = len(self.files) - SHOWN
        if more > 0:
            shown += f" and {more} more"
        return (f"{what}: refusing to send private key material: {shown}"
                " (exclude it in deploy.exclude, or pass --allow-secrets)")


def looks_secret(name: str, head: bytes) -> bool:
    """The rule above for one file: its base name and its first bytes."""
    return bool(_NAME_RE.fullmatch(name)) or _HEADER_RE.search(head) is not None


def is_secret_file(name: str, path: str) -> bool:
    """The rule for one file on disk (its first HEAD_BYTES are read). UsageError when it
    cannot be read: rsync could not send it either."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return looks_secret(name, head)
