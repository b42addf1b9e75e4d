"""Names and symlinks that another machine sent us: checked before anything is created.

A node's listing is untrusted input (a compromised source can report any name and any link
target, whatever is really on its disk). Nothing it names may lead outside the directory it
is copied into, so:

* a name is a relative path of plain components: no leading "/", no "", "." or ".."
  component, no NUL, newline or other control character (C1 controls included);
* a symlink is kept only if it resolves inside the tree, resolved as the kernel would resolve
  it on the receiving side: component by component from the link's own directory, following
  every symlink of the tree on the way (`a/b/c/d/u -> ../../..` then
  `esc -> a/b/c/d/u/../../..` leaves the tree although each target, read as text, does not).

    name_problem("a/../../x")                  -> "a '..' component"
    link_resolves_inside("esc", links)         -> False
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

__all__ = ["MAX_LINK_HOPS", "link_resolves_inside", "name_problem", "resolve_in_tree"]

# The kernel's own limit on symlinks followed in one lookup (40 on Linux): a loop is refused
# by the receiver's kernel too, so refusing it here loses nothing.
MAX_LINK_HOPS = 40
_MAX_NAME_BYTES = 4095  # PATH_MAX less the NUL


def name_problem(rel: str) -> str | None:
    """Why `rel` (a path relative to a tree's root; "" is the root itself) is unacceptable as
    a name from another machine, or None when it is fine."""
    if rel == "":
        return None
    if rel.startswith("/"):
        return "an absolute path"
    # C1 controls too (U+0080-U+009F: U+009B is CSI to many terminals): such a name would
    # replay escape sequences at every `find` or `tar tv` of the copy.
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in rel):
        return "a control character (NUL, newline, ...)"
    if len(rel.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
        return "a name longer than PATH_MAX"
    for part in rel.split("/"):
        if part == "":
            return "an empty path component"
        if part in (".", ".."):
            return f"a {part!r} component"
    return None


def resolve_in_tree(rel: str, links: Mapping[str, str]) -> tuple[str, ...] | None:
    """Where the symlink at `rel` leads, as components relative to the tree's root, with every
    symlink of the tree (`links`: path -> target) followed; None when the resolution leaves
    the tree, meets an absolute or malformed target, or follows more than MAX_LINK_HOPS links.
    A component the tree does not hold is taken as written (the receiver's kernel would stop
    there with ENOENT: assuming it exists can only refuse more)."""
    cur = rel.split("/")[:-1]
    pending: deque[str] = deque()
    hops = 0

    def follow(target: str) -> bool:
        nonlocal hops
        hops += 1
        if (hops > MAX_LINK_HOPS or not target or target.startswith("/")
                or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)):
            return False
        pending.extendleft(reversed(target.split("/")))
        return True

    if not follow(links.get(rel, "")):
        return None
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not cur:
                return None  # above the root
            cur.pop()
            continue
        path = "/".join([*cur, part])
        target = links.get(path)
        if target is None:
            cur.append(part)
        elif not follow(target):
            return None
    return tuple(cur)


def link_resolves_inside(rel: str, links: Mapping[str, str]) -> bool:
    """Whether the symlink at `rel` (one of `links`) stays inside the tree."""
    return resolve_in_tree(rel, links) is not None
