"""The documentation runs, so it cannot rot.

In README.md and docs/*.md, a fenced block right after `<!-- run -->` is executed, in file
order and exactly as written; a block right after `<!-- output -->` lists lines that must
appear, in that order, in what the run block before it printed (`...` matches anything; any
run of spaces matches any other, as table columns widen with their content). In a `sh` block
every line must exit 0, or the code its comment names (`# ...: exit 4`).
`SKELETON_DOCS_SHOW=1 pytest -s tests/test_docs.py` prints what every block printed.

Where a block runs (`<!-- run: WHERE -->`):

    lab       (default) the guide's lab: a checkout of the app (code, tasks.py, fabfile.py,
              config.yaml) whose config names the session testbed's six hosts linux-01 ..
              linux-06 with the guide's roles; blocks run in that directory
    db        the lab, plus SKELETON_DATABASE_URL naming a fresh registry database
    testbed   the README's tour: from the repository root, inside namespaces of its own
              (network, mount, PID, a private /tmp), so its `skeleton testbed up` makes its own
              test cluster and everything it starts vanishes with it

Every block that shows a `skeleton`, `inv` or `fab` command or the Python API must be marked.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.ops.daemon import daemon_control
from skeleton_app.testing import testbed as tbm
from skeleton_app.testing.testbed import Testbed
from skeleton_app.testing.testbed.sudoers import sudo_rules
from tests.support.deploy_support import (
    daemons_stopped_after,
    host_path,
    make_source,
    settings_of,
    standin_command,
    unique_app_dir,
    variant,
)
from tests.support.helpers import REPO, chown_to_user, config_variant, skeleton

BIN = Path(sys.executable).parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# The login user's password is the machine's (sudo_rules): one worker runs these modules.
pytestmark = pytest.mark.xdist_group("sudo")
PORT = 8794  # the lab's stand-in daemon
ROLES = [["stt_realtime", "tts"], ["stt_batch"], ["tts"], ["llm"], ["stt_realtime"], ["audio"]]
MODEL = "en_US-lessac-medium"
SUDO_PASSWORD = "lab-sudo-pw"
HOME_FILES = ("x.wav", "y.wav", "config.yaml")  # what the Python examples copy to the nodes
MARKER = re.compile(r"<!-- (run|output|norun)(?::\s*([\w-]+))? -->")
FENCE = re.compile(r"(```+)(\w*)\s*")
MUST_RUN = re.compile(r"\bskeleton (cluster|testbed|nodes|db|runs)\b|^\s*(\S*/)?(inv|fab)\s"
                      r"|SSHExecutor|ClusterManager|_in_db\b|_from_db\b|Cluster\.from_config",
                      re.MULTILINE)


@dataclass
class Block:
    path: Path
    line: int
    marker: str | None  # run, norun or None
    where: str
    lang: str
    code: str
    output: str | None = None

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def parse(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.fullmatch(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == fence.group(1))
        marker = MARKER.fullmatch(lines[i - 1].strip()) if i else None
        code = "\n".join(lines[i + 1:end]) + "\n"
        if marker and marker.group(1) == "output":
            assert blocks and blocks[-1].marker == "run" and blocks[-1].output is None, (
                f"{path}:{i + 1}: an output block belongs right after a run block")
            blocks[-1].output = code
        else:
            blocks.append(Block(path, i + 1, marker.group(1) if marker else None,
                                (marker.group(2) if marker else None) or "lab",
                                fence.group(2), code))
        i = end + 1
    return blocks


def expected_exit(line: str) -> int:
    found = re.search(r"\s#[^'\"]*\bexit (\d+)\s*$", line)
    return int(found.group(1)) if found else 0


def shell_script(block: Block) -> str:
    """The block's lines, each followed by a check of its exit code."""
    script = ['check() { [ "$1" -eq "$2" ] && return 0;'
              ' echo "docs: line $3 exited $1, expected $2" >&2; exit 97; }',
              'sudo() { "$@"; }']  # we are root already; sudo may not even be installed
    for n, line in enumerate(block.code.splitlines(), block.line + 1):
        if line.strip() and not line.lstrip().startswith("#"):
            script += [line, f"check $? {expected_exit(line)} {n}"]
    return "\n".join(script) + "\n"


