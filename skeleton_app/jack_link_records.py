"""The JackTrip link records (`skeleton jack link`): what links SHOULD exist, so that `jack
mesh` can compare them with what runs. A value type, the store protocol both stores
implement, and the one check every stored record is read through (a row or a state file is
untrusted input: a bad record is skipped with a warning, never a crash).

Stores: `registry.jack_links.PostgresLinkStore` (table `jack_links`, migration 0006) when a
registry is configured, else `ops.jack.link_file.FileLinkStore` (a 0600 state file on the
controller). A value module beside jack_settings.py: no psycopg, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from skeleton_app.nodes import NODE_ID_RE

_INT_FIELDS = {"channels": (1, 64), "port_offset": (0, 65535), "queue": (1, 4096),
               "buffer_strategy": (0, 4)}


@dataclass(frozen=True, slots=True)
class LinkRecord:
    """One link: JackTrip's hub server on `hub`, its client on `client`, with the settings
    it was made with, when and by whom (`user@host`)."""

    hub: str
    client: str
    channels: int
    port_offset: int
    queue: int
    buffer_strategy: int
    made_at: datetime
    made_by: str

    @property
    def ends(self) -> tuple[str, str]:
        return (self.hub, self.client)

    def joins(self, a: str, b: str) -> bool:
        """Does this link join `a` and `b`, in either direction?"""
        return {self.hub, self.client} == {a, b}

    def same_settings(self, other: LinkRecord) -> bool:
        return (self.hub, self.client, self.channels, self.port_offset, self.queue,
                self.buffer_strategy) == (other.hub, other.client, other.channels,
                                          other.port_offset, other.queue,
                                          other.buffer_strategy)

    def as_dict(self) -> dict[str, Any]:
        return {"hub": self.hub, "client": self.client, "channels": self.channels,
                "port_offset": self.port_offset, "queue": self.queue,
                "buffer_strategy": self.buffer_strategy,
                "made_at": self.made_at.isoformat(), "made_by": self.made_by}


def record_from_mapping(raw: Mapping[str, Any]) -> LinkRecord:
    """A record from a stored row or JSON object; ValueError naming the bad field."""
    ends: list[str] = []
    for key in ("hub", "client"):
        value = raw.get(key)
        if not isinstance(value, str) or not NODE_ID_RE.match(value):
            raise ValueError(f"{key}: not a node id: {str(value)[:80]!r}")
        ends.append(value)
    if ends[0] == ends[1]:
        raise ValueError("hub and client are the same node")
    numbers: dict[str, int] = {}
    for key, (low, high) in _INT_FIELDS.items():
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{key}: expected an integer from {low} to {high}")
        numbers[key] = value
    made_at = raw.get("made_at")
    if isinstance(made_at, str):
        try:
            made_at = datetime.fromisoformat(made_at)
        except ValueError:
            made_at = None
    if not isinstance(made_at, datetime):
        raise ValueError("made_at: expected a timestamp")
    if made_at.tzinfo is None:
        made_at = made_at.replace(tzinfo=UTC)
    made_by = raw.get("made_by")
    if not isinstance(made_by, str) or len(made_by) > 200:
        raise ValueError("made_by: expected a short text")
    return LinkRecord(ends[0], ends[1], numbers["channels"], numbers["port_offset"],
                      numbers["queue"], numbers["buffer_strategy"], made_at, made_by)


class LinkStore(Protocol):
    """Where link records live. `load` gives the good records and one warning per bad one;
    `put` adds or replaces the record of its (hub, client) pair; `delete` removes the
    record joining two nodes in either direction and says whether there was one."""

    def load(self) -> tuple[tuple[LinkRecord, ...], tuple[str, ...]]: ...

    def put(self, record: LinkRecord) -> None: ...

    def delete(self, a: str, b: str) -> bool: ...

    def close(self) -> None: ...
