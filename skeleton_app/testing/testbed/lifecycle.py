"""A testbed's life: `up` (claim an instance, build it), `status` and `down` (which removes
only what the state dir proves is ours)."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import stat
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from skeleton_app.errors import TestbedError, UsageError
from skeleton_app.testing import localdb
from skeleton_app.testing.testbed.files import (
    _host_keys,
    _keygen,
    _write_config,
    _write_controller_files,
    _write_host_files,
    _write_node_dsn,
)
from skeleton_app.testing.testbed.hosts import (
    SSHD,
    _banner,
    _check_interpreter,
    _ensure_user,
    _host_ids,
    _host_roles,
    _launch,
    _wait_banner,
)
from skeleton_app.testing.testbed.net import (
    _apply_rate,
    _check_rate,
    _claim_bridge,
    _configure_netns,
    _list_links,
    _list_namespaces,
    _make_network,
    _our_links,
    _our_namespaces,
)
from skeleton_app.testing.testbed.procs import (
    _children_of,
    _is_our_process,
    _marked_processes,
    _reap,
)
from skeleton_app.testing.testbed.state import (
    _STATE_MARKER,
    AUTO_INSTANCES,
    SUBNET_PREFIX,
    USER,
    HostStatus,
    Testbed,
    TestbedDatabase,
    TestbedHost,
    _check_instance,
    _gateway,
    _host_from_state,
    _host_ip,
    _read_state,
    _write_state,
    bridge_name,
    default_state_dir,
    load,
    netns_name,
    veth_name,
)
from skeleton_app.testing.testbed.sudoers import remove_sudo
from skeleton_app.testing.testbed.system import _INSTALL_HINT, _PATH, _run, _tail, require_root

_SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+-]*$")  # goes into sshd_config unquoted


def up(
    count: int | None = None,
    names: Sequence[str] = (),
    *,
    rate: str | None = None,
    db: bool = False,
    instance: int | None = 0,
    state_dir: str | os.PathLike[str] | None = None,
    roles: Mapping[str, Sequence[str]] | None = None,
) -> Testbed:
    """Start the hosts, write STATE/config.yaml and STATE/state.json; return the testbed.

    `names` default to node-01..node-NN (`count`, default 3). Roles default to `testbed`
    for every host plus `stt` on odd and `tts` on even ones; `roles` overrides per host.
    `rate` (tc syntax, "200mbit") shapes both directions of every host's link. `db` also
    starts a throwaway PostgreSQL on 127.0.0.1 and the gateway. `instance=None` claims a
    free instance (for tests running side by side). On any failure everything already
    created is removed again.
    """
    require_root()
    ids = _host_ids(count, names)
    host_roles = _host_roles(ids, roles)
    if rate is not None:
        _check_rate(rate)
    if instance is not None:
        _check_instance(instance)
    state = Path(state_dir) if state_dir is not None else None
    if state is not None:
        _check_state_path(state)
    _check_proc()
    _check_tools(rate is not None)
    account = _ensure_user()
    _check_interpreter(account)

    instance, state = _claim(instance, state)
    try:
        return _build(instance, state, ids, host_roles, rate, db, account)
    except BaseException:
        with contextlib.suppress(Exception):
            down(state, instance=instance)
        raise


def status(state_dir: str | os.PathLike[str] | None = None, instance: int = 0
           ) -> list[HostStatus]:
    """One line per host: is its PID 1 alive, does its sshd answer with a banner."""
    tb = load(state_dir, instance)
    with ThreadPoolExecutor(max_workers=min(32, max(1, len(tb.hosts)))) as pool:
        reachable = list(pool.map(lambda h: _banner(h.ip, timeout=2.0), tb.hosts))
    return [
        HostStatus(id=h.id, ip=h.ip, namespace=h.namespace, pid=h.init_pid,
                   alive=_is_our_process(h.init_pid, h.namespace), reachable=ok)
        for h, ok in zip(tb.hosts, reachable, strict=True)
    ]


def down(state_dir: str | os.PathLike[str] | None = None, instance: int = 0) -> list[str]:
    """Remove the testbed: processes, namespaces, links, database, state dir.

    Works from state.json when it is there, and also sweeps leftovers of the instance by
    name (namespaces `sktbN-*`, links `skNh*` and `sktbN`, processes carrying our marker in
    those namespaces), so it is safe after a crash and safe to run twice. Found by name only,
    a thing is ours only when the state dir proves this instance was made from it (state.json,
    or the marker file `up` writes before it creates anything): without that proof, a bridge,
    namespace or link that merely bears the instance's names (someone else's, or another
    state dir's) is left, with a line `left ...` saying so. Returns what was removed (and
    left), one short line each.
    """
    require_root()
    state = Path(state_dir) if state_dir is not None else default_state_dir(instance)
    data = _read_state(state)
    if data is not None:
        instance = int(data["instance"])
    _check_instance(instance)
    removed: list[str] = []
    ours = data is not None or (state / _STATE_MARKER).exists()

    recorded = [_host_from_state(state, h) for h in (data or {}).get("hosts", [])]
    namespaces = {h.namespace for h in recorded}
    links = {h.veth for h in recorded}
    by_name = [*_our_namespaces(instance), *_our_links(instance)]
    if ours:
        namespaces |= set(_our_namespaces(instance))
        links |= set(_our_links(instance))
    elif by_name:
        removed.append(f"left {', '.join(sorted(by_name))}: no testbed state in {state}"
                       " proves them ours")

    # 1. Processes. Killing a host's PID 1 makes the kernel kill everything in its PID
    # namespace; killing the launcher's group takes the launcher and PID 1 together.
    victims: list[int] = []
    stopped = 0
    for h in recorded:
        pids = [pid for pid in (h.launcher_pid, h.init_pid)
                if pid and _is_our_process(pid, h.namespace)]
        if h.launcher_pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(h.launcher_pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        victims += pids
        stopped += bool(pids)
    leftovers = 0
    for pid, _ns in _marked_processes(namespaces):
        # Processes the state file does not know (crash during `up`, state file lost).
        if pid not in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            victims.append(pid)
            leftovers += 1
    for pid in victims:
        _reap(pid)
    if stopped:
        removed.append(f"stopped {stopped} host(s)")
    if leftovers:
        removed.append(f"killed {leftovers} leftover process(es)")

    # 2. The database, before its directory goes.
    db_dir = state / "db"
    if db_dir.is_dir():
        localdb.stop_postgres(db_dir)
        removed.append(f"stopped PostgreSQL in {db_dir}")

    # 2b. sudo rules a test added (testbed/sudoers.py): the machine's /etc, so undone here
    # too, from what the state dir recorded, should the test have crashed.
    removed += remove_sudo(state)

    # 3. Namespaces (their eth0 ends, hence the veth pairs, go with them) and links.
    existing_ns = set(_list_namespaces())
    commands = [f"netns del {ns}" for ns in sorted(namespaces) if ns in existing_ns]
    existing_links = set(_list_links())
    commands += [f"link del {ln}" for ln in sorted(links) if ln in existing_links]
    bridge = bridge_name(instance)
    if bridge in existing_links and ours:
        commands.append(f"link del {bridge}")
    elif bridge in existing_links:
        removed.append(f"left bridge {bridge}: no testbed state in {state} proves it ours"
                       f" (if it is a leftover: ip link del {bridge})")
    if commands:
        # -force: carry on past a veth that vanished with its namespace meanwhile.
        _run(["ip", "-force", "-batch", "-"], input="\n".join(commands) + "\n", check=False)
        removed += [c.replace("netns del", "namespace").replace("link del", "link")
                    for c in commands]

    # 4. The state dir, only if it is one of ours (never a directory someone passed by mistake).
    if (state / _STATE_MARKER).exists():
        shutil.rmtree(state, ignore_errors=True)
        removed.append(f"state dir {state}")
    return removed


def _check_state_path(state: Path) -> None:
    # The path ends up in sshd_config and in `-o` option values: keep it boring.
    if not _SAFE_PATH_RE.match(str(state.absolute())):
        raise UsageError(
            f"testbed state dir {str(state)!r} must be an absolute path of letters, digits"
            " and . _ / + - only"
        )


def _check_proc() -> None:
    # Under `unshare --pid` without --mount-proc, /proc shows another PID namespace: every
    # pid we would read there belongs to someone else.
    try:
        own = os.readlink("/proc/self")
    except OSError:
        own = ""
    if own != str(os.getpid()):
        raise TestbedError(
            "/proc does not show this process's PID namespace: run under"
            " `unshare --pid --fork --mount-proc`"
        )


def _check_tools(need_tc: bool) -> None:
    tools = ["ip", "unshare", "nsenter", "ssh-keygen", "mount", "hostname"]
    if need_tc:
        tools.append("tc")
    missing = [t for t in tools if shutil.which(t, path=_PATH) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    if missing:
        raise TestbedError(f"missing {', '.join(missing)}: {_INSTALL_HINT}")


def _claim(instance: int | None, state: Path | None) -> tuple[int, Path]:
    """Take an instance: its state dir and its bridge. The bridge is the atomic claim."""
    if instance is not None:
        chosen = state or default_state_dir(instance)
        _claim_state_dir(chosen)
        problem = _claim_bridge(instance)
        if problem:
            _release_state_dir(chosen)
            raise TestbedError(problem)
        return instance, chosen
    if state is None and os.environ.get("SKELETON_TESTBED_DIR"):
        state = default_state_dir()  # one fixed directory, whatever the instance
    # Spread processes that start at the same moment over different instances.
    start = os.getpid() % len(AUTO_INSTANCES)
    candidates = [*AUTO_INSTANCES[start:], *AUTO_INSTANCES[:start]]
    if state is not None:
        _claim_state_dir(state)
    for candidate in candidates:
        chosen = state or default_state_dir(candidate)
        if state is None:
            try:
                _claim_state_dir(chosen)
            except TestbedError:
                continue
        if _claim_bridge(candidate) is None:
            return candidate, chosen
        if state is None:
            _release_state_dir(chosen)
    if state is not None:
        _release_state_dir(state)
    raise TestbedError("no free testbed instance: run `skeleton testbed down` on old ones")


def _claim_state_dir(state: Path) -> None:
    _check_private_dir(state)
    if _read_state(state) is not None or (state / _STATE_MARKER).exists():
        raise TestbedError(
            f"a testbed already exists in {state}: run `skeleton testbed down` first"
        )
    if state.exists() and (not state.is_dir() or any(state.iterdir())):
        raise TestbedError(f"testbed state dir {state} exists and is not empty")
    state.mkdir(parents=True, exist_ok=True)
    # Others must traverse it: PostgreSQL runs as `postgres` in STATE/db.
    os.chmod(state, 0o755)
    (state / _STATE_MARKER).write_text("skeleton testbed state; removed by `down`\n")


def _check_private_dir(state: Path) -> None:
    """Refuse a state dir (the default is a fixed name under /tmp) that another user made or
    can write to: it will hold the cluster's private key, and root writes into it."""
    try:
        st = state.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symlink"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by this user"
    elif st.st_mode & 0o022:
        problem = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    else:
        return
    raise TestbedError(f"testbed state dir {state} {problem}: refusing it; remove it or give"
                       " another one (--dir, $SKELETON_TESTBED_DIR)")