_BOX = re.compile(r"[\u2500-\u257f]")


def check_output(block: Block, stdout: str) -> None:
    assert block.output is not None
    actual = stdout.splitlines()
    at = 0
    # The docs show a terminal (tables with box drawing); the test reads a pipe, where
    # tables are plain aligned text: the box characters of an expected line are spaces.
    wants = (_BOX.sub(" ", w).strip() for w in block.output.splitlines())
    for want in filter(None, wants):
        pattern = re.compile(".*".join(r"\s+".join(map(re.escape, part.split()))
                                       for part in want.split("...")))
        at = next((k + 1 for k in range(at, len(actual)) if pattern.search(actual[k])), -1)
        assert at > 0, f"{block}: expected a line like {want!r} (in order) in:\n{stdout}"


def run(block: Block, *, cwd: Path, env: dict[str, str], timeout: float = 300) -> None:
    if block.lang == "python":
        argv = [sys.executable, "-c", block.code]
    else:
        assert block.lang == "sh", f"{block}: cannot run a {block.lang!r} block"
        argv = ["bash", "-c", shell_script(block)]
    if block.where == "testbed":
        # A private /tmp, so the tour's /tmp/skeleton-testbed-0 never meets a real one. The
        # checkout may itself live under /tmp: binding "." (resolved through the cwd,
        # which still points at the hidden directory) puts it back at the same path.
        argv = ["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc",
                "--propagation", "private", "sh", "-c",
                'cd "$0" && mount -t tmpfs skeleton-docs /tmp && mkdir -p "$0"'
                ' && mount --no-canonicalize --bind . "$0" && cd "$0" && exec "$@"',
                str(REPO),
                str(REPO / "scripts" / "contained"), *argv]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (
        f"{block} failed (exit {proc.returncode})\nstdout:\n{proc.stdout}\n"
        f"stderr:\n{proc.stderr}")
    if os.environ.get("SKELETON_DOCS_SHOW"):
        print(f"\n===== {block}\n{proc.stdout}{proc.stderr}")
    if block.output is not None:
        check_output(block, proc.stdout)



# ---------------------------------------------------------------- the lab


@dataclass
class Lab:
    testbed: Testbed
    project: Path
    config: Path
    app_dir: str
    model: bytes


def lab_node_ids(testbed: Testbed) -> dict[str, str]:
    """lab id (linux-01 ..) -> testbed host id (node-01 ..)"""
    return {f"linux-{h.index:02d}": h.id for h in testbed.hosts}


