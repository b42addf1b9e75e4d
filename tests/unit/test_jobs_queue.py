"""The `Cluster.jobs` facade (ops/jobs/queue.py) over the in-memory queue: bad input is
refused before anything is queued, `run` builds an engine, results are waited for through
LISTEN (or polling), and a facade-made dispatcher runs the job end to end."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from skeleton_app.cluster import Cluster
from skeleton_app.config import JobsSettings, RegistrySettings, Settings
from skeleton_app.errors import RegistryError, UsageError
from skeleton_app.ops.jobs.queue import Jobs
from skeleton_app.registry.job_records import JobListener
from skeleton_app.testing.fake import FakeRunner, Reply, always
from skeleton_app.testing.fake_jobs import FakeJobStore
from skeleton_app.testing.fake_jobs_node import FakeJobNodes
from tests.support.jobs_nodes import NOW, Nodes, entry


def make(tmp_path: Path, *, nodes: Nodes | None = None, max_bytes: int = 1000,
         store: FakeJobStore | None = None) -> tuple[Jobs, FakeJobStore]:
    settings = Settings(jobs=JobsSettings(max_file_bytes=max_bytes, poll=0.05, lease=1.0),
                        registry=RegistrySettings(dsn="postgresql://db.test/skeleton"))
    cluster = Cluster(settings, (), connector=FakeRunner(always(Reply())))
    store = store or FakeJobStore(clock=lambda: NOW)
    registry = nodes or Nodes([entry("n1", roles=("stt_batch", "tts"))])
    return Jobs(cluster, store, registry=registry), store


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "meeting 1.wav"
    path.write_bytes(b"RIFF....WAVE")
    return path


def test_a_job_is_queued_with_its_input(tmp_path: Path, wav: Path) -> None:
    jobs, store = make(tmp_path)
    handle = jobs.submit("stt", wav)
    job = store.jobs[handle.id]
    assert job.state == "queued" and job.engine == "stt" and job.role == "stt_batch"
    assert job.spec.input_name == "meeting_1.wav" and job.max_attempts == 3
    assert store.file_data(handle.id, "input", "meeting_1.wav") == b"RIFF....WAVE"
    assert "@" in job.submitted_by


@pytest.mark.parametrize(("call", "message"), [
    (lambda j, p: j.submit("nope", p), "unknown engine 'nope'"),
    (lambda j, p: j.submit("stt", p.parent / "missing.wav"), "no such file"),
    (lambda j, p: j.submit("stt", p.parent), "not a regular file"),
    (lambda j, p: j.submit("stt"), "needs an input file"),
    (lambda j, p: j.submit("stt", p, text="hi"), "takes an input file, not a text"),
    (lambda j, p: j.submit("tts", text=""), "needs a text, and it is empty"),
    (lambda j, p: j.submit("tts", text="  \n "), "needs a text, and it is empty"),
    (lambda j, p: j.submit("tts", text="x" * 10_001), "too long"),
    (lambda j, p: j.submit("tts", text="'" * 10_000), "too long once shell-quoted"),
    (lambda j, p: j.submit("tts", p), "takes a text"),
    (lambda j, p: j.submit("run", p, role="stt_batch"), "needs a command"),
    (lambda j, p: j.submit("run", p, command="cat {input}"), "needs a role"),
    (lambda j, p: j.submit("run", command="cat {input}", role="stt_batch"),
     "cannot use {input}"),
    (lambda j, p: j.submit("stt", p, command="x"), "with engine run only"),
    (lambda j, p: j.submit("stt", p, max_attempts=0), "max_attempts"),
    (lambda j, p: j.submit("stt", p, output_suffix="txt"), "output_suffix"),
])
def test_bad_input_is_refused_and_nothing_is_queued(tmp_path: Path, wav: Path, call: object,
                                                   message: str) -> None:
    jobs, store = make(tmp_path)
    with pytest.raises(UsageError, match=re.escape(message)):
        call(jobs, wav)  # type: ignore[operator]
    assert store.jobs == {}


def test_too_large_and_empty_inputs_are_refused(tmp_path: Path, wav: Path) -> None:
    jobs, store = make(tmp_path, max_bytes=5)
    with pytest.raises(UsageError, match=r"12 bytes, more than jobs.max_file_bytes \(5\)"):
        jobs.submit("stt", wav)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(UsageError, match="the file is empty"):
        jobs.submit("stt", empty)
    assert store.jobs == {}


def test_an_unreadable_input_is_refused(tmp_path: Path, wav: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    jobs, store = make(tmp_path)

    def denied(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # root would read a chmod 000 file
    with pytest.raises(UsageError, match="cannot read it: Permission denied"):
        jobs.submit("stt", wav)
    assert store.jobs == {}


def test_no_registry_configured_is_a_usage_error(tmp_path: Path, wav: Path) -> None:
    cluster = Cluster(Settings(), (), connector=FakeRunner(always(Reply())))
    with pytest.raises(UsageError, match="no registry configured"):
        cluster.jobs.submit("stt", wav)
    with pytest.raises(UsageError, match="no registry configured"):
        cluster.jobs.list()


def test_no_enabled_node_with_the_role_is_a_usage_error(tmp_path: Path, wav: Path) -> None:
    nodes = Nodes([entry("n1", roles=("tts",)), entry("n2", enabled=False),
                   entry("n3", approved=False)])
    jobs, store = make(tmp_path, nodes=nodes)
    with pytest.raises(UsageError, match=r"no enabled node has role stt_batch \(engine stt\):"
                                         r" n2 \(disabled\), n3 \(pending\)"):
        jobs.submit("stt", wav)
    assert store.jobs == {}
    assert jobs.submit("tts", text="hello world").id == 1


def test_submit_many_checks_every_file_first(tmp_path: Path, wav: Path) -> None:
    jobs, store = make(tmp_path)
    with pytest.raises(UsageError, match="no such file"):
        jobs.submit_many("stt", [wav, tmp_path / "gone.wav"])
    assert store.jobs == {}
    handles = jobs.submit_many("stt", [wav, wav])
    assert [h.id for h in handles] == [1, 2]


def test_run_builds_an_engine_from_the_command_and_role(tmp_path: Path, wav: Path) -> None:
    jobs, store = make(tmp_path)
    handle = jobs.submit("run", wav, command="my-tool {input} > {output}", role="stt_batch",
                         output_suffix=".json")
    engine = store.jobs[handle.id].spec.engine
    assert (engine.name, engine.role, engine.input, engine.output, engine.output_suffix) == (
        "run", "stt_batch", "file", "file", ".json")
    handle = jobs.submit("run", command="uptime", role="stt_batch")
    engine = store.jobs[handle.id].spec.engine
    assert (engine.input, engine.output) == ("none", "stdout")


def test_tts_text_is_labelled_by_its_start(tmp_path: Path) -> None:
    jobs, store = make(tmp_path)
    handle = jobs.submit("tts", text="Hello   world " * 10)
    job = store.jobs[handle.id]
    assert job.spec.text == "Hello   world " * 10
    assert job.spec.label.startswith("Hello world Hello world") and job.spec.label.endswith("...")


def test_result_waits_for_the_end_through_listen(tmp_path: Path, wav: Path) -> None:
    jobs, store = make(tmp_path)
    handle = jobs.submit("stt", wav)

    def finish() -> None:
        time.sleep(0.1)
        claim = store.claim("d", lease=10, route=lambda j, load: _route("n1"))
        assert claim is not None
        store.finish(handle.id, claim.token, state="done", exit_code=0, error=None,
                     stderr_tail="", result={"output": "output.txt"},
                     outputs=[("output.txt", b"hello world")])

    threading.Thread(target=finish).start()
    result = handle.result(timeout=5)
    assert result.ok and result.text == "hello world" and result.output_name == "output.txt"
    assert "listen" in store.calls


def test_result_polls_when_listen_is_unavailable(tmp_path: Path, wav: Path) -> None:
    class NoListen(FakeJobStore):
        def listen(self) -> JobListener:
            raise RegistryError("LISTEN failed")

    jobs, store = make(tmp_path, store=NoListen(clock=lambda: NOW))
    handle = jobs.submit("stt", wav)
    claim = store.claim("d", lease=10, route=lambda j, load: _route("n1"))
    assert claim is not None

    def fail() -> None:
        time.sleep(0.1)
        store.finish(handle.id, claim.token, state="failed", exit_code=1, error="exit 1",
                     stderr_tail="boom", result={})

    threading.Thread(target=fail).start()
    result = handle.result(timeout=5)
    assert not result.ok and result.output is None and result.job.error == "exit 1"


def test_result_times_out(tmp_path: Path, wav: Path) -> None:
    jobs, _store = make(tmp_path)
    handle = jobs.submit("stt", wav)
    with pytest.raises(TimeoutError, match="still queued"):
        handle.result(timeout=0.2)


def test_get_show_cancel_retry(tmp_path: Path, wav: Path) -> None:
    jobs, _store = make(tmp_path)
    handle = jobs.submit("stt", wav)
    assert handle.cancel().state == "cancelled"
    assert jobs.retry(handle.id).state == "queued"
    detail = jobs.show(handle.id).as_dict()
    assert detail["state"] == "queued" and detail["files"][0]["name"] == "meeting_1.wav"
    assert [j.id for j in jobs.list(states=["queued"])] == [handle.id]
    with pytest.raises(UsageError, match="no job 99"):
        jobs.get(99)


def test_the_facade_dispatcher_runs_a_job_end_to_end(tmp_path: Path, wav: Path) -> None:
    jobs, _store = make(tmp_path)
    assert not jobs.dispatcher_running()
    stop = jobs.dispatcher(node_api=FakeJobNodes()).start()
    try:
        handle = jobs.submit("stt", wav)
        result = handle.result(timeout=10)
        assert result.ok and result.text == "done: RIFF....WAVE"
        assert jobs.dispatcher_running()
        detail = jobs.show(handle.id).as_dict()
        assert detail["attempts"][0]["why"].startswith("n1: lowest score")
    finally:
        stop()
    assert not jobs.dispatcher_running()


def test_cluster_jobs_is_one_facade(tmp_path: Path) -> None:
    cluster = Cluster(Settings(), (), connector=FakeRunner(always(Reply())))
    assert cluster.jobs is cluster.jobs
    cluster.close()


def _route(node_id: str) -> object:
    from skeleton_app.registry.job_records import Route

    return Route(node_id, {})
