"""The status probe: the real payloads/status.sh run locally under dash, and its parser.

The probe runs as `sh -s -- ARGS` with the script on stdin, exactly as it is sent over SSH, with
a PATH holding only the tools it may use plus fake `nvidia-smi` / `systemctl` where a case
needs them, against real processes and pid files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skeleton_app import payloads
from skeleton_app.app.views.common import format_bytes, format_duration, format_usage
from skeleton_app.app.views.status import daemon_cell, disk_cell, gpu_cell, load_cell, mem_cell
from skeleton_app.gpu import QUERY_ARGS, GpuReport, GpuState
from skeleton_app.ops.status_probe import NodeStatus, parse_status, probe_args, probe_script
from tests.support.shared_fixtures import nvidia_smi_fixture

SCRIPT = Path(__file__).resolve().parents[2] / "skeleton_app" / "payloads" / "status.sh"
DASH = shutil.which("dash") or "/bin/sh"
# Everything the probe may call besides shell builtins. A probe that needs more must say so here.
PROBE_TOOLS = ("uname", "dirname", "df", "timeout", "flock")
MARKER = "skeleton_app-status-test"
LOCK = "run/daemon.lock"

DRIVER_FAILURE = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A PATH directory with only the probe's tools, as symlinks."""
    path = tmp_path / "bin"
    path.mkdir()
    for tool in PROBE_TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed by status.sh"
        (path / tool).symlink_to(found)
    return path


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    path = tmp_path / "app dir with 'quotes' and $(spaces)"
    path.mkdir()
    return path


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; all killed and reaped at the end, pass or fail."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def probe(
    app_dir: Path | str,
    bin_dir: Path,
    *,
    manager: str = "process",
    pid_file: str = "run/daemon.pid",
    lock_file: str = LOCK,
    unit: str = "skeleton-daemon",
    user_unit: bool = False,
    shell: str = DASH,
    env: dict[str, str] | None = None,
) -> tuple[NodeStatus, str]:
    args = probe_args(
        str(app_dir),
        manager=manager,
        pid_file=pid_file,
        lock_file=lock_file,
        unit=unit,
        user_unit=user_unit,
    )
    proc = subprocess.run(
        [shell, "-s", "--", *args],
        input=probe_script(),
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(bin_dir), "HOME": str(bin_dir), **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return parse_status(proc.stdout), proc.stdout


def meminfo_kb(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0])
    raise KeyError(key)


# ---- the script itself -----------------------------------------------------------------------


def test_probe_script_is_the_packaged_file_after_the_prelude() -> None:
    prelude = (SCRIPT.parent / payloads.PRELUDE).read_text()
    assert probe_script() == prelude + SCRIPT.read_text()



def test_script_queries_what_the_parser_expects() -> None:
    # The query is spelled out in the script; gpu.py parses columns in QUERY_FIELDS order.
    text = SCRIPT.read_text()
    for arg in QUERY_ARGS:
        assert arg in text


# ---- host facts --------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_host_facts(shell: str, app_dir: Path, bin_dir: Path) -> None:
    found = shutil.which(shell)
    assert found is not None, f"{shell} missing (Debian ships both dash and bash)"
    before = time.monotonic()
    status, raw = probe(app_dir, bin_dir, shell=found)
    assert time.monotonic() - before < 5

    assert status.complete
    assert status.hostname == os.uname().nodename
    assert status.load is not None and all(value >= 0 for value in status.load)
    assert status.mem_total == meminfo_kb("MemTotal") * 1024
    assert status.mem_available is not None and 0 < status.mem_available <= status.mem_total
    assert status.uptime_s is not None
    assert status.uptime_s == pytest.approx(
        float(Path("/proc/uptime").read_text().split()[0]), abs=5
    )
    fs = os.statvfs(app_dir)
    assert status.disk_total == pytest.approx(fs.f_blocks * fs.f_frsize, abs=1024)
    assert status.disk_free == pytest.approx(fs.f_bavail * fs.f_frsize, rel=0.05)
    assert f"disk_path={app_dir}\n" in raw
    # No nvidia-smi on this PATH: a node without GPUs, not an error.
    assert status.gpu == GpuReport.missing()
    assert "--- begin gpu" not in raw
    assert status.code_version is None