@pytest.fixture(scope="module")
def lab(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    project = tmp_path_factory.mktemp("docs") / "skeleton-app"
    make_source(project, "1.0")
    for name in ("tasks.py", "fabfile.py"):
        shutil.copy(REPO / name, project / name)
    app_dir = unique_app_dir("docs")
    ids = lab_node_ids(testbed)
    nodes = [{"id": lab_id, "host": testbed.host(host_id).ip, "roles": ROLES[i]}
             for i, (lab_id, host_id) in enumerate(ids.items())]
    config = config_variant(
        testbed, project / "config.yaml", app={"dir": app_dir}, deploy={"source": "."},
        daemon={"command": standin_command(PORT), "start_grace": 0.5, "stop_grace": 3,
                "api_port": PORT}, nodes=nodes)
    # A Piper voice "downloaded" on linux-01, for sync-models to spread.
    model = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(65536))
    voice = host_path(testbed, ids["linux-01"], f"{app_dir}/models/{MODEL}")
    voice.mkdir(parents=True)
    (voice / f"{MODEL}.onnx").write_bytes(model)
    (voice / f"{MODEL}.onnx.json").write_text('{"audio": {"sample_rate": 22050}}\n')
    chown_to_user(host_path(testbed, ids["linux-01"], app_dir))
    # `exec --sudo` (README "Coming from ..."): the login user may sudo with a password, which
    # the blocks read from a file, as a script would.
    (project / "sudo.pw").write_text(f"{SUDO_PASSWORD}\n")
    (project / "sudo.pw").chmod(0o600)
    try:
        with sudo_rules(testbed, SUDO_PASSWORD):
            yield Lab(testbed, project, config, app_dir, model)
    finally:
        with Cluster.from_config(config, env={}) as cluster:
            daemon_control(cluster, cluster.nodes, "stop")
        for host_id in ids.values():  # what the docs made on the shared hosts
            shutil.rmtree(host_path(testbed, host_id, app_dir), ignore_errors=True)
            shutil.rmtree(host_path(testbed, host_id, app_dir + "-releases"), ignore_errors=True)
            shutil.rmtree(testbed.host(host_id).home / "conf", ignore_errors=True)
            for name in HOME_FILES:
                (testbed.host(host_id).home / name).unlink(missing_ok=True)


def examples_effects(lab: Lab) -> None:
    """What docs/examples.md did, seen from the hosts' side."""
    for lab_id, host_id in lab_node_ids(lab.testbed).items():
        assert host_path(lab.testbed, host_id, f"{lab.app_dir}/VERSION").read_text() == "1.0\n"
        copy = host_path(lab.testbed, host_id, f"{lab.app_dir}/models/{MODEL}/{MODEL}.onnx")
        assert copy.read_bytes() == lab.model, lab_id
        assert (lab.project / "collected_logs" / f"{lab_id}.log").is_file()
    assert "standin starting" in (lab.project / "collected_logs" / "linux-02.log").read_text()
    with Cluster.from_config(lab.config, env={}) as cluster:
        status = daemon_control(cluster, cluster.nodes, "status")
    assert sorted(status.nonzero) == sorted(lab_node_ids(lab.testbed)), status.to_json()


EFFECTS: dict[str, Callable[[Lab], None]] = {"examples.md": examples_effects}


# ---------------------------------------------------------------- tests


def test_every_command_shown_is_executed() -> None:
    unmarked = [f"{b}: {b.code.strip().splitlines()[0]}" for path in DOCS for b in parse(path)
                if b.marker is None and MUST_RUN.search(b.code)]
    assert not unmarked, "blocks showing commands or the API must be run:\n" + "\n".join(
        unmarked)
    guide = "".join(b.code for b in parse(REPO / "docs" / "examples.md") if b.marker == "run")
    for shown in ("skeleton cluster status", "skeleton cluster deploy",
                  "skeleton cluster daemon restart", "skeleton cluster sync-models --source-node",
                  "skeleton cluster logs", "inv deploy --node linux-05",
                  'inv exec --command "uptime" --node linux-01',
                  "inv daemon --action restart --node linux-02",
                  "inv sync-models --source-node linux-01", "inv logs --lines 500",
                  "fab -H linux-01,linux-02 uptime",
                  'execute_on_all(hosts, "uptime", parallel=True)',
                  "await register_node_in_db(db, {", "await get_nodes_from_db(db)",
                  "await executor.copy_file(", "await executor.execute("):
        assert shown in guide, shown
    tour = "".join(b.code for b in parse(REPO / "README.md") if b.where == "testbed")
    for shown in ("testbed up", "cluster status", "cluster exec", "cluster deploy",
                  "cluster daemon", "cluster sync-models", "cluster logs", "inv ", "fab ",
                  "testbed down"):
        assert shown in tour, shown


COMING_FROM = "## Coming from clush / pdsh / Ansible / Fabric"
COMMAND_SPAN = re.compile(r"`((?:skeleton|fab|inv|echo|eval) [^`]+)`")


