"""Host keys: pinned per node id, checked under our policy, and the known_hosts stores.

A connection to a node checks its key under the node id (OpenSSH's HostKeyAlias), so a
transport checked for one id never serves another; a jump host's key is checked under its
name. `KeyStores` parses known_hosts once per connector and secures each Paramiko client.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import threading
from dataclasses import dataclass

# isort: off
from skeleton_app.ssh import paramiko_import  # noqa: F401  (first: Paramiko without Invoke)
# isort: on
import paramiko
from paramiko.hostkeys import HostKeys

from skeleton_app.nodes import Node


class HostKeyUnknown(paramiko.SSHException):  # type: ignore[misc]  # paramiko: untyped
    def __init__(self, hostname: str, key: paramiko.PKey):
        self.hostname = hostname
        self.key = key
        super().__init__(hostname)


class HostKeyTaken(HostKeyUnknown):
    """accept-new met a node id for the first time, and the key its address presents is
    already pinned under another name: that machine is another node already."""

    def __init__(self, hostname: str, key: paramiko.PKey, other: str):
        super().__init__(hostname, key)
        self.other = other


@dataclass(frozen=True, slots=True)
class Pin:
    """Whose key a connection checks: `alias` (the node id, OpenSSH's HostKeyAlias) and the
    address entries (`host`, `[host]:port`) trusted for an id that has no entry yet."""

    alias: str
    addresses: tuple[str, ...]


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # untyped
    """Host keys are pinned per node id: Paramiko looks the key up under the node id (the
    connection's `hostname` is the alias, see `Connector._open`) and refuses a different key
    itself (BadHostKeyException), under every policy. When the id has no entry yet:

    - the address's own entry (known_hosts written before ids were pinned) decides: a match
      is trusted and recorded under the id from then on, a mismatch is a changed key;
    - else strict refuses; accept-new records the first-seen key under the id, unless that
      key is already pinned under another name (a machine is one node: a new registry row
      must not borrow the identity of a node we know).
    """

    def __init__(self, policy: str, known_hosts: str, store: HostKeys, lock: threading.Lock,
                 system: HostKeys | None = None, pin: Pin | None = None):
        self.policy = policy
        self.known_hosts = known_hosts
        self.store = store
        self.lock = lock
        self.system = system if system is not None else HostKeys()
        self.pin = pin

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        if self.pin is not None:
            for address in self.pin.addresses:
                known = self.system.lookup(address) or self.store.lookup(address)
                if known is None:
                    continue
                expected = known.get(key.get_name())
                if expected != key:
                    raise paramiko.BadHostKeyException(
                        address, key, expected or next(iter(known.values())))
                # Pinned from now on; a known_hosts we cannot write only costs the pin.
                with contextlib.suppress(OSError):
                    self._record(client, hostname, key)
                return
        if self.policy != "accept-new":
            raise HostKeyUnknown(hostname, key)
        if self.pin is not None:
            other = self._pinned_elsewhere(key)
            if other is not None:
                raise HostKeyTaken(hostname, key, other)
        self._record(client, hostname, key)

    def _pinned_elsewhere(self, key: paramiko.PKey) -> str | None:
        """A plain (not hashed, not address) name already holding `key`, if any."""
        assert self.pin is not None
        mine = {self.pin.alias, *self.pin.addresses}
        for store in (self.system, self.store):
            for entry in list(store._entries):
                if entry.key is None or entry.key != key:
                    continue
                for name in entry.hostnames:
                    if name not in mine and not name.startswith("|") \
                            and not _is_address(name):
                        return str(name)
        return None

    def _record(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        with self.lock:
            self.store.add(hostname, key.get_name(), key)
            client._host_keys.add(hostname, key.get_name(), key)
            directory = os.path.dirname(self.known_hosts) or "."
            os.makedirs(directory, mode=0o700, exist_ok=True)
            line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # two controllers may accept at once
                os.write(fd, line.encode())
            finally:
                os.close(fd)


# Trusted besides ssh.known_hosts, as OpenSSH does (the keeper's connection key covers them).
SYSTEM_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "~/.ssh/known_hosts")


class KeyStores:
    """The system's and the user's known_hosts, parsed once (reading them per host costs at
    fan-out), shared by every client of one connector."""

    def __init__(self, policy: str, known_hosts: str):
        self.policy = policy
        self.known_hosts = known_hosts
        self.lock = threading.Lock()  # one writer of known_hosts at a time
        self.system = HostKeys()
        for path in SYSTEM_KNOWN_HOSTS:
            _load(self.system, os.path.expanduser(path))
        self.user = HostKeys()
        _load(self.user, known_hosts)

    def secure(self, client: paramiko.SSHClient, pin: Pin | None = None) -> None:
        """Our stores and policy on `client`; `pin` None checks the key under the host's own
        name (a jump host)."""
        client._system_host_keys = self.system
        client._host_keys = self.user
        client.set_missing_host_key_policy(HostKeyPolicy(
            self.policy, self.known_hosts, self.user, self.lock, self.system, pin))


def _load(store: HostKeys, path: str) -> None:
    if os.path.isfile(path):
        # An unreadable known_hosts means "no keys known": strict still refuses.
        with contextlib.suppress(OSError, paramiko.SSHException):
            store.load(path)


def _is_address(name: str) -> bool:
    """`10.0.0.1`, `fd00::1` or `[10.0.0.1]:2222`: a known_hosts entry for an address."""
    if name.startswith("[") and "]:" in name:
        name = name[1:name.rindex("]:")]
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_key_pin(node: Node, connected_host: str | None = None) -> Pin:
    """The pin of a connection to `node` (through `connected_host` when ssh_config resolved
    the node's host to another name)."""
    hosts = dict.fromkeys([connected_host or node.host, node.host])
    return Pin(alias=node.id, addresses=tuple(known_host_name(h, node.port) for h in hosts))


def fingerprint(key: paramiko.PKey) -> str:
    return str(key.fingerprint if hasattr(key, "fingerprint") else key.get_name())


def known_host_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"
