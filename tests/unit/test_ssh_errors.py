"""The SSH layer's one translation table (`skeleton_app.ssh.errors`), exception by exception,
and the Runner contract: the fake runner and the real connector are both `Runner`s."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import paramiko
import pytest

from skeleton_app.config import SSHSettings
from skeleton_app.errors import NodeError, NodeErrorKind
from skeleton_app.nodes import Node
from skeleton_app.ssh.errors import (
    channel_open_failure,
    handshake_failure,
    is_preauth_reset,
    mid_command_failure,
    translate,
)
from skeleton_app.ssh.hostkeys import HostKeyTaken, HostKeyUnknown, fingerprint
from skeleton_app.ssh.pool import Connector
from skeleton_app.ssh.runner import Runner
from skeleton_app.testing.fake import FakeRunner

HOST, PORT = "10.9.8.7", 2222
WHERE = f"{HOST}:{PORT}"


@pytest.fixture(scope="module")
def key() -> paramiko.PKey:
    return paramiko.ECDSAKey.generate()


@pytest.fixture(scope="module")
def other_key() -> paramiko.PKey:
    return paramiko.ECDSAKey.generate()


def _t(exc: BaseException, *, known_hosts: str = "/kh", user: str | None = None) -> NodeError:
    return translate(exc, host=HOST, port=PORT, timeout=4.0, known_hosts=known_hosts, user=user)


@pytest.mark.parametrize(("exc", "kind", "words"), [
    # socket.timeout is TimeoutError (Python >= 3.10): what a connect or a read raises.
    (TimeoutError("timed out"), NodeErrorKind.UNREACHABLE,
     f"connection to {WHERE} timed out after 4s"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), NodeErrorKind.REFUSED,
     f"connection refused by {WHERE}"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), NodeErrorKind.UNREACHABLE,
     f"{WHERE}: No route to host"),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), NodeErrorKind.UNREACHABLE,
     f"{WHERE}: Network is unreachable"),
    (paramiko.SSHException("Error reading SSH protocol banner"), NodeErrorKind.UNREACHABLE,
     f"{WHERE} accepted TCP but sent no SSH banner within 4s"),
    (paramiko.SSHException("Error reading SSH protocol banner[Errno 104] Connection reset by"
                           " peer"), NodeErrorKind.PROTOCOL, f"{WHERE}: Error reading"),
    (EOFError(), NodeErrorKind.PROTOCOL, f"{WHERE}: EOFError"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), NodeErrorKind.LOST,
     f"{WHERE}: [Errno {errno.ECONNRESET}] Connection reset by peer"),
    (paramiko.SSHException("Incompatible ssh peer"), NodeErrorKind.PROTOCOL,
     f"{WHERE}: Incompatible ssh peer"),
    (ValueError("odd"), NodeErrorKind.ERROR, f"{WHERE}: ValueError: odd"),
])
def test_translate_network_and_protocol(exc: BaseException, kind: NodeErrorKind,
                                        words: str) -> None:
    err = _t(exc)
    assert err.kind is kind
    assert words in err.message


def test_dns_failure_names_the_host() -> None:
    err = _t(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert err.kind is NodeErrorKind.UNREACHABLE
    assert err.message == f"cannot resolve {HOST}: Name or service not known"


def test_auth_names_user_and_address() -> None:
    err = _t(paramiko.AuthenticationException("Authentication failed."), user="deploy")
    assert err.kind is NodeErrorKind.AUTH
    assert err.message == f"authentication failed for deploy@{WHERE}: Authentication failed."
    assert _t(paramiko.AuthenticationException("no")).message.startswith(
        f"authentication failed for {WHERE}:")


def test_host_key_changed(key: paramiko.PKey, other_key: paramiko.PKey) -> None:
    err = _t(paramiko.BadHostKeyException("node-01", key, other_key))
    assert err.kind is NodeErrorKind.HOSTKEY_CHANGED
    assert err.message.startswith(f"HOST KEY CHANGED for node-01 at {WHERE}: got")
    assert fingerprint(key) in err.message and fingerprint(other_key) in err.message
    assert "ssh-keygen -R" in err.message


def test_host_key_unknown(key: paramiko.PKey) -> None:
    err = _t(HostKeyUnknown("node-01", key), known_hosts="/k h/known_hosts")
    assert err.kind is NodeErrorKind.HOSTKEY_UNKNOWN
    assert err.message.startswith(f"unknown host key for node-01 at {WHERE} (")
    assert f"ssh-keyscan -p {PORT} {HOST} >> '/k h/known_hosts'" in err.message
    assert "ssh.host_key_policy: accept-new" in err.message


def test_host_key_taken(key: paramiko.PKey) -> None:
    err = _t(HostKeyTaken("node-09", key, "node-02"), known_hosts="/kh")
    assert err.kind is NodeErrorKind.HOSTKEY_CHANGED
    assert err.message.startswith(f"{WHERE} presents the host key of node-02 (")
    assert f"record the key under node-09: ssh-keyscan -p {PORT} {HOST}" in err.message


def test_node_error_passes_through() -> None:
    original = NodeError(NodeErrorKind.INTERRUPTED, "interrupted while connecting")
    assert _t(original) is original


def test_preauth_reset_rule(key: paramiko.PKey) -> None:
    """sshd's MaxStartups drops are retried; refusals, key and auth failures are not."""
    for dropped in (ConnectionResetError(), EOFError(), BrokenPipeError(),
                    paramiko.SSHException("Connection reset by peer"),
                    paramiko.SSHException("EOF during negotiation")):
        assert is_preauth_reset(dropped, elapsed=0.1, timeout=10), dropped
    banner = paramiko.SSHException("Error reading SSH protocol banner")
    assert is_preauth_reset(banner, elapsed=1.0, timeout=10)
    assert not is_preauth_reset(banner, elapsed=6.0, timeout=10)  # a frozen sshd
    for final in (ConnectionRefusedError(), TimeoutError(), HostKeyUnknown("n", key),
                  paramiko.AuthenticationException("closed"),
                  paramiko.BadHostKeyException("n", key, key)):
        assert not is_preauth_reset(final, elapsed=0.1, timeout=10), final


