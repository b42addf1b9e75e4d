"""The `jack:` section of config.yaml: how each node's JACK server runs and how JackTrip links
between nodes are made (`skeleton jack ...`, skeleton_app/ops/jack).

    jack:
      server_name: default          # jackd -n NAME; clients find it through JACK_DEFAULT_SERVER
      driver: alsa                  # jackd -d DRIVER ...
      driver_options: [-r, "48000", -p, "256"]
      drivers:                      # per node id, or per role as "@role"; first match wins:
        linux-06: {driver: dummy, driver_options: [-r, "48000", -p, "256"]}   # the id, then
        "@audio": {driver: alsa, driver_options: [-d, "hw:1"]}                # roles in order
      jackd: jackd                  # the binaries, names on the node's PATH or absolute paths
      jacktrip: jacktrip
      channels: 2                   # jacktrip -n, unless `jack link --channels`
      queue: 4                      # jacktrip -q: the jitter buffer, in packets
      buffer_strategy: 1            # jacktrip --bufstrategy (0..4)
      udp_base_port: 4464           # jacktrip's UDP port (+ --port-offset)

Every value reaches the node as an argument of a quoted command line, never as shell text;
the checks below still refuse what no JACK option looks like (a newline, a NUL, a name with
spaces), so a typo is one clear line naming the key instead of an odd jackd error later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from skeleton_app.errors import ConfigError
from skeleton_app.nodes import NODE_ID_RE, ROLE_RE, Node, clip, shown

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_DRIVER_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
_BINARY_RE = re.compile(r"^[A-Za-z0-9_./+-]{1,255}\Z")
_OPTION_MAX = 200
_OPTIONS_MAX = 64


@dataclass(frozen=True, slots=True)
class JackDriver:
    """What `jackd -d DRIVER OPTIONS...` runs on one node."""

    driver: str = "alsa"
    options: tuple[str, ...] = ()

    def argv(self, jackd: str, server_name: str) -> tuple[str, ...]:
        """jackd's whole command line. jackd2 asks for realtime scheduling by default, which
        a sound card node wants; where it is not allowed (test hosts) jackd logs "Cannot use
        real-time scheduling" and runs on."""
        return (jackd, "-n", server_name, "-d", self.driver, *self.options)


@dataclass(frozen=True, slots=True)
class JackSettings:
    server_name: str = "default"
    default: JackDriver = field(default_factory=JackDriver)
    # (selector, driver) in config order: a selector is a node id or "@role".
    drivers: tuple[tuple[str, JackDriver], ...] = ()
    jackd: str = "jackd"
    jacktrip: str = "jacktrip"
    channels: int = 2
    queue: int = 4
    buffer_strategy: int = 1
    udp_base_port: int = 4464

    def driver_for(self, node: Node) -> JackDriver:
        """The node's own entry, else the first `@role` entry naming one of its roles, else
        the section's default."""
        for selector, driver in self.drivers:
            if selector == node.id:
                return driver
        for selector, driver in self.drivers:
            if selector.startswith("@") and selector[1:] in node.roles:
                return driver
        return self.default


_KEYS = ("server_name", "driver", "driver_options", "drivers", "jackd", "jacktrip",
         "channels", "queue", "buffer_strategy", "udp_base_port")
_INT_RANGES = {"channels": (1, 64), "queue": (1, 4096), "buffer_strategy": (0, 4),
               "udp_base_port": (1, 65535)}


def _fail(source: str, key: str, msg: str) -> ConfigError:
    return ConfigError(msg, source=source, key=key)


def _options(raw: object, source: str, key: str) -> tuple[str, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise _fail(source, key, f"expected a list of strings, got {shown(raw)}")
    if len(raw) > _OPTIONS_MAX:
        raise _fail(source, key, f"expected at most {_OPTIONS_MAX} options")
    out: list[str] = []
    for item in raw:
        # YAML reads `-r 48000`'s value as an int: accept numbers, store their text.
        if isinstance(item, int | float) and not isinstance(item, bool):
            item = str(item)
        if (not isinstance(item, str) or not item or len(item) > _OPTION_MAX
                or any(c in item for c in "\n\r\0")):
            raise _fail(source, key, f"invalid option {shown(item)}: expected a non-empty"
                                     f" one-line string of at most {_OPTION_MAX} characters")
        out.append(item)
    return tuple(out)


def _driver(raw: object, source: str, key: str) -> str:
    if not isinstance(raw, str) or not _DRIVER_RE.match(raw):
        raise _fail(source, key, f"invalid JACK driver {shown(raw)}: expected a name such as"
                                 " alsa, dummy, net")
    return raw


def _entry(selector: object, raw: object, source: str) -> tuple[str, JackDriver]:
    if not isinstance(selector, str) or not (
            NODE_ID_RE.match(selector)
            or (selector.startswith("@") and ROLE_RE.match(selector[1:]))):
        raise _fail(source, f"jack.drivers.{shown(selector)}",
                    "expected a node id or @role")
    where = f"jack.drivers.{selector}"
    if not isinstance(raw, Mapping):
        raise _fail(source, where, f"expected a mapping, got {shown(raw)}")
    for key in raw:
        if key not in ("driver", "driver_options"):
            raise _fail(source, f"{where}.{clip(str(key))}",
                        "unknown key (valid keys: driver, driver_options)")
    if "driver" not in raw:
        raise _fail(source, f"{where}.driver", "missing")
    return selector, JackDriver(
        _driver(raw["driver"], source, f"{where}.driver"),
        _options(raw.get("driver_options", ()), source, f"{where}.driver_options"))


def build_jack(raw: object, source: str) -> JackSettings:
    """The `jack:` section (None or absent: the defaults); ConfigError names the bad key."""
    if raw is None:
        return JackSettings()
    if not isinstance(raw, Mapping):
        raise _fail(source, "jack", f"expected a mapping, got {shown(raw)}")
    for key in raw:
        if key not in _KEYS:
            raise _fail(source, f"jack.{clip(str(key))}",
                        f"unknown key (valid keys: {', '.join(_KEYS)})")
    kw: dict[str, Any] = {}
    if "server_name" in raw:
        if not isinstance(raw["server_name"], str) or not _NAME_RE.match(raw["server_name"]):
            raise _fail(source, "jack.server_name", f"invalid server name"
                        f" {shown(raw['server_name'])}: letters, digits, '.', '_', '-'")
        kw["server_name"] = raw["server_name"]
    for key in ("jackd", "jacktrip"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, str) or not _BINARY_RE.match(value) or value.startswith(
                    "-"):
                raise _fail(source, f"jack.{key}", f"invalid program {shown(value)}: a name"
                                                   " on the node's PATH or an absolute path")
            kw[key] = value
    for key, (low, high) in _INT_RANGES.items():
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise _fail(source, f"jack.{key}",
                            f"expected an integer from {low} to {high}, got {shown(value)}")
            kw[key] = value
    default = JackDriver()
    if "driver" in raw or "driver_options" in raw:
        default = JackDriver(
            _driver(raw.get("driver", default.driver), source, "jack.driver"),
            _options(raw.get("driver_options", ()), source, "jack.driver_options"))
    drivers = raw.get("drivers") or {}
    if not isinstance(drivers, Mapping):
        raise _fail(source, "jack.drivers", f"expected a mapping, got {shown(drivers)}")
    return JackSettings(default=default,
                        drivers=tuple(_entry(s, d, source) for s, d in drivers.items()), **kw)
