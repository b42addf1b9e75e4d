"""A node's JACK ports as `jack_lsp -c -p` lists them, and the near matches for a typo.

`jack_lsp -c -p` prints each port's full name (`client:port`) at the start of a line, then one
line per connection indented by three spaces, then `\\tproperties: output,physical,terminal,`.
Port and client names come from the node (any JACK client may name its ports): they are data
here, never paths or shell text, and views `sanitize` them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_PROPERTIES = "properties:"


@dataclass(frozen=True, slots=True)
class JackPort:
    """One port: its full name, `output` or `input` ("" when jack_lsp did not say), and the
    full names of the ports it is connected to."""

    name: str
    direction: str = ""
    connections: tuple[str, ...] = ()
    physical: bool = False

    @property
    def client(self) -> str:
        return self.name.partition(":")[0]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "direction": self.direction,
                "connections": list(self.connections), "physical": self.physical}


def parse_lsp(text: str) -> tuple[JackPort, ...]:
    """The ports of a `jack_lsp -c -p` listing, in its order. Never raises: lines it does not
    know (a tool's warning on stdout) are skipped."""
    ports: list[JackPort] = []
    name: str | None = None
    direction = ""
    physical = False
    connections: list[str] = []

    def flush() -> None:
        if name is not None:
            ports.append(JackPort(name, direction, tuple(connections), physical))

    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("\t"):
            body = line.strip()
            if name is not None and body.startswith(_PROPERTIES):
                flags = {f.strip() for f in body[len(_PROPERTIES):].split(",")}
                direction = "output" if "output" in flags else "input" if "input" in flags \
                    else ""
                physical = "physical" in flags
            continue
        if line.startswith("   "):
            if name is not None:
                connections.append(line[3:])
            continue
        if ":" not in line:
            continue
        flush()
        name, direction, physical, connections = line, "", False, []
    flush()
    return tuple(ports)


def find(ports: Iterable[JackPort], name: str) -> JackPort | None:
    for port in ports:
        if port.name == name:
            return port
    return None


def near_matches(ports: Iterable[JackPort], name: str, *, limit: int = 3) -> list[str]:
    """The port names closest to `name` (difflib), best first; a same-client port list when
    nothing is close (`system:captur` -> system:capture_1, system:capture_2)."""
    names = [p.name for p in ports]
    close = difflib.get_close_matches(name, names, n=limit, cutoff=0.6)
    if close:
        return close
    client = name.partition(":")[0]
    return [n for n in names if n.partition(":")[0] == client][:limit]


def connected(ports: Iterable[JackPort], a: str, b: str) -> bool:
    """Are the ports `a` and `b` connected (in either direction)?"""
    port = find(ports, a)
    return port is not None and b in port.connections
