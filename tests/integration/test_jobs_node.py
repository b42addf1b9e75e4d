"""The node side of voice jobs on real test hosts (ops/jobs/node.py over the pooled SSH
connector, payloads/job.sh on the node): the built-in `tts` engine (espeak-ng) says "hello
world" on one host, the built-in `stt` engine (sox, then pocketsphinx from the host's OWN
.venv, which `cluster bootstrap` installed from the wheelhouse) transcribes that WAV on
another; preflight names a missing tool in one line; kill stops a running job's whole
process group on its node.

The session hosts' .venv (the `node_python` fixture: one bootstrap for the whole session)
is what the engines run from: the commands run in the host's app dir, never with the
controller's interpreter (which has no pocketsphinx at all).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.engines import Engine, find_engine
from skeleton_app.nodes import Node
from skeleton_app.ops.jobs import node as job_node
from skeleton_app.ssh.runner import RunOptions
from skeleton_app.testing import testbed as tb_mod
from skeleton_app.testing.testbed import Testbed

MAX_BYTES = 8 * 1024 * 1024
# Job ids of this module: far from anything a dispatcher test would draw.
_IDS = itertools.count(int(time.time()) % 1_000_000 * 1000)


@pytest.fixture(scope="module")
def cluster(testbed: Testbed, node_python: str) -> Iterator[Cluster]:
    from skeleton_app.config import load_config

    with Cluster(load_config(testbed.config_path, env={})) as c:
        yield c


def _node(cluster: Cluster, node_id: str) -> Node:
    return next(n for n in cluster.nodes if n.id == node_id)


def _run(cluster: Cluster, node: Node, engine: Engine, *, input_name: str | None = None,
         data: bytes | None = None, text: str | None = None,
         command: str | None = None) -> tuple[int, job_node.AttemptEnd]:
    """One attempt from start to end (the attempt's directory removed with the last wait)."""
    job_id = next(_IDS)
    if command is None:
        command = job_node.render(node, job_id, 1, engine, input_name=input_name, text=text)
    job_node.start(cluster.connector, node, job_id, 1, command, input_name=input_name,
                   input_data=data, timeout=30)
    deadline = time.monotonic() + 120
    while True:
        end = job_node.wait(cluster.connector, node, job_id, 1, engine=engine, slice_s=2.0,
                            max_bytes=MAX_BYTES, remove=True)
        if end is not None:
            return job_id, end
        assert time.monotonic() < deadline, f"job {job_id} still runs on {node.id}"


def _on_node(cluster: Cluster, node: Node, line: str) -> str:
    r = cluster.connector.run(node, line, RunOptions(timeout=30))
    assert r.ok, r.summary() + r.stderr
    return r.stdout


def _group_members(cluster: Cluster, node: Node, pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, as the node sees them."""
    out = _on_node(cluster, node, "ps -e -o pid=,pgid=,stat=")
    found = []
    for line in out.splitlines():
        pid, group, stat = line.split()[:3]
        if int(group) == pgid and not stat.startswith("Z"):
            found.append(int(pid))
    return found


def test_tts_then_stt_on_two_hosts_from_their_own_venv(cluster: Cluster,
                                                       settings: Settings) -> None:
    tts = find_engine(settings.engines, "tts")
    stt = find_engine(settings.engines, "stt")
    speaker, listener = _node(cluster, "node-01"), _node(cluster, "node-02")
    for node, engine in ((speaker, tts), (listener, stt)):
        assert job_node.preflight(cluster.connector, node, engine) is None

    job_id, said = _run(cluster, speaker, tts, text="hello world")
    assert job_node.failure(said, tts) is None, said
    wav = said.output
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) > 10_000, wav[:64]
    assert said.output_size == len(wav) and 0 < said.seconds < 30
    # The attempt's directory went with the last wait.
    assert _on_node(cluster, speaker, f"test -e {job_node.job_dir(speaker, job_id, 1)}"
                    " && echo left || echo gone") == "gone\n"

    _, heard = _run(cluster, listener, stt, input_name="hello.wav", data=wav)
    assert job_node.failure(heard, stt) is None, heard
    assert "hello world" in heard.output.decode(), heard

    # The engines run from the host's app dir and its own .venv.
    probe = Engine(name="probe", role="stt_batch", input="none",
                   command=".venv/bin/python -c 'import sys, pocketsphinx; print(sys.prefix)'")
    _, where = _run(cluster, listener, probe)
    assert (where.exit_code, where.output.decode()) == (0, f"{tb_mod.APP_DIR}/.venv\n"), where


def test_preflight_names_the_missing_tool_and_package(cluster: Cluster) -> None:
    node = _node(cluster, "node-03")
    engine = Engine(name="x", role="tts", command="no-such-voice-tool {text}", input="text",
                    tools=("sox", "no-such-voice-tool"))
    assert job_node.preflight(cluster.connector, node, engine) == (
        "no-such-voice-tool is not installed on node-03")
    engine = Engine(name="y", role="stt_batch", command="true", input="none",
                    requires=("pocketsphinx", "no-such-dist>=2"))
    assert job_node.preflight(cluster.connector, node, engine) == (
        "no-such-dist is not installed in node-03's .venv (run `skeleton cluster bootstrap`)")


def test_kill_stops_the_running_job_on_its_node(cluster: Cluster) -> None:
    node = _node(cluster, "node-03")
    sleeper = Engine(name="sleep", role="tts", command="sleep 60", input="none")
    job_id = next(_IDS)
    # A background child too: the whole group must go, not just its leader.
    pgid = job_node.start(cluster.connector, node, job_id, 1, "sleep 60 & sleep 60",
                          input_name=None, input_data=None, timeout=30)
    members = _group_members(cluster, node, pgid)
    assert pgid in members and len(members) >= 3, members
    assert job_node.wait(cluster.connector, node, job_id, 1, engine=sleeper, slice_s=0.2,
                         max_bytes=100) is None
    job_node.kill(cluster.connector, node, job_id, 1, pgid=pgid)
    assert _group_members(cluster, node, pgid) == []
    attempt = job_node.job_dir(node, job_id, 1)
    assert _on_node(cluster, node, f"test -e {attempt} && echo left || echo gone") == "gone\n"
    job_node.kill(cluster.connector, node, job_id, 1, pgid=pgid)  # idempotent


def test_start_wait_runs_a_short_job_in_one_round_trip(cluster: Cluster) -> None:
    node = _node(cluster, "node-04")
    copy = Engine(name="copy", role="tts", command="cp {input} {output}", input="file",
                  output="file", output_suffix=".bin")
    data = bytes(range(256)) * 2000  # 512 KiB: the reply arrives in many chunks
    job_id = next(_IDS)
    command = job_node.render(node, job_id, 1, copy, input_name="in.bin")
    pgid, end = job_node.start_wait(cluster.connector, node, job_id, 1, command,
                                    input_name="in.bin", input_data=data, timeout=30,
                                    engine=copy, slice_s=5.0, max_bytes=MAX_BYTES,
                                    remove=True)
    assert pgid > 1 and end is not None
    assert (end.exit_code, end.output_size, end.output == data) == (0, len(data), True)
    attempt = job_node.job_dir(node, job_id, 1)
    assert _on_node(cluster, node, f"test -e {attempt} && echo left || echo gone") == "gone\n"
    # A longer one: started, no end yet; wait and kill go on as after `start`.
    sleeper = Engine(name="sleep", role="tts", command="sleep 60", input="none")
    job_id = next(_IDS)
    pgid, end = job_node.start_wait(cluster.connector, node, job_id, 1, "sleep 60",
                                    input_name=None, input_data=None, timeout=30,
                                    engine=sleeper, slice_s=0.3, max_bytes=100, remove=True)
    assert end is None and pgid in _group_members(cluster, node, pgid)
    job_node.kill(cluster.connector, node, job_id, 1, pgid=pgid)
    assert _group_members(cluster, node, pgid) == []
