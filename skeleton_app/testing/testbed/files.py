"""What `up` writes: keys, known_hosts, ssh_config, sshd_config, config.yaml, host-init."""

from __future__ import annotations

import os
import pwd
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from skeleton_app.testing.testbed.state import APP_DIR, USER, Testbed, TestbedHost
from skeleton_app.testing.testbed.system import _run, _write

NODE_DSN_FILE = ".config/skeleton/node.dsn"  # under HOME: registry.node_dsn_file's default
WHEELHOUSE = ".wheelhouse"  # in a checkout: wheels ./scripts/setup pre-builds for bootstrap


# PID 1 of every host (see there): a real module of this package, copied to the state dir.
_HOST_INIT = Path(__file__).with_name("host_init.py")

_HIDDEN_COMMAND = """\
#!/bin/sh
# Bind-mounted by `skeleton_app.testing.testbed.hide_command` over a binary inside a test host.
echo "$0: command not found (hidden by skeleton testbed)" >&2
exit 127
"""


def _write_node_dsn(host: TestbedHost, dsn: str, account: pwd.struct_passwd) -> None:
    """The node's DSN at the default `registry.node_dsn_file` inside the host, 0600 from
    the start (it holds a password), owned by the node user."""
    owner = (account.pw_uid, account.pw_gid)
    path = host.home / NODE_DSN_FILE
    for parent in (path.parent.parent, path.parent):
        parent.mkdir(mode=0o700, exist_ok=True)
        os.chown(parent, *owner)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(dsn + "\n")
    os.chown(path, *owner)


def _keygen(path: Path, comment: str) -> str:
    """A new ed25519 key pair at `path`; returns the public key line."""
    path.unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_name(path.name + ".pub").read_text().strip()


def _host_keys(host: TestbedHost) -> tuple[str, str]:
    """(host key, node user key) public lines for one host."""
    (host.home / ".ssh").mkdir(parents=True, exist_ok=True)
    host_pub = _keygen(host.dir / "ssh_host_ed25519_key", f"{host.id} host key")
    node_pub = _keygen(host.home / ".ssh" / "id_ed25519", f"{USER}@{host.id}")
    return host_pub, node_pub


def _key_body(pub_line: str) -> str:
    """'ssh-ed25519 AAAA...' without the comment."""
    return " ".join(pub_line.split()[:2])


def _write_controller_files(tb: Testbed, host_pubs: Mapping[str, str]) -> None:
    # Keys are pinned per node id (ssh/hostkeys.py, HostKeyAlias): one entry by id, and one by
    # address for plain `ssh IP` and tools that do not know the ids (bench peers, pdsh).
    known = "".join(f"{h.id} {_key_body(host_pubs[h.id])}\n{h.ip} {_key_body(host_pubs[h.id])}\n"
                    for h in tb.hosts)
    _write(tb.known_hosts, known, 0o644)
    blocks = [
        f"# written by skeleton testbed up: ssh -F {tb.ssh_config_path} {tb.hosts[0].id}\n"
        "Host *\n"
        f"    User {USER}\n"
        f"    IdentityFile {tb.identity_file}\n"
        f"    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {tb.known_hosts}\n"
        f"    StrictHostKeyChecking yes\n"
        f"    BatchMode yes\n"
        f"    ConnectTimeout 10\n"
    ]
    blocks += [f"\nHost {h.id}\n    HostName {h.ip}\n" for h in tb.hosts]
    _write(tb.ssh_config_path, "".join(blocks), 0o644)
    _write(tb.state_dir / "hidden-command", _HIDDEN_COMMAND, 0o755)
    _write(tb.state_dir / "host-init.py", _HOST_INIT.read_text(), 0o644)


