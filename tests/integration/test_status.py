"""`cluster status` end to end on the testbed: one probe per node, a row per node."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from skeleton_app.app.views.status import rows
from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.ops.status import status
from skeleton_app.testing import testbed as tb
from skeleton_app.testing.testbed import Testbed
from tests.support.helpers import skeleton
from tests.support.shared_fixtures import nvidia_smi_fixture


@contextmanager
def fake_nvidia_smi(testbed: Testbed, host_id: str, script: str) -> Iterator[None]:
    """Put an `nvidia-smi` on one host's PATH only (a tmpfs over /usr/local/bin in its own
    mount namespace), printing a real capture."""
    capture = testbed.state_dir / f"nvidia-smi-{host_id}.csv"
    shutil.copy(nvidia_smi_fixture("nvidia-smi-query.csv"), capture)
    capture.chmod(0o644)
    body = script.replace("CAPTURE", str(capture))
    tb.host_exec(testbed, host_id, ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755",
                                    "fake-bin", "/usr/local/bin"])
    try:
        tb.host_exec(testbed, host_id, ["sh", "-c", 'cat > /usr/local/bin/nvidia-smi && '
                                        'chmod 755 /usr/local/bin/nvidia-smi'],
                     input="#!/bin/sh\n" + body)
        yield
    finally:
        tb.host_exec(testbed, host_id, ["umount", "-l", "/usr/local/bin"])
        capture.unlink(missing_ok=True)


def test_status_probe_values_per_node(settings: Settings, testbed: Testbed) -> None:
    with Cluster(settings) as cluster:
        nodes = cluster.select()
        result = status(cluster, nodes)
    assert result.exit_code() == 0
    for node in nodes:
        st = result[node.id].outcome.status
        assert st.hostname == node.id  # each host its own UTS namespace
        assert st.complete
        assert st.load is not None and st.mem_total and st.mem_available
        assert st.disk_total and st.disk_free is not None
        assert st.daemon_running is False  # no daemon started here
        assert st.gpu is not None  # "no GPU" is a report too (nvidia-smi missing)
    # no file is left on the node by the probe
    assert not any(p.name.startswith("status") for p in testbed.host("node-01").home.iterdir())


def test_status_gpu_column_from_real_capture_and_broken_driver(testbed: Testbed) -> None:
    ok = "cat CAPTURE\n"
    broken = ('echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA'
              ' driver. Make sure that the latest NVIDIA driver is installed and running."\n'

              "exit 9\n")
    with fake_nvidia_smi(testbed, "node-01", ok), fake_nvidia_smi(testbed, "node-02", broken):
        proc = skeleton("cluster", "status", "--node", "node-0[1-3]", "--json",
                        config=testbed.config_path)
        table = skeleton("cluster", "status", "--node", "node-0[1-3]",
                         config=testbed.config_path, env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    nodes = json.loads(proc.stdout)["nodes"]
    gpu1 = nodes["node-01"]["data"]["status"]["gpu"]
    assert gpu1["gpus"][0]["name"] == "NVIDIA H200"
    assert gpu1["gpus"][0]["memory_total_mib"] == 143771
    assert nodes["node-02"]["data"]["status"]["gpu"]["state"] != gpu1["state"]
    assert "H200 0/140GiB 0% 38°C" in table.stdout
    assert "err: couldn't communicate" in table.stdout
    lines = {ln.split()[0]: ln for ln in table.stdout.splitlines()
             if ln.split() and ln.split()[0].startswith("node-")}
    assert set(lines) == {"node-01", "node-02", "node-03"}


def test_unreachable_node_is_a_row_not_an_exception(testbed: Testbed) -> None:
    tb.stop_sshd(testbed, "node-03")
    try:
        proc = skeleton("cluster", "status", config=testbed.config_path,
                        env={"COLUMNS": "200"})
    finally:
        tb.start_sshd(testbed, "node-03")
    assert proc.returncode == 4
    row = next(ln for ln in proc.stdout.splitlines() if "node-03" in ln)
    assert "✗" in row and "refused" in row
    for other in ("node-01", "node-02", "node-04", "node-05", "node-06"):
        assert any(other in ln and "GiB" in ln for ln in proc.stdout.splitlines())


def test_rows_mark_stale_heartbeats(settings: Settings) -> None:
    import time

    with Cluster(settings) as cluster:
        nodes = cluster.select(["node-01", "node-02"])
        result = status(cluster, nodes)
    registry = {"node-01": {"last_seen": time.time() - 5, "code_version": "abc123"},
                "node-02": {"last_seen": time.time() - 300, "code_version": None}}
    columns, table = rows(result, nodes, registry, stale_after=30)
    assert columns[-2:] == ["heartbeat", "version"]
    assert "(stale)" not in table[0][-2] and table[0][-1] == "abc123"
    assert table[1][-2].endswith("(stale)")


def test_fixture_file_exists() -> None:
    assert Path(nvidia_smi_fixture("nvidia-smi-query.csv")).is_file()
