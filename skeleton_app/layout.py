"""Where skeleton_app keeps its own files on a node, relative to the node's app dir.

One place, so the status probe, daemon control, deploy and log collection agree.
"""

from __future__ import annotations

import posixpath

from skeleton_app.config import Settings
from skeleton_app.nodes import Node

PID_FILE = ".skeleton-daemon.pid"  # relative to the app dir; `PID START_TIME BOOT_ID`
# The daemon holds an exclusive flock on it for its whole life (payloads/daemon.sh).
LOCK_FILE = ".skeleton-daemon.lock"  # relative to the app dir
DEPLOY_DIR = ".skeleton-deploy"  # deploy digest and lock
DIGEST_FILE = ".skeleton-deploy/digest"  # first word: the deployed tree's digest
DAEMON_LOG = "skeleton-daemon.log"  # in the node's logs dir
# The daemon's /health token (mode 0600, in the deploy state dir: deploy never touches it).
HEALTH_TOKEN_FILE = ".skeleton-deploy/health-token"
# `deploy.strategy: releases`: each deploy in RELEASES_DIR/ID, CURRENT -> the live one (the
# daemon runs in it); the state above stays at the app dir (ops/deploy/releases.py).
RELEASES_DIR = "releases"
CURRENT = "current"


def pid_file(node: Node) -> str:
    return posixpath.join(node.app_dir, PID_FILE)


def lock_file(node: Node) -> str:
    return posixpath.join(node.app_dir, LOCK_FILE)


def daemon_log(settings: Settings, node: Node) -> str:
    return posixpath.join(settings.logs_dir_for(node), DAEMON_LOG)


def run_dir(settings: Settings, node: Node) -> str:
    """Where the daemon runs: the app dir, or its `current` release with the releases
    strategy (the pid, lock and log files stay where they are)."""
    if settings.deploy.strategy == "releases":
        return posixpath.join(node.app_dir, CURRENT)
    return node.app_dir


def health_token_file(node: Node) -> str:
    return posixpath.join(node.app_dir, HEALTH_TOKEN_FILE)