def test_every_command_of_the_coming_from_table_is_run() -> None:
    """Each skeleton command in the right-hand column of the README's "Coming from" table
    is in the run block right after the table, exactly as the table shows it."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(COMING_FROM):]
    section = section[:section.index("\n## ", 1)]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    block = next(b for b in parse(REPO / "README.md")
                 if b.marker == "run" and b.line > text[:text.index(COMING_FROM)].count("\n"))
    assert len(rows) >= 12
    for row in rows:
        ours = row.split(" | ", 1)[1]
        shown = COMMAND_SPAN.findall(ours)
        assert shown, row
        for command in (c.replace("\\|", "|") for c in shown):  # `\|`: a pipe in a table
            assert command in block.code, f"not run in {block}: {command}"


def test_output_matching_is_strict() -> None:
    block = Block(REPO / "README.md", 1, "run", "lab", "sh", "", output="a ... c\nd\n")
    check_output(block, "x\na b c\ny\nd\n")
    for wrong in ("d\na b c\n", "a b\nd\n", "a b c\n"):
        with pytest.raises(AssertionError):
            check_output(block, wrong)
    assert expected_exit("skeleton cluster exec 'x' --timeout 2   # killed, exit 4") == 4
    assert expected_exit("echo '# exit 4'") == 0


@pytest.mark.postgres  # `db` blocks take db_dsn through request.getfixturevalue
@pytest.mark.parametrize("path", [p for p in DOCS if any(b.marker == "run" for b in parse(p))],
                         ids=lambda p: p.name)
def test_docs_run(path: Path, request: pytest.FixtureRequest) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKELETON_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    lab: Lab | None = None
    for block in (b for b in parse(path) if b.marker == "run"):
        if block.where == "testbed":
            run(block, cwd=REPO, env=env)
            continue
        assert block.where in ("lab", "db"), f"{block}: unknown place {block.where!r}"
        lab = lab or request.getfixturevalue("lab")
        extra = {"SKELETON_DATABASE_URL": request.getfixturevalue("db_dsn")} if (
            block.where == "db") else {}
        run(block, cwd=lab.project, env={**env, **extra})
    if path.name in EFFECTS:
        assert lab is not None
        EFFECTS[path.name](lab)


# ---------------------------------------------------------------- the security notes hold


def _ssh_options(bed: Testbed, key: Path) -> list[str]:
    return ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={bed.state_dir / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5"]


def test_every_command_works_with_a_restricted_key(make_testbed: Callable[..., Testbed],
                                                   tmp_path: Path) -> None:
    """README: `restrict,from=...` on the keys breaks none of skeleton's commands, and sshd
    really applies the options (a wrong `from=` locks the controller out)."""
    bed = make_testbed(2)
    for host in bed.hosts:
        keys = host.home / ".ssh" / "authorized_keys"
        controller, *peers = keys.read_text().splitlines()
        keys.write_text("\n".join([f'restrict,from="{bed.gateway}" {controller}',
                                   *(f"restrict {peer}" for peer in peers)]) + "\n")
    app_dir = unique_app_dir("restricted")
    cfg = variant(bed, tmp_path, app_dir=app_dir, port=PORT)
    src = make_source(tmp_path / "src", "R")
    model = host_path(bed, "node-01", f"{app_dir}/models/voice")
    model.mkdir(parents=True)
    (model / "voice.onnx").write_bytes(b"\1" * 300_000)
    chown_to_user(host_path(bed, "node-01", app_dir))
    with daemons_stopped_after(settings_of(cfg)):
        for argv in (["exec", "uname -s"], ["status"], ["deploy", "--source", str(src)],
                     ["daemon", "start"], ["daemon", "status"],
                     ["sync-models", "--source-node", "node-01"],
                     ["logs", "--lines", "5", "--out", str(tmp_path / "logs")],
                     ["daemon", "stop"]):
            proc = skeleton("cluster", *argv, config=cfg)
            assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
    assert host_path(bed, "node-02", f"{app_dir}/models/voice/voice.onnx").stat().st_size
    for host in bed.hosts:
        keys = host.home / ".ssh" / "authorized_keys"
        keys.write_text(keys.read_text().replace(f'from="{bed.gateway}"', 'from="192.0.2.1"'))
    locked_out = skeleton("cluster", "exec", "true", config=cfg)
    assert locked_out.returncode == 4 and "auth: authentication failed" in locked_out.stdout


def test_rrsync_key_pushes_files_and_nothing_else(make_testbed: Callable[..., Testbed],
                                                  tmp_path: Path) -> None:
    """README: a key forced to `rrsync -wo APP_DIR` can rsync into the app dir, and can neither
    run commands nor read."""
    bed = make_testbed(1)
    host = bed.hosts[0]
    key = tmp_path / "ci-push"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with (host.home / ".ssh" / "authorized_keys").open("a") as fh:
        fh.write(f'restrict,command="rrsync -wo {tbm.APP_DIR}" '
                 f"{(tmp_path / 'ci-push.pub').read_text()}")
    src = make_source(tmp_path / "src", "CI")
    ssh = _ssh_options(bed, key)
    pushed = subprocess.run(["rsync", "-az", "--exclude", ".venv/", "-e", " ".join(ssh),
                             f"{src}/", f"{tbm.USER}@{host.ip}:"],
                            capture_output=True, text=True, timeout=60)
    assert pushed.returncode == 0, pushed.stderr
    assert (host.app_dir / "VERSION").read_text() == "CI\n"
    shell = subprocess.run([*ssh, f"{tbm.USER}@{host.ip}", "touch ~/pwned; uptime"],
                           capture_output=True, text=True, timeout=60)
    assert shell.returncode != 0 and "load average" not in shell.stdout
    fetched = subprocess.run(["rsync", "-a", "-e", " ".join(ssh),
                              f"{tbm.USER}@{host.ip}:VERSION", str(tmp_path / "got")],
                             capture_output=True, text=True, timeout=60)
    assert fetched.returncode != 0 and not (tmp_path / "got").exists()
    cfg = config_variant(bed, tmp_path / "ci.yaml", ssh={"identity_file": str(key)})
    own = skeleton("cluster", "exec", "touch ~/pwned", config=cfg)
    assert own.returncode == 1, own.stdout + own.stderr
    assert not (host.home / "pwned").exists()


# ---------------------------------------------------------------- the references are complete


def _section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_config_reference_names_every_key() -> None:
    import dataclasses

    from skeleton_app.config import NODE_KEYS, SECTIONS

    reference = _section("Configuration reference")
    for name, section in SECTIONS.items():
        rows = reference.split(f"| **{name}** |", 1)[1].split("| **", 1)[0]
        for field in dataclasses.fields(section):
            assert f"`{field.name}`" in rows, f"{name}.{field.name} is not in the reference"
    nodes = reference.split("| **nodes**", 1)[1]
    for key in NODE_KEYS:
        assert f"`{key}`" in nodes, f"nodes[].{key} is not in the reference"


def test_cli_reference_names_every_command_and_task() -> None:
    import click

    from skeleton_app.app.cli import cli

    reference = _section("CLI reference")

    def walk(command: click.Command, path: str) -> Iterator[str]:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, f"{path} {name}")
        else:
            yield path

    for path in walk(cli, "skeleton"):
        assert f"`{path}" in reference, f"{path} is not in the CLI reference"
    for task in ("status", "exec", "deploy", "daemon", "sync-models", "logs", "bootstrap"):
        assert f"`inv {task}" in reference, task
    for task in ("status", "uptime", "run", "deploy", "daemon"):
        assert re.search(rf"`fab -H \S+ {task}\b", reference), task
