"""The tools we compare against: installing them, and the exact command line of each.

Debian packages (`pdsh`, `pssh`, `clustershell`) are installed with `apt-get install -y`;
`ansible-core` goes into its own virtualenv under bench/.peers/ (gitignored). None of them
is ever a dependency of the package.

Every peer talks to the same hosts with the same key and the same known_hosts file, with
strict host-key checking, in the same kind of environment (HOME is a directory of the
run, so nobody's ~/.ssh/config or ~/.ansible takes part). OpenSSH-based peers read the
testbed's ssh_config (`-F`): user, identity, known_hosts, StrictHostKeyChecking yes,
BatchMode. Fan-out width: each tool's own default unless it is below the host count
(ansible's default of 5 forks is raised to the host count, as anyone timing it would).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.measure import BenchError, Command

BENCH_DIR = Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / ".peers"
ANSIBLE_VENV = PEERS_DIR / "venv"
APT_PACKAGES = {"pdsh": "pdsh", "parallel-ssh": "pssh", "parallel-rsync": "pssh",
                "clush": "clustershell", "/usr/bin/time": "time"}
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Names as they appear in the tables.
OURS = "skeleton cluster exec"
PDSH = "pdsh -R ssh"
PSSH = "parallel-ssh"
CLUSH = "clush"
ANSIBLE = "ansible -m raw"
FABRIC = "Fabric ThreadingGroup script"
FANOUT_TOOLS = (OURS, PDSH, PSSH, CLUSH, ANSIBLE, FABRIC)


def install(*, ansible: bool = True, log: Path) -> None:
    """Install the missing peers (apt, and ansible-core into bench/.peers/venv)."""
    missing = sorted({pkg for binary, pkg in APT_PACKAGES.items() if not shutil.which(binary)})
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        with log.open("ab") as out:
            cmd = ["apt-get", "install", "-y", "-q", *missing]
            if subprocess.run(cmd, stdout=out, stderr=out, env=env).returncode != 0:
                # A fresh machine has no package lists yet.
                subprocess.run(["apt-get", "update", "-q"], stdout=out, stderr=out, env=env)
                if subprocess.run(cmd, stdout=out, stderr=out, env=env).returncode != 0:
                    raise BenchError(f"apt-get install {' '.join(missing)} failed (see {log})")
    if ansible and not (ANSIBLE_VENV / "bin" / "ansible").exists():
        with log.open("ab") as out:
            steps = [[sys.executable, "-m", "venv", "--clear", str(ANSIBLE_VENV)],
                     [str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", "ansible-core"]]
            for step in steps:
                if subprocess.run(step, stdout=out, stderr=out).returncode != 0:
                    raise BenchError(f"{' '.join(step[:3])} failed (see {log})")


def versions() -> dict[str, str]:
    """One line per tool, for the machine description."""
    probes = {
        "OpenSSH": ["ssh", "-V"],
        "pdsh": ["pdsh", "-V"],
        "parallel-ssh": ["parallel-ssh", "--version"],
        "clush": ["clush", "--version"],
        "ansible-core": [str(ANSIBLE_VENV / "bin" / "ansible"), "--version"],
        "rsync": ["rsync", "--version"],
        "GNU parallel": ["parallel", "--version"],
    }
    found: dict[str, str] = {}
    for name, argv in probes.items():
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            found[name] = lines[0].strip() if lines else "?"
        except (OSError, subprocess.TimeoutExpired):
            found[name] = "not installed"
    from importlib.metadata import version

    for dist in ("fabric", "paramiko", "invoke"):
        found[dist] = version(dist)
    return found


@dataclass(frozen=True, slots=True)
class Hosts:
    """The first `len(ips)` hosts of a testbed, as every tool needs to be told about them."""

    ids: tuple[str, ...]
    ips: tuple[str, ...]
    config: Path  # skeleton config.yaml listing exactly these nodes
    ssh_config: Path
    identity: Path
    known_hosts: Path
    user: str
    workdir: Path  # per-run scratch (HOME of the tools, inventories)

    @property
    def home(self) -> Path:
        return self.workdir / "home"

    def env(self, **extra: str) -> dict[str, str]:
        # Every case but 8 measures cold commands, as every peer runs: no connection keeper
        # (warm mode, which case 8 measures, would make runs 2..N warm and outlive the run).
        return {"PATH": PATH, "HOME": str(self.home), "LANG": "C.UTF-8",
                "SKELETON_SSH_PERSIST": "0", **extra}


def hosts_subset(testbed_config: Path, ssh_config: Path, identity: Path, known_hosts: Path,
                 user: str, count: int, workdir: Path) -> Hosts:
    """A config file with the testbed's first `count` nodes (so every tool gets a cluster of
    exactly `count` hosts and nothing has to select)."""
    data = yaml.safe_load(testbed_config.read_text())
    nodes = data["nodes"][:count]
    if len(nodes) < count:
        raise BenchError(f"testbed has {len(data['nodes'])} hosts, {count} needed")
    data["nodes"] = nodes
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "home").mkdir(exist_ok=True)
    config = workdir / f"config-{count}.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return Hosts(ids=tuple(n["id"] for n in nodes), ips=tuple(n["host"] for n in nodes),
                 config=config, ssh_config=ssh_config, identity=identity,
                 known_hosts=known_hosts, user=user, workdir=workdir)


def skeleton_bin() -> str:
    found = Path(sys.executable).parent / "skeleton"
    if not found.exists():
        raise BenchError(f"{found} not found: install the package into this virtualenv")
    return str(found)


def fanout_commands(h: Hosts, command: str = "true", *,
                    fanout: int | None = None) -> dict[str, Command]:
    """The fan-out case's command line for every tool, on exactly the hosts in `h`."""
    n = len(h.ips)
    width = fanout or max(n, 1)
    ours = [skeleton_bin(), "cluster", "exec", command, "--config", str(h.config)]
    if fanout:
        ours += ["--fanout", str(fanout)]
    inventory = h.workdir / f"inventory-{n}.ini"
    inventory.write_text("[all]\n" + "".join(f"{ip}\n" for ip in h.ips))
    ssh_f = f"-F {h.ssh_config}"
    return {
        OURS: Command(tuple(ours), h.env()),
        # pdsh: -S returns the largest remote exit code (without it pdsh exits 0 even when
        # ssh fails); default fanout 32.
        PDSH: Command(("pdsh", "-S", "-R", "ssh", "-l", h.user, "-f", str(max(32, width)),
                       "-w", ",".join(h.ips), command),
                      h.env(PDSH_SSH_ARGS=f"{ssh_f} -x -l%u %h")),
        PSSH: Command(("parallel-ssh", "-l", h.user, "-p", str(max(32, width)),
                       "-x", ssh_f, "-H", " ".join(h.ips), command), h.env()),
        CLUSH: Command(("clush", "-l", h.user, "-f", str(max(64, width)), "-o", ssh_f,
                        "-w", ",".join(h.ips), command), h.env()),
        # ControlPersist off: every tool starts cold (ansible's default keeps a master
        # per host for 60 s, which would let runs 2..N skip the handshake).
        ANSIBLE: Command((str(ANSIBLE_VENV / "bin" / "ansible"), "all", "-i", str(inventory),
                          "-u", h.user, "--private-key", str(h.identity),
                          "-f", str(width), "-m", "raw", "-a", command),
                         h.env(ANSIBLE_HOST_KEY_CHECKING="True",
                               ANSIBLE_SSH_ARGS=f"{ssh_f} -o ControlMaster=no",
                               ANSIBLE_NOCOLOR="1")),
        FABRIC: Command((sys.executable, str(BENCH_DIR / "fabric_fanout.py"), str(h.identity),
                         str(h.known_hosts), h.user, command, *h.ips), h.env()),
    }


def prsync_command(h: Hosts, source: Path, dest: str, excludes: Sequence[str], *,
                   delete: bool) -> Command:
    """prsync (Debian: parallel-rsync) of `source/` to `dest` on every host, with the given
    excludes: the same rsync work `skeleton cluster deploy` would do without its digest."""
    rsync_args = [f"--exclude={e}" for e in excludes] + (["--delete"] if delete else [])
    argv = ["parallel-rsync", "-l", h.user, "-p", str(max(32, len(h.ips))), "-a", "-r", "-z",
            "-S", f"-F {h.ssh_config}", "-H", " ".join(h.ips)]
    for arg in rsync_args:
        argv += ["-X", arg]
    argv += [f"{source}/", dest]
    return Command(tuple(argv), h.env())