def test_refinements_by_moment() -> None:
    node = Node(id="node-01", host=HOST, port=PORT, user="skeleton")
    late = handshake_failure(paramiko.SSHException("No existing session"), node,
                             elapsed=9.8, timeout=10.0, known_hosts="/kh")
    assert late.kind is NodeErrorKind.UNREACHABLE and late.node == "node-01"
    assert late.message == (f"{WHERE} accepted TCP but sent no SSH banner or handshake"
                            " within 10s (sshd frozen or overloaded?)")
    early = handshake_failure(paramiko.AuthenticationException("denied"), node,
                              elapsed=0.1, timeout=10.0, known_hosts="/kh")
    assert early.kind is NodeErrorKind.AUTH and f"skeleton@{WHERE}" in early.message
    stuck = channel_open_failure(paramiko.SSHException("Timeout opening channel."), node,
                                 timeout=3.0)
    assert stuck.kind is NodeErrorKind.LOST
    assert stuck.message == f"{WHERE} stopped answering (no channel within 3s)"
    broke = mid_command_failure(paramiko.SSHException("Key-exchange timed out"), node,
                                timeout=3.0)
    assert broke.kind is NodeErrorKind.LOST and WHERE in broke.message


# ------------------------------------------------------------------ the Runner contract

_METHODS = ("run", "session", "hold", "warm", "discard", "close")


def test_fake_runner_and_connector_are_runners() -> None:
    # Typed assignments: mypy checks them (here when run on tests/, always in the next test).
    fake: Runner = FakeRunner()
    connector: Runner = Connector(SSHSettings(known_hosts="/nonexistent/known_hosts"))
    try:
        for runner in (fake, connector):
            for name in _METHODS:
                assert callable(getattr(runner, name, None)), (type(runner).__name__, name)
        protocol = {n for n in vars(Runner) if not n.startswith("_")}
        assert protocol == set(_METHODS)
    finally:
        connector.close()


def test_runner_contract_type_checks(tmp_path: Path) -> None:
    """The typed assignments above, through mypy itself (strict)."""
    api = pytest.importorskip("mypy.api")
    code = ("from skeleton_app.config import SSHSettings\n"
            "from skeleton_app.ssh.pool import Connector\n"
            "from skeleton_app.ssh.runner import Runner\n"
            "from skeleton_app.testing.fake import FakeRunner\n"
            "fake: Runner = FakeRunner()\n"
            "real: Runner = Connector(SSHSettings())\n")
    out, err, status = api.run(["--strict", "--no-error-summary",
                                "--cache-dir", str(Path(".mypy_cache").absolute()), "-c", code])
    assert status == 0, out + err