def _release_state_dir(state: Path) -> None:
    (state / _STATE_MARKER).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        state.rmdir()


def _build(
    instance: int,
    state: Path,
    ids: Sequence[str],
    roles: Mapping[str, tuple[str, ...]],
    rate: str | None,
    db: bool,
    account: pwd.struct_passwd,
) -> Testbed:
    gateway = _gateway(instance)
    hosts = tuple(
        TestbedHost(
            id=node_id, index=i, ip=_host_ip(instance, i),
            namespace=netns_name(instance, node_id), veth=veth_name(instance, i),
            roles=roles[node_id], dir=state / "hosts" / node_id, launcher_pid=0, init_pid=0,
            rate=rate,
        )
        for i, node_id in enumerate(ids, start=1)
    )
    tb = Testbed(instance=instance, state_dir=state, bridge=bridge_name(instance),
                 subnet=f"{SUBNET_PREFIX}.{instance}.0/24", gateway=gateway, hosts=hosts)
    # Recorded first so that `down` finds every name even if we die half-way.
    _write_state(tb)

    workers = min(16, len(hosts))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        controller_pub = _keygen(tb.identity_file, "skeleton-testbed-controller")
        keys = list(pool.map(_host_keys, hosts))
        host_pubs = {h.id: k[0] for h, k in zip(hosts, keys, strict=True)}
        node_pubs = [k[1] for k in keys]
        _write_controller_files(tb, host_pubs)
        list(pool.map(lambda h: _write_host_files(tb, h, controller_pub, node_pubs, host_pubs,
                                                  account), hosts))

        _make_network(tb)
        list(pool.map(lambda h: _configure_netns(tb, h), hosts))
        if rate is not None:
            for h in hosts:
                _apply_rate(h.veth, None, rate)
            list(pool.map(lambda h: _apply_rate("eth0", h.namespace, rate), hosts))

        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        launched = tuple(replace(h, launcher_pid=_launch(h)) for h in hosts)
        tb = replace(tb, hosts=launched)
        _write_state(tb)

        deadline = time.monotonic() + 30.0 + 0.2 * len(hosts)
        ready = list(pool.map(lambda h: _wait_banner(h.ip, deadline, h.launcher_pid),
                              launched))
    failed = [h for h, ok in zip(launched, ready, strict=True) if not ok]
    if failed:
        h = failed[0]
        raise TestbedError(
            f"{len(failed)} host(s) did not start, e.g. {h.id}: sshd: {_tail(h.sshd_log)};"
            f" launcher: {_tail(h.dir / 'launcher.log')}"
        )
    inits = _children_of([h.launcher_pid for h in launched])
    tb = replace(tb, hosts=tuple(replace(h, init_pid=inits.get(h.launcher_pid, 0))
                                 for h in launched))
    missing = [h.id for h in tb.hosts if not h.init_pid]
    if missing:
        raise TestbedError(f"cannot find the init process of {', '.join(missing)}")
    _write_state(tb)

    if db:
        pg = localdb.start_postgres(state / "db", listen=("127.0.0.1", gateway))
        tb = replace(tb, db=TestbedDatabase(dir=pg.base_dir, port=pg.port, pid=pg.pid,
                                            dsn=pg.dsn, host_dsn=pg.dsn_for(gateway)))
        _write_state(tb)
    _write_config(tb)
    if tb.db is not None:
        _seed_registry(tb)
    return tb


def _seed_registry(tb: Testbed) -> None:
    """With a DSN configured, commands take their nodes from the database only: create the
    schema and register the hosts, so the testbed is usable before any daemon runs. Each
    host gets its own credentials (what `skeleton nodes credentials ID --install` writes):
    a daemon never uses the operator's DSN of config.yaml."""
    from skeleton_app.config import load_config
    from skeleton_app.registry import import_nodes, init_schema, open_registry

    assert tb.db is not None
    init_schema(tb.db.dsn)
    settings = load_config(tb.config_path, env={})
    account = pwd.getpwnam(USER)
    with open_registry(settings) as registry:
        import_nodes(registry, [
            {"id": h.id, "host": h.ip, "roles": list(h.roles)} for h in tb.hosts
        ], source=str(tb.config_path))
        for host in tb.hosts:
            _write_node_dsn(host, registry.issue_credentials(host.id), account)
