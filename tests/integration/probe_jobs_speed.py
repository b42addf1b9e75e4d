"""A probe (not collected: name it on the command line): N no-op `run` jobs through one
in-process dispatcher on the session testbed, every store and node call timed.

    ./scripts/test -q -s tests/integration/probe_jobs_speed.py
    PROBE_PRESUBMIT=1 ...   # every job queued first: the dispatcher's own throughput
    PROBE_JOBS=400 ...      # how many jobs
"""

from __future__ import annotations

import collections
import dataclasses
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from skeleton_app.cluster import Cluster
from skeleton_app.config import Settings
from skeleton_app.ops.jobs import node as node_mod
from skeleton_app.ops.jobs.dispatcher import Dispatcher
from skeleton_app.registry import NodeDefaults, NodeSpec, PostgresRegistry
from skeleton_app.registry.jobs import open_job_store
from skeleton_app.testing.testbed import Testbed

APP_DIR = "/tmp/jobs-speed-app"
COUNT = int(os.environ.get("PROBE_JOBS", "200"))
PRESUBMIT = os.environ.get("PROBE_PRESUBMIT") == "1"
TIMES: dict[str, list[float]] = collections.defaultdict(list)
LOCK = threading.Lock()


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with LOCK:
                TIMES[name].append(time.perf_counter() - t0)
    return wrapper


class _Proxy:
    def __init__(self, inner: Any, prefix: str, names: tuple[str, ...]):
        self._inner = inner
        for name in names:
            if hasattr(inner, name):
                setattr(self, name, _timed(f"{prefix}.{name}", getattr(inner, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _cpu() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def test_probe(testbed: Testbed, settings: Settings, db_dsn: str) -> None:
    settings = dataclasses.replace(
        settings, registry=dataclasses.replace(settings.registry, dsn=db_dsn),
        jobs=dataclasses.replace(settings.jobs, slots=2),
        app=dataclasses.replace(settings.app, dir=APP_DIR))
    defaults = NodeDefaults.from_settings(settings)
    with PostgresRegistry(db_dsn, defaults=defaults) as registry:
        for node in settings.nodes:
            registry.upsert_node(NodeSpec.from_node(node, capabilities={"cpu_count": 2}))
    stop_beats = threading.Event()

    def beats() -> None:
        with PostgresRegistry(db_dsn, defaults=defaults) as own:
            while not stop_beats.is_set():
                for node in settings.nodes:
                    own.heartbeat(node.id, metrics={"cpu_busy": 0.1, "mem_total": 100,
                                                    "mem_available": 90})
                stop_beats.wait(1.0)

    threading.Thread(target=beats, daemon=True).start()
    with Cluster(settings, settings.nodes) as cluster:
        assert cluster.run(f"mkdir -p {APP_DIR}").exit_code() == 0
        store = open_job_store(cluster.settings)
        timed_store = _Proxy(store, "db", ("claim", "claim_many", "started", "finish", "renew",
                                           "file_data",
                                           "lose", "list", "dispatcher_seen", "cleanups"))
        node_api = _Proxy(node_mod, "node", ("start", "wait", "kill", "preflight",
                                             "start_wait"))
        dispatcher = Dispatcher(cluster, timed_store, node_api=node_api)  # type: ignore[arg-type]
        stop = dispatcher.start()
        try:
            submit = cluster.jobs
            submit._check_nodes = _timed(  # type: ignore[method-assign]
                "submit.check_nodes", submit._check_nodes)
            submit.store.submit = _timed(  # type: ignore[method-assign]
                "submit.store", submit.store.submit)
            warm = [submit.submit("run", command="true", role="testbed") for _ in range(12)]
            for h in warm:
                assert h.result(timeout=60).ok
            TIMES.clear()
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            s0 = _cpu()
            if PRESUBMIT:  # the dispatcher alone: every job queued before it starts
                stop()
                handles = [submit.submit("run", command="true", role="testbed")
                           for _ in range(COUNT)]
                TIMES.clear()
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                s0 = _cpu()
                t0 = time.perf_counter()
                stop = Dispatcher(cluster, timed_store,  # type: ignore[arg-type]
                                  node_api=node_api).start()  # type: ignore[arg-type]
                t_submit = 0.0
            else:
                t0 = time.perf_counter()
                handles = [submit.submit("run", command="true", role="testbed")
                           for _ in range(COUNT)]
                t_submit = time.perf_counter() - t0
            ids = {h.id for h in handles}
            while True:
                done = {j.id for j in store.list(states=("done", "failed", "cancelled"),
                                                  limit=COUNT + 100)}
                if ids <= done:
                    break
                time.sleep(0.05)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            s1 = _cpu()
        finally:
            outcome = stop()
            store.close()
            stop_beats.set()
    print(f"\n{COUNT} jobs on {len(settings.nodes)} hosts x2: {wall:.2f} s,"
          f" {COUNT / wall:.1f} jobs/s (submit {t_submit:.2f} s); {outcome}")
    print(f"  this process CPU {r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime:.2f} s;"
          f" machine busy {(s1[0] - s0[0]) / 100:.2f} s of {(s1[1] - s0[1]) / 100:.2f} s")
    for name, values in sorted(TIMES.items()):
        print(f"  {name:22} n={len(values):5} total={sum(values):7.2f} s"
              f" median={statistics.median(values) * 1000:7.1f} ms"
              f" p90={sorted(values)[int(len(values) * 0.9)] * 1000:7.1f} ms")
