"""The `jack:` section: defaults, per-node and per-role drivers, and one clear error per bad
key (skeleton_app/jack_settings.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from skeleton_app.config import load_config
from skeleton_app.errors import ConfigError
from skeleton_app.jack_settings import JackDriver

NODES = """
nodes:
  - {id: linux-01, host: 10.0.0.1, roles: [audio, tts]}
  - {id: linux-02, host: 10.0.0.2, roles: [audio]}
  - {id: linux-03, host: 10.0.0.3, roles: [llm]}
"""


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.yaml"
    path.write_text(text + NODES)
    return load_config(path, env={})


def test_defaults_without_a_section(tmp_path: Path) -> None:
    s = load(tmp_path, "")
    assert s.jack.server_name == "default"
    assert s.jack.driver_for(s.nodes[0]) == JackDriver("alsa", ())
    assert (s.jack.jackd, s.jack.jacktrip, s.jack.channels, s.jack.udp_base_port) == (
        "jackd", "jacktrip", 2, 4464)


def test_node_entry_wins_over_role_entry_over_default(tmp_path: Path) -> None:
    s = load(tmp_path, """
jack:
  server_name: lab
  driver: dummy
  driver_options: [-r, 48000, -p, "256"]
  drivers:
    "@audio": {driver: alsa, driver_options: [-d, "hw:1"]}
    linux-01: {driver: net}
  queue: 8
""")
    one, two, three = s.nodes
    assert s.jack.driver_for(one) == JackDriver("net", ())
    assert s.jack.driver_for(two) == JackDriver("alsa", ("-d", "hw:1"))
    assert s.jack.driver_for(three) == JackDriver("dummy", ("-r", "48000", "-p", "256"))
    assert s.jack.driver_for(three).argv("jackd", "lab") == (
        "jackd", "-n", "lab", "-d", "dummy", "-r", "48000", "-p", "256")
    assert s.jack.queue == 8


@pytest.mark.parametrize(("text", "key"), [
    ("jack: [1]", "jack"),
    ("jack: {srv: x}", "jack.srv"),
    ("jack: {server_name: 'a b'}", "jack.server_name"),
    ("jack: {driver: 'alsa;reboot'}", "jack.driver"),
    ("jack: {driver_options: '-r 48000'}", "jack.driver_options"),
    ("jack: {driver_options: [\"a\\nb\"]}", "jack.driver_options"),
    ("jack: {jacktrip: '-x'}", "jack.jacktrip"),
    ("jack: {jackd: 'jack d'}", "jack.jackd"),
    ("jack: {queue: 0}", "jack.queue"),
    ("jack: {buffer_strategy: 9}", "jack.buffer_strategy"),
    ("jack: {udp_base_port: 70000}", "jack.udp_base_port"),
    ("jack: {channels: true}", "jack.channels"),
    ("jack: {drivers: {'../x': {driver: dummy}}}", "jack.drivers"),
    ("jack: {drivers: {linux-01: {options: []}}}", "jack.drivers.linux-01"),
    ("jack: {drivers: {linux-01: {driver_options: []}}}", "jack.drivers.linux-01.driver"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert key in str(err.value)
