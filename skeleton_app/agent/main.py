"""The daemon's entry points: `run_daemon(settings)` (`skeleton daemon run`) and `main()`
(`python -m skeleton_app.agent`), and its logging.

It logs to `<logs_dir>/skeleton-daemon.log`, one line per event with an ISO 8601 UTC
timestamp. daemon control already sends the daemon's stdout/stderr to that same file, so the
daemon writes to the file itself and adds a stderr handler only when stderr is something else
(a terminal): no line appears twice.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from skeleton_app import layout
from skeleton_app.agent.daemon import DEFAULT_INTERVAL, ENV_INTERVAL, Agent
from skeleton_app.agent.identity import own_credentials, resolve_node
from skeleton_app.config import Settings, load_config
from skeleton_app.errors import ConfigError, SkeletonError

log = logging.getLogger("skeleton_app.agent")

ENV_HEALTH_BIND = "SKELETON_HEALTH_BIND"  # overrides daemon.health_bind (older name)


class _UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # ISO 8601 in UTC: logs from nodes in different time zones sort and compare.
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def _setup_logging(path: Path) -> list[logging.Handler]:
    """Log to `path`; also to stderr when stderr is not already that file (a terminal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    formatter = _UTCFormatter("%(asctime)s %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.FileHandler(path, encoding="utf-8")]
    try:
        err, st = os.fstat(2), path.stat()
        same = (err.st_dev, err.st_ino) == (st.st_dev, st.st_ino)
    except OSError:
        same = False
    if not same:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handlers


def _interval_from_env(env: Mapping[str, str]) -> float:
    raw = env.get(ENV_INTERVAL)
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"expected a positive number of seconds, got {raw!r}",
                          source=ENV_INTERVAL)
    return value


def run_daemon(
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    install_signals: bool = True,
) -> int:
    """Run the node daemon until SIGTERM/SIGINT; return the exit code (0 on a clean stop).

    ConfigError when this node cannot be identified or its health port cannot be bound.
    To embed the daemon in a process of your own, build an `Agent` and call `run()`/`stop()`.
    """
    env = os.environ if env is None else env
    own = own_credentials(settings, env=env)
    # The configured DSN only routes (which of our addresses faces the database host).
    node = resolve_node(own if own.registry.dsn else settings, env=env)
    interval = _interval_from_env(env)
    handlers = _setup_logging(Path(settings.logs_dir_for(node)) / layout.DAEMON_LOG)
    previous: dict[signal.Signals, Any] = {}
    try:
        agent = Agent(own, node, interval=interval,
                      health_bind=env.get(ENV_HEALTH_BIND) or None,
                      missing_credentials=bool(settings.registry.dsn))
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, lambda *_: agent.stop())
        return agent.run()
    except SkeletonError as exc:
        log.error("cannot run: %s", exc)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m skeleton_app.agent [--config PATH]`: the daemon without the CLI."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m skeleton_app.agent",
                                     description="Run the skeleton node daemon.")
    parser.add_argument("--config", "-c", default=None, metavar="PATH",
                        help="config file (default $SKELETON_CONFIG, else ./config.yaml)")
    args = parser.parse_args(argv)
    try:
        return run_daemon(load_config(args.config))
    except SkeletonError as exc:
        print(f"skeleton daemon: {exc}", file=sys.stderr)
        return exc.exit_code
