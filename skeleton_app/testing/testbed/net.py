"""The network of a testbed: bridge, veth pairs, namespaces, addresses and link shaping."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from skeleton_app.errors import TestbedError, UsageError
from skeleton_app.testing.testbed.state import Testbed, TestbedHost, bridge_name, netns_name
from skeleton_app.testing.testbed.system import _last_line, _run

DEFAULT_RATE_BURST = "256kb"
DEFAULT_RATE_LATENCY = "50ms"
_RATE_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$")


def _check_rate(rate: str) -> str:
    if not isinstance(rate, str) or not _RATE_RE.match(rate.lower()):
        raise UsageError(f"invalid rate {rate!r}: expected e.g. 200mbit, 10mbit, 1gbit")
    return rate


def _check_ip(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise UsageError(f"invalid IPv4 address {value!r}") from None


def _claim_bridge(instance: int) -> str | None:
    """Create the instance's bridge; return why not if the instance is in use."""
    leftovers = _our_namespaces(instance)
    if leftovers:
        return (f"testbed instance {instance} is in use (namespace {leftovers[0]} exists):"
                " run `skeleton testbed down` first or pick another instance")
    bridge = bridge_name(instance)
    proc = _run(["ip", "link", "add", bridge, "type", "bridge"], check=False)
    if proc.returncode != 0:
        if "exists" in proc.stderr:
            return (f"testbed instance {instance} is in use (bridge {bridge} exists):"
                    " run `skeleton testbed down` first or pick another instance")
        raise TestbedError(f"cannot create bridge {bridge}: {_last_line(proc.stderr)}")
    return None


def _make_network(tb: Testbed) -> None:
    """Bridge address, namespaces and veth pairs, in one `ip -batch` (the bridge exists)."""
    lines = [f"addr add {tb.gateway}/24 dev {tb.bridge}", f"link set {tb.bridge} up"]
    for h in tb.hosts:
        lines += [
            f"netns add {h.namespace}",
            f"link add {h.veth} type veth peer name eth0 netns {h.namespace}",
            f"link set {h.veth} master {tb.bridge} up",
        ]
    Path("/run/netns").mkdir(parents=True, exist_ok=True)
    _run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")
    # The hosts' default route points at the gateway so that they reach the controller and
    # each other; it must never lead further. With forwarding off on the bridge (the input
    # interface decides) the kernel answers "unreachable" instead of routing a host's packet
    # out of the machine, even where net.ipv4.ip_forward is 1 (e.g. Docker hosts).
    Path(f"/proc/sys/net/ipv4/conf/{tb.bridge}/forwarding").write_text("0\n")


def _configure_netns(tb: Testbed, host: TestbedHost) -> None:
    lines = [
        "link set lo up",
        f"addr add {host.ip}/24 dev eth0",
        "link set eth0 up",
        f"route add default via {tb.gateway}",
    ]
    _run(["ip", "-n", host.namespace, "-batch", "-"], input="\n".join(lines) + "\n")


def _apply_rate(dev: str, namespace: str | None, rate: str | None) -> None:
    prefix = ["tc"] if namespace is None else ["tc", "-n", namespace]
    if rate is None:
        proc = _run([*prefix, "qdisc", "del", "dev", dev, "root"], check=False)
        # Deleting the default qdisc is refused with one of these: nothing to undo.
        if proc.returncode != 0 and not any(
            s in proc.stderr for s in ("handle of zero", "No such file", "Invalid handle")
        ):
            raise TestbedError(f"tc on {dev}: {_last_line(proc.stderr)}")
        return
    _run([*prefix, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
          "burst", DEFAULT_RATE_BURST, "latency", DEFAULT_RATE_LATENCY])


def _list_namespaces() -> list[str]:
    proc = _run(["ip", "netns", "list"], check=False)
    # Lines look like "sktb3-node-01 (id: 4)".
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _our_namespaces(instance: int) -> list[str]:
    prefix = netns_name(instance, "")
    return [ns for ns in _list_namespaces() if ns.startswith(prefix)]


def _list_links() -> list[str]:
    proc = _run(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in proc.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def _our_links(instance: int) -> list[str]:
    veth = re.compile(rf"^sk{instance}h[0-9]+$")
    return [name for name in _list_links() if veth.match(name)]
