"""A local test cluster: N real SSH hosts on this machine, each in its own namespaces.

    tb = up(6)                          # node-01..node-06, strict host keys, config written
    tb.config_path                      # STATE/config.yaml: `skeleton cluster ... --config` it
    host_exec(tb, "node-02", ["ps", "-e"])
    with small_disk(tb, "node-03"): ...
    down(tb.state_dir)                  # safe twice, and after a crash

One host is one `sshd -D` on port 22 of its own address, in its own network, mount, PID and
UTS namespace. The network namespace gets a veth pair whose other end sits on a bridge in
the root namespace; the bridge holds the gateway address (what the hosts see as "the
controller", and where `--db` PostgreSQL listens). Each host bind-mounts its own directory
(on the real filesystem, under the state dir) over `/home/skeleton`, so every host has the
same paths (`/home/skeleton/app`) with different content.

Names and addresses are per *instance* (0..200), so two testbeds never collide:

    subnet      10.213.INSTANCE.0/24, gateway .1, node N at .(10+N)
    bridge      sktbINSTANCE
    namespaces  sktbINSTANCE-NODE_ID
    veths       skINSTANCEhN  (host side; the namespace side is `eth0`)
    state dir   /tmp/skeleton-testbed-INSTANCE ($SKELETON_TESTBED_DIR or `state_dir=`)

State dir layout:

    .skeleton-testbed     marker: `down` only deletes a directory that carries it
    state.json            instance, bridge, subnet, hosts (pids, veths, rates), db
    config.yaml           ready for `load_config` and every `--config`
    ssh_config            the same hosts for OpenSSH: `ssh -F STATE/ssh_config node-01`
    id_ed25519[.pub]      the controller's key; known_hosts: `ID ...` and `IP ...` per host
    hidden-command        what `hide_command` bind-mounts over a binary (exits 127)
    host-init.py          PID 1 of every host
    db/                   PostgreSQL (`--db`, skeleton_app.testing.localdb)
    hosts/ID/             host key, sshd_config, sshd.log, sshd.want, launcher.log,
                          home/ (bind-mounted over /home/skeleton inside the host)

Process layout of one host, as seen from the root namespace:

    unshare ...          the *launcher*: a process-group leader, its pid is in state.json
     └ host-init.py      PID 1 of the host (`init_pid`): reaps orphans, starts/stops sshd
        └ sshd -D        the listener, and below it the sessions

PID 1 is a tiny reaper rather than sshd itself so that stopping sshd (a fault we inject)
behaves as on a real machine: the listener goes, sessions and daemons stay. A pidfile written
inside a PID namespace holds that namespace's numbers (1 for init), so every pid we record or
signal is a host-side pid, and before signalling one we check that /proc/PID/cmdline still
names our namespace (pid reuse).

Choices documented here:

* `up` on a state dir that holds a testbed raises TestbedError ("run `skeleton testbed down`
  first"); it is not idempotent, because a half-alive leftover is better removed than reused.
* The daemon runs from the host's own `app/.venv`, which `skeleton cluster bootstrap` makes
  (as on a real node); the config names the checkout's `.wheelhouse` when ./scripts/setup
  built one, so that works without network. Each host's PID 1 is the controller's
  interpreter (`sys.executable`, `-I -S`), and tests still run it inside hosts: `up` checks
  that the `skeleton` user can run it (a virtualenv under /root, mode 700, cannot be); if
  not, it raises a TestbedError naming the directory rather than re-exposing paths.
* `deploy.source` is always explicit: the checkout, or STATE/app for an installed package
  (never the state dir, which holds the controller's private key).
* Hosts share /tmp, /run and /var with the machine (only their home differs): the state dir
  lives in /tmp and sshd must read its host key from there.
* Argument errors (count, names, instance, rate, unknown host) are UsageError/SelectionError;
  everything the machine refuses is TestbedError.

The package: `state` (the values, names, state.json), `net` (bridge, veths, namespaces,
shaping), `hosts` (user, launch, banners, `host_exec`), `files` (keys and config files),
`procs` (proving a pid is ours, reaping), `faults` (injectors), `lifecycle` (`up`, `status`,
`down`); `host_init.py` is every host's PID 1. Test support only: the runtime never imports it
(`skeleton testbed` imports it inside the command).
"""

from skeleton_app.errors import TestbedError  # what every function here raises
from skeleton_app.testing.testbed.faults import (
    blackhole,
    clear_blackhole,
    freeze,
    hide_command,
    link_down,
    link_up,
    plant_command,
    real_command,
    replace_command,
    set_rate,
    small_disk,
    start_sshd,
    stop_sshd,
    thaw,
    unhide_command,
)
from skeleton_app.testing.testbed.hosts import host_exec
from skeleton_app.testing.testbed.lifecycle import down, status, up
from skeleton_app.testing.testbed.state import (
    APP_DIR,
    HOME,
    MARKER,
    USER,
    HostStatus,
    Testbed,
    TestbedDatabase,
    TestbedHost,
    bridge_name,
    default_state_dir,
    load,
    netns_name,
    veth_name,
)
from skeleton_app.testing.testbed.system import require_root

__all__ = [
    "APP_DIR",
    "HOME",
    "MARKER",
    "USER",
    "HostStatus",
    "Testbed",
    "TestbedDatabase",
    "TestbedError",
    "TestbedHost",
    "blackhole",
    "bridge_name",
    "clear_blackhole",
    "default_state_dir",
    "down",
    "freeze",
    "hide_command",
    "host_exec",
    "link_down",
    "link_up",
    "load",
    "netns_name",
    "plant_command",
    "real_command",
    "replace_command",
    "require_root",
    "set_rate",
    "small_disk",
    "start_sshd",
    "status",
    "stop_sshd",
    "thaw",
    "unhide_command",
    "up",
    "veth_name",
]