def test_disk_of_an_app_dir_not_deployed_yet(tmp_path: Path, bin_dir: Path) -> None:
    missing = tmp_path / "not" / "there" / "yet"
    status, raw = probe(missing, bin_dir)
    assert f"disk_path={tmp_path}\n" in raw
    fs = os.statvfs(tmp_path)
    assert status.disk_total == pytest.approx(fs.f_blocks * fs.f_frsize, abs=1024)
    assert status.daemon_running is False
    assert status.daemon_detail == f"no app dir {missing}"


def test_relative_app_dir_with_a_leading_dash(tmp_path: Path, bin_dir: Path) -> None:
    # The probe runs in the login directory; relative names must not turn into options.
    (tmp_path / "-app").mkdir()
    proc = subprocess.run(
        [DASH, "-s", "--", "-app", "process", "run/daemon.pid", LOCK, "u", "0"],
        input=probe_script(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": str(bin_dir)},
    )
    assert proc.returncode == 0 and proc.stderr == ""
    status = parse_status(proc.stdout)
    assert "disk_path=-app\n" in proc.stdout
    assert status.disk_total is not None
    assert status.daemon_detail == "no pid file run/daemon.pid"


def test_code_version_from_the_deploy_digest(app_dir: Path, bin_dir: Path) -> None:
    (app_dir / ".skeleton-deploy").mkdir()
    (app_dir / ".skeleton-deploy" / "digest").write_text("sha256-3f2a9c\nmore lines\n")
    status, _ = probe(app_dir, bin_dir)
    assert status.code_version == "sha256-3f2a9c"


def test_no_tools_at_all_still_reports_what_proc_knows(app_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = subprocess.run(
        [
            DASH,
            "-s",
            "--",
            *probe_args(
                str(app_dir),
                manager="systemd",
                pid_file="p",
                lock_file=LOCK,
                unit="u",
                user_unit=False,
            ),
        ],
        input=probe_script(),
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(empty)},
    )
    assert proc.returncode == 0
    status = parse_status(proc.stdout)
    assert status.complete
    assert status.hostname and status.load and status.mem_total and status.uptime_s
    assert status.gpu == GpuReport.missing()
    assert status.daemon_running is None
    assert status.daemon_detail == "systemctl not found"


# ---- GPUs through a fake nvidia-smi -------------------------------------------------------------


def fake_nvidia_smi(bin_dir: Path, body: str) -> None:
    # The fake refuses any other arguments than the probe's query, so a drift in the script's
    # query shows up here.
    expected = " ".join(QUERY_ARGS)
    write_script(
        bin_dir / "nvidia-smi",
        f'[ "$*" = "{expected}" ] || {{ echo "unexpected arguments: $*" >&2; exit 99; }}\n' + body,
    )


def test_gpu_from_the_real_capture(app_dir: Path, bin_dir: Path) -> None:
    capture = nvidia_smi_fixture("nvidia-smi-query.csv")
    fake_nvidia_smi(bin_dir, f"exec /bin/cat '{capture}'\n")
    status, raw = probe(app_dir, bin_dir)
    assert "gpu_exit=0\n--- begin gpu\n0, NVIDIA H200," in raw
    assert status.gpu is not None and status.gpu.state is GpuState.OK
    (gpu,) = status.gpu.gpus
    assert (gpu.name, gpu.memory_total_mib, gpu.temperature_c) == ("NVIDIA H200", 143771, 38)
    assert gpu_cell(status.gpu) == "H200 0/140GiB 0% 38°C"


def test_gpu_broken_driver(app_dir: Path, bin_dir: Path) -> None:
    fake_nvidia_smi(bin_dir, f'echo "{DRIVER_FAILURE}"\necho\nexit 9\n')
    status, _ = probe(app_dir, bin_dir)
    assert status.gpu == GpuReport.failed(DRIVER_FAILURE, exit_code=9)
    assert gpu_cell(status.gpu) == "err: couldn't communicate with the NVIDIA driver"
    assert status.complete and status.mem_total  # the rest of the report is intact


def test_gpu_error_on_stderr_only(app_dir: Path, bin_dir: Path) -> None:
    message = "Failed to initialize NVML: Driver/library version mismatch"
    fake_nvidia_smi(bin_dir, f'echo "{message}" >&2\nexit 18\n')
    status, _ = probe(app_dir, bin_dir)
    assert status.gpu == GpuReport.failed(message, exit_code=18)


def test_gpu_hung_driver_is_cut_off(app_dir: Path, bin_dir: Path) -> None:
    fake_nvidia_smi(bin_dir, "exec /bin/sleep 30\n")
    before = time.monotonic()
    status, _ = probe(app_dir, bin_dir, env={"SKELETON_STATUS_GPU_TIMEOUT": "1"})
    assert time.monotonic() - before < 5
    assert status.gpu == GpuReport.failed("nvidia-smi did not answer within 1 s", exit_code=124)
    assert status.complete


@pytest.mark.parametrize(
    ("tool", "manager", "split_after"),
    [("systemctl", "systemd", "(probe_daemon)\n"), ("nvidia-smi", "process", "(probe_gpu)\n")],
)
def test_a_tool_reading_stdin_cannot_eat_the_script(
    app_dir: Path, bin_dir: Path, tool: str, manager: str, split_after: str
) -> None:
    # Over SSH the script arrives in packets; a tool that reads stdin while the shell waits
    # for the next packet would swallow the rest of the script. Deliver it in two parts, the
    # second only after the greedy tool has started.
    write_script(bin_dir / tool, "/bin/cat >/dev/null\necho active\n")
    script = probe_script().encode()
    cut = script.index(split_after.encode()) + len(split_after)
    args = probe_args(
        str(app_dir), manager=manager, pid_file="p", lock_file=LOCK, unit="u", user_unit=False
    )
    proc = subprocess.Popen(
        [DASH, "-s", "--", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={"PATH": str(bin_dir)},
    )
    assert proc.stdin is not None
    proc.stdin.write(script[:cut])
    proc.stdin.flush()
    time.sleep(0.5)
    try:
        proc.stdin.write(script[cut:])
        proc.stdin.close()
    except BrokenPipeError:
        pass
    proc.stdin = None  # closed above: communicate() only reads, and keeps its timeout
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert parse_status(out.decode()).complete


# ---- daemon, process manager ----------------------------------------------------------------


def start_daemon(processes: list[subprocess.Popen[bytes]], *argv: str) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", *argv],
        stdin=subprocess.DEVNULL,
    )
    processes.append(proc)
    return proc.pid


def write_pid(app_dir: Path, pid: int | str) -> None:
    (app_dir / "run").mkdir(exist_ok=True)
    (app_dir / "run" / "daemon.pid").write_text(f"{pid}\n")


def start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat, counted after the last ')'."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def record(pid: int, start: int | None = None) -> str:
    """A pid file record as daemon.sh writes it: pid, start time, boot id."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{pid} {start_time(pid) if start is None else start} {boot}"


def test_daemon_running(
    app_dir: Path, bin_dir: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    pid = start_daemon(processes, MARKER)
    write_pid(app_dir, record(pid))
    status, _ = probe(app_dir, bin_dir)
    assert (status.daemon_running, status.daemon_pid, status.daemon_detail) == (True, pid, None)
    assert daemon_cell(status) == "✓"


def test_daemon_absolute_pid_file(
    tmp_path: Path, app_dir: Path, bin_dir: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    pid = start_daemon(processes, MARKER)
    pid_file = tmp_path / "elsewhere.pid"
    pid_file.write_text(record(pid))  # no trailing newline
    status, _ = probe(app_dir, bin_dir, pid_file=str(pid_file))
    assert (status.daemon_running, status.daemon_pid) == (True, pid)


def test_daemon_no_pid_file(app_dir: Path, bin_dir: Path) -> None:
    status, _ = probe(app_dir, bin_dir)
    assert status.daemon_running is False
    assert status.daemon_detail == "no pid file run/daemon.pid"
    assert daemon_cell(status) == "✗"


def test_daemon_stale_pid_file(app_dir: Path, bin_dir: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_pid(app_dir, f"{gone.pid} 4242 {record(os.getpid()).split()[2]}")
    status, _ = probe(app_dir, bin_dir)
    assert (status.daemon_running, status.daemon_pid) == (False, None)
    assert status.daemon_detail == f"stale pid file run/daemon.pid: pid {gone.pid} is gone"


def test_daemon_pid_reused_by_another_process(
    app_dir: Path, bin_dir: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    pid = start_daemon(processes, "some-other-program")
    write_pid(app_dir, record(pid, start=start_time(pid) + 3))  # it started at another time
    status, _ = probe(app_dir, bin_dir)
    assert status.daemon_running is False
    assert status.daemon_detail is not None and "is another process" in status.daemon_detail


def test_daemon_zombie_is_not_running(app_dir: Path, bin_dir: Path) -> None:
    # Not yet reaped: /proc still lists the pid, but nothing runs.
    zombie = subprocess.Popen([sys.executable, "-c", "pass", MARKER])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{zombie.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        write_pid(app_dir, record(zombie.pid))
        status, _ = probe(app_dir, bin_dir)
        assert status.daemon_running is False
        assert "is gone" in (status.daemon_detail or "")
    finally:
        zombie.wait()


@pytest.mark.parametrize("content", ["", "garbage", "0", "1", "-5", "12x", "007", "99999999999",
                                     "1234", "1234 56", "1234 x5 boot"])
def test_daemon_invalid_pid_file(app_dir: Path, bin_dir: Path, content: str) -> None:
    write_pid(app_dir, content)
    status, _ = probe(app_dir, bin_dir)
    assert status.daemon_running is False
    assert status.daemon_pid is None
    assert status.daemon_detail == (
        "pid file run/daemon.pid does not hold a valid record (PID START_TIME BOOT_ID)")


def test_daemon_holding_the_lock_is_running_whatever_the_pid_file_says(
    app_dir: Path, bin_dir: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    # The daemon (a session leader holding the lock file open) is found without its record.
    (app_dir / "run").mkdir()
    flock = shutil.which("flock")
    assert flock
    holder = subprocess.Popen([flock, str(app_dir / LOCK), sys.executable, "-c",
                               "import time; time.sleep(60)", MARKER], start_new_session=True)
    processes.append(holder)
    for content in ("garbage", "0", record(os.getpid(), start=start_time(os.getpid()) + 1)):
        write_pid(app_dir, content)
        deadline = time.monotonic() + 10
        while (status := probe(app_dir, bin_dir)[0]).daemon_running is not True:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        assert status.daemon_pid == holder.pid


def test_a_lock_held_by_a_nameless_process_is_still_running(
    app_dir: Path, bin_dir: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    # Held by a process that is no session leader: running, pid unknown; never "not running".
    (app_dir / "run").mkdir()
    flock = shutil.which("flock")
    assert flock
    holder = subprocess.Popen([flock, str(app_dir / LOCK), sys.executable, "-c",
                               "import time; time.sleep(60)", MARKER])
    processes.append(holder)
    deadline = time.monotonic() + 10
    while (status := probe(app_dir, bin_dir)[0]).daemon_running is not True:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status.daemon_pid is None
    assert "neither" in (status.daemon_detail or "")


def test_probe_never_matches_itself(app_dir: Path, bin_dir: Path) -> None:
    # The probe's own argv carries the marker; a pid file naming the probe is not a daemon.
    # The wrapper writes its own pid, then becomes the probe by exec.
    (app_dir / "run").mkdir()
    boot = record(os.getpid()).split()[2]
    start = "$(/usr/bin/cut -d')' -f2- /proc/$$/stat | /usr/bin/awk '{print $20}')"
    wrapper = f'echo "$$ {start} {boot}" > run/daemon.pid && exec {DASH} -s -- "$@"'
    proc = subprocess.run(
        [
            DASH,
            "-c",
            wrapper,
            "wrapper",
            *probe_args(
                str(app_dir),
                manager="process",
                pid_file="run/daemon.pid",
                lock_file=LOCK,
                unit="",
                user_unit=False,
            ),
        ],
        input=probe_script(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=app_dir,
        env={"PATH": str(bin_dir)},
    )
    status = parse_status(proc.stdout)
    assert status.daemon_running is False, proc.stdout + proc.stderr
    assert "is another process" in (status.daemon_detail or "")


# ---- daemon, systemd manager ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "code", "running"),
    [
        ("active", 0, True),
        ("inactive", 3, False),
        ("failed", 3, False),
        ("activating", 3, False),
        ("", 1, None),
    ],
)
def test_systemd_states(
    app_dir: Path, bin_dir: Path, tmp_path: Path, state: str, code: int, running: bool | None
) -> None:
    calls = tmp_path / "calls"
    write_script(
        bin_dir / "systemctl",
        f'echo "$*" >> "{calls}"\n'
        'case "$*" in\n'
        f'  *is-active*) [ -z "{state}" ] || echo "{state}"; exit {code} ;;\n'
        "  *show*) echo 4242 ;;\n"
        "esac\n",
    )
    status, _ = probe(app_dir, bin_dir, manager="systemd", unit="my-unit.service")
    assert status.daemon_running is running
    assert status.daemon_pid == 4242
    said = state or "no answer from systemctl"
    assert status.daemon_detail == f"systemd unit my-unit.service: {said}"
    assert calls.read_text().splitlines() == [
        "is-active -- my-unit.service",
        "show --property=MainPID --value -- my-unit.service",
    ]


def test_systemd_user_unit(app_dir: Path, bin_dir: Path, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    write_script(
        bin_dir / "systemctl", f'echo "$*" >> "{calls}"\n[ "$2" = show ] && echo 0 || echo active\n'
    )
    status, _ = probe(app_dir, bin_dir, manager="systemd", unit="u", user_unit=True)
    assert status.daemon_running is True
    assert status.daemon_pid is None  # MainPID=0: no main process
    assert calls.read_text().splitlines()[0] == "--user is-active -- u"


def test_unknown_manager(app_dir: Path, bin_dir: Path) -> None:
    status, _ = probe(app_dir, bin_dir, manager="upstart")
    assert status.daemon_running is None
    assert status.complete


# ---- parser ----------------------------------------------------------------------------------


SAMPLE = """\
probe=skeleton-status/1
hostname=node-01
daemon_manager=process
daemon_running=1
daemon_pid=4321
load=0.50 1.25 2.00
mem_total_kb=16000000
mem_available_kb=12000000
disk_path=/srv/app
disk_total_kb=100000000
disk_free_kb=40000000
uptime_s=93784.12
code_version=sha256-abc
gpu_exit=0
--- begin gpu
0, NVIDIA H200, GPU-a, 143771, 10240, 133000, 50, 61, 300.00, 580.159.04
1, NVIDIA H200, GPU-b, 143771, 20480, 123000, 100, 70, 600.00, 580.159.04
--- end gpu
probe_end=1
"""


def test_parse_sample() -> None:
    status = parse_status(SAMPLE)
    assert status.hostname == "node-01"
    assert (status.daemon_running, status.daemon_pid) == (True, 4321)
    assert status.load == (0.5, 1.25, 2.0)
    assert status.mem_total == 16_000_000 * 1024
    assert status.mem_used == 4_000_000 * 1024
    assert status.disk_used == 60_000_000 * 1024
    assert status.uptime_s == 93784.12
    assert status.code_version == "sha256-abc"
    assert status.complete
    assert status.gpu is not None and len(status.gpu.gpus) == 2
    assert gpu_cell(status.gpu) == "2×H200 30/281GiB 75% 70°C"
    assert load_cell(status) == "0.50 1.25 2.00"
    assert mem_cell(status) == "3.8/15GiB"
    assert disk_cell(status) == "57/95GiB"
    assert format_duration(status.uptime_s) == "1d02h"


def test_as_dict_is_json_ready() -> None:
    import json

    data = json.loads(json.dumps(parse_status(SAMPLE).as_dict()))
    assert data["gpu"]["state"] == "ok"
    assert data["gpu"]["gpus"][1]["uuid"] == "GPU-b"
    assert data["load"] == [0.5, 1.25, 2.0]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\x00\xff garbage \x1b[31m",
        "=\n==\nhostname\nload=1 2\nload=a b c\nmem_total_kb=-5\nmem_total_kb=1.5\n",
        "daemon_running=yes\ndaemon_pid=²\nuptime_s=nan\nuptime_s=inf\ngpu_exit=x\n",
        "gpu_exit=0\n--- begin gpu\n0, NVIDIA H200, GPU-a, 1",  # cut off mid-section
        "load=1 2 3 4\ndisk_total_kb=99999999999999999999999\n" + "x" * 100_000,
    ],
)
def test_parse_never_raises_on_garbage(text: str) -> None:
    status = parse_status(text)
    assert status.load is None
    assert status.mem_total is None
    assert status.daemon_running is None
    assert status.complete is False
    assert status.uptime_s is None
    for cell in (mem_cell(status), load_cell(status), daemon_cell(status), gpu_cell(status.gpu)):
        assert isinstance(cell, str)


def test_parse_truncated_gpu_section_reports_an_error() -> None:
    status = parse_status("gpu_exit=0\n--- begin gpu\n0, NVIDIA H200, GPU-a, 1")
    assert status.gpu is not None and status.gpu.state is GpuState.ERROR


def test_parse_later_keys_win_and_unknown_keys_are_ignored() -> None:
    status = parse_status("hostname=a\nfuture_key=1\nhostname=b\n")
    assert status.hostname == "b"


def test_gpu_cells() -> None:
    assert gpu_cell(None) == "?"
    assert gpu_cell(GpuReport.missing()) == "-"
    assert gpu_cell(GpuReport.found([])) == "-"
    assert gpu_cell(GpuReport.failed("x" * 100), width=20) == "err: " + "x" * 14 + "…"


def test_format_helpers() -> None:
    assert format_bytes(None) == "-"
    assert format_bytes(0) == "0B"
    assert format_bytes(512 * 1024**2) == "512MiB"
    assert format_bytes(int(3.25 * 1024**3)) == "3.2GiB"
    assert format_bytes(143771 * 1024**2) == "140GiB"
    assert format_bytes(3 * 1024**4) == "3TiB"
    assert format_usage(None, None) == "-"
    assert format_usage(None, 2 * 1024**3) == "?/2GiB"
    assert format_usage(512 * 1024**2, 2 * 1024**3) == "0.5/2GiB"
    assert format_duration(None) == "-"
    assert format_duration(42.9) == "42s"
    assert format_duration(600) == "10m"
    assert format_duration(3600 * 5 + 7 * 60) == "5h07m"
