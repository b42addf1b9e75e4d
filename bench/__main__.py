"""`python -m bench [--quick] [--cases 1,2,3,4,5,6,7] [--runs N]`: run the benchmark.

Needs root (the testbed uses network namespaces). Brings up its own testbeds (a free
instance each, never one someone else is using), always tears them down, prints the
markdown report and writes it to bench/results/.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import dataclasses
import datetime as dt
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import skeleton_app
from bench import cases, jobs_case, jobs_chaos, peers, report, warm
from bench.cases import MiB, Plan
from bench.measure import BenchError
from bench.report import Case
from skeleton_app.testing import testbed


@contextlib.contextmanager
def running_testbed(count: int, say: Callable[[str], None], *, rate: str | None = None,
                    db: bool = False, roles: dict[str, tuple[str, ...]] | None = None
                    ) -> Iterator[testbed.Testbed]:
    started = time.monotonic()
    tb = testbed.up(count, rate=rate, instance=None, db=db, roles=roles)
    try:
        say(f"testbed: {count} hosts up in {time.monotonic() - started:.1f} s"
            f" (instance {tb.instance}{', links ' + rate if rate else ''}"
            f"{', registry PostgreSQL' if db else ''})")
        yield tb
    finally:
        testbed.down(tb.state_dir)
        say(f"testbed: instance {tb.instance} down")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every `finally`


def _attempt(out: list[Case], key: str, title: str, say: Callable[[str], None],
             fn: Callable[[], object]) -> object:
    """Run one case; a failure becomes a note in the report instead of ending the run."""
    try:
        return fn()
    except (BenchError, testbed.TestbedError, OSError) as exc:
        say(f"case {key} failed: {exc}")
        out.append(Case(key, title, notes=[f"FAILED: {exc}"]))
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a subset in under 3 minutes (32 hosts, 64 MiB, fewer runs)")
    parser.add_argument("--cases", default=None,
                        help="which cases (default all, and 1-5 with --quick; 6 or `jobs`: the"
                             " voice jobs queue, about 20 minutes, 5 with --quick; 7 or `chaos`:"
                             " failover and a killed dispatcher, about 5 minutes, 2 with"
                             " --quick; 8 or `warm`: warm mode's connection keeper, about 2"
                             " minutes)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per measurement")
    parser.add_argument("--rsync-1g", action="store_true",
                        help="also time plain parallel rsync with 1 GiB (about 6 minutes)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    cases_arg = args.cases or ("1,2,3,4,5" if args.quick else "1,2,3,4,5,6,7")
    wanted = {c.strip() for c in cases_arg.split(",") if c.strip()}
    if "jobs" in wanted:
        wanted.add("6")
    if "chaos" in wanted:
        wanted.add("7")
    if "warm" in wanted:
        wanted.add("8")
    if os.geteuid() != 0:
        print("python -m bench: needs root (the testbed uses network namespaces)",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    mode = "quick" if args.quick else "full"
    started_at = dt.datetime.now()
    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="skeleton-bench-"))
    plan = Plan(quick=args.quick, runs=args.runs or (3 if args.quick else 7), warmup=1,
                workdir=workdir, say=say)
    results: list[Case] = []
    notes = [f"The test hosts share this machine's {os.cpu_count()} cores with the tools, so"
             " other work on it slows everything down: each case says how much CPU other"
             " work took while it ran. Load average (1/5/15 min) at the start: "
             + " / ".join(f"{x:.2f}" for x in os.getloadavg()) + "."]
    try:
        say("installing peers if missing (apt: pdsh pssh clustershell; pip: ansible-core)")
        peers.install(ansible="1" in wanted, log=workdir / "install.log")
        # As `pip install` leaves a package: byte-compiled. (An editable install compiles on
        # first import, unless PYTHONDONTWRITEBYTECODE is set, as it is on some machines:
        # then every run would compile our modules again. The peers come compiled.)
        compileall.compile_dir(str(Path(skeleton_app.__file__).parent), quiet=1)
        ours_32 = math.nan
        if wanted & {"1", "2", "3", "5", "8"}:
            with running_testbed(32, say) as tb:
                if wanted & {"1", "5"}:
                    sizes = (32,) if args.quick else (1, 8, 32)
                    got = _attempt(results, "1", "Fan-out", say,
                                   lambda: cases.fanout(tb, sizes, plan))
                    if isinstance(got, tuple):
                        case1, case5 = got
                        if "1" in wanted:
                            results.append(case1)
                        ours_32 = case1.median_of("32 hosts", peers.OURS)
                if "2" in wanted:
                    _attempt(results, "2", "Warm latency", say,
                             lambda: results.append(cases.warm_latency(tb, plan)))
                if "8" in wanted:
                    _attempt(results, "8", "Warm mode", say,
                             lambda: results.append(warm.warm_case(tb, plan)))
                if "3" in wanted:
                    sizes3 = (8,) if args.quick else (8, 32)
                    p3 = dataclasses.replace(plan, runs=args.runs or (3 if args.quick else 5))
                    _attempt(results, "3", "Redeploy", say,
                             lambda: results.append(cases.redeploy(tb, sizes3, p3)))
        if "5" in wanted and not math.isnan(ours_32):
            p5 = dataclasses.replace(plan, runs=args.runs or (3 if args.quick else 5))
            with running_testbed(128, say) as tb:
                _attempt(results, "5", "128 hosts", say,
                         lambda: cases.fanout_128(tb, p5, case5, ours_32))
            results.append(case5)
        if "4" in wanted:
            why = cases.check_sync_models_cli()
            if why:
                say(f"case 4 skipped: {why}")
                results.append(Case("4", "Model distribution", notes=[f"not run: {why}"]))
            else:
                sizes4 = (64 * MiB,) if args.quick else (64 * MiB, 1024 * MiB)
                p4 = dataclasses.replace(plan, runs=args.runs or (2 if args.quick else 3))
                with running_testbed(9, say, rate=cases.LINK_RATE) as tb:
                    _attempt(results, "4", "Model distribution", say, lambda: results.append(
                        cases.model_sync(tb, sizes4, p4,
                                         rsync_max=(1024 if args.rsync_1g else 64) * MiB,
                                         rsync_runs=1 if args.quick else 2)))
        if "6" in wanted:
            p6 = dataclasses.replace(plan, runs=args.runs or (1 if args.quick else 3))
            with running_testbed(jobs_case.HOSTS, say, db=True,
                                 roles=jobs_case.roles(jobs_case.HOSTS)) as tb:
                _attempt(results, "6", "Voice jobs", say, lambda: results.append(
                    jobs_case.jobs_case(tb, quick=p6.quick, runs=p6.runs, workdir=workdir,
                                        say=say)))
        if "7" in wanted:
            with running_testbed(jobs_chaos.HOSTS, say, db=True,
                                 roles=jobs_chaos.roles(jobs_chaos.HOSTS)) as tb:
                _attempt(results, "7", "Voice jobs under faults", say, lambda: results.append(
                    jobs_chaos.chaos_case(tb, quick=args.quick, workdir=workdir, say=say)))
    except KeyboardInterrupt:
        say("interrupted: testbeds torn down, no report written")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results.sort(key=lambda c: c.key)
    text = report.document(results, mode=mode, started=started_at,
                           elapsed=time.monotonic() - t0, tools=peers.versions(), notes=notes)
    print(text)
    if not args.no_write:
        say(f"written to {report.write(text, started_at, mode)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