def _write_host_files(
    tb: Testbed,
    host: TestbedHost,
    controller_pub: str,
    node_pubs: Sequence[str],
    host_pubs: Mapping[str, str],
    account: pwd.struct_passwd,
) -> None:
    owner = (account.pw_uid, account.pw_gid)
    ssh_dir = host.home / ".ssh"
    # Node-to-node: every node key may log in everywhere, and every host key is known by
    # id and by address, so `ssh node-02` and `ssh 10.213.N.12` both verify strictly.
    _write(ssh_dir / "authorized_keys", "\n".join([controller_pub, *node_pubs]) + "\n", 0o600,
           owner)
    known = "".join(f"{h.id},{h.ip} {_key_body(host_pubs[h.id])}\n" for h in tb.hosts)
    _write(ssh_dir / "known_hosts", known, 0o644, owner)
    config = ["Host *\n    StrictHostKeyChecking yes\n    BatchMode yes\n"
              "    ConnectTimeout 10\n"]
    config += [f"\nHost {h.id}\n    HostName {h.ip}\n" for h in tb.hosts]
    _write(ssh_dir / "config", "".join(config), 0o644, owner)
    for name in ("id_ed25519", "id_ed25519.pub"):
        os.chown(ssh_dir / name, *owner)
    os.chmod(ssh_dir / "id_ed25519", 0o600)
    (host.home / "app").mkdir(exist_ok=True)
    for path in (host.home, ssh_dir, host.home / "app"):
        os.chown(path, *owner)
    os.chmod(host.home, 0o755)
    os.chmod(ssh_dir, 0o700)

    sshd_config = f"""\
# written by skeleton testbed up for {host.id}
ListenAddress {host.ip}
Port 22
HostKey {host.dir / "ssh_host_ed25519_key"}
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
PermitRootLogin no
AllowUsers {USER}
# Fan-out benchmarks hit one host with many handshakes at once (default 10:30:100).
MaxStartups 200:30:400
MaxSessions 64
PrintMotd no
PrintLastLog no
UseDNS no
X11Forwarding no
Subsystem sftp internal-sftp
LogLevel INFO
"""
    _write(host.sshd_config, sshd_config, 0o600)


def _write_config(tb: Testbed) -> None:
    config: dict[str, Any] = {
        "ssh": {
            "user": USER,
            "identity_file": str(tb.identity_file),
            "known_hosts": str(tb.known_hosts),
            "host_key_policy": "strict",
        },
        "app": {"dir": APP_DIR},
    }
    if tb.db is not None:
        config["registry"] = {"dsn": tb.db.host_dsn}
    config["daemon"] = {
        "manager": "process",
        # From the virtualenv `skeleton cluster bootstrap` makes in the host's app dir, as on
        # a real node. The hosts share /tmp with the controller, so the daemon reads this
        # very file (a real node reads the config.yaml deployed with the code).
        "command": (".venv/bin/python -m skeleton_app daemon run"
                    f" --config {shlex.quote(str(tb.config_path))}"),
    }
    # The hosts have no sound card: JACK's dummy driver, as the README's JACK section says
    # of the test cluster (the default, alsa on hw:0, fails there on every host).
    config["jack"] = {"driver": "dummy", "driver_options": ["-r", "48000", "-p", "256"]}
    config["deploy"] = _deploy_section(tb)
    project = _project_dir()
    if project is not None and (project / WHEELHOUSE / ".complete").is_file():
        # Wheels ./scripts/setup built while it had network: bootstrap needs no index.
        config["bootstrap"] = {"wheelhouse": str(project / WHEELHOUSE)}
    config["nodes"] = [{"id": h.id, "host": h.ip, "roles": list(h.roles)} for h in tb.hosts]
    header = (f"# written by `skeleton testbed up` (instance {tb.instance});"
              " removed by `skeleton testbed down`\n")
    _write(tb.config_path, header + yaml.safe_dump(config, sort_keys=False), 0o644)


def _hidden_dirs(host_dir: Path) -> list[str]:
    """What the hosts must not see of the controller: the checkout this package runs from
    and the virtualenv it runs in (when it is one); never a directory holding the host's
    own files (a state dir inside the checkout)."""
    hidden: list[str] = []
    candidates = [str(p) for p in [_project_dir()] if p is not None]
    if sys.prefix != sys.base_prefix:
        candidates.append(os.path.realpath(sys.prefix))
    own = os.path.realpath(host_dir)
    for path in candidates:
        inside = any(path == h or path.startswith(h + "/") for h in hidden)
        if not inside and not (own + "/").startswith(path + "/"):
            hidden.append(path)
    return hidden


def _project_dir() -> Path | None:
    """The checkout this package runs from (an editable install), else None."""
    project = Path(__file__).resolve().parents[3]
    return project if (project / "pyproject.toml").is_file() else None


def _deploy_section(tb: Testbed) -> dict[str, Any]:
    """Always an explicit, safe `deploy.source`: a relative one would mean the state dir,
    which holds the controller's private key, the host keys and state.json. From a checkout:
    the checkout; else a small app dir of the tour's own (STATE/app)."""
    from skeleton_app.config import DeploySettings

    project = _project_dir()
    if project is not None:
        return {"source": str(project), "exclude": [
            *DeploySettings().exclude, ".pytest_cache/", ".ruff_cache/", ".mypy_cache/",
            "*.egg-info/", "bench/", "collected_logs/", f"{WHEELHOUSE}/", "build/"]}
    app = tb.state_dir / "app"
    app.mkdir(mode=0o755, exist_ok=True)
    _write(app / "README.txt", "A tiny app deployed by the skeleton testbed tour.\n", 0o644)
    return {"source": str(app)}
