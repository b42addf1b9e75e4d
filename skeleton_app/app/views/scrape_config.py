"""`skeleton nodes export --prometheus`: the Prometheus scrape config for the nodes' daemons
(each serves GET /metrics on its api_port, see skeleton_app/agent/prometheus.py).

One `scrape_configs` job; one static target per node, `host:api_port`, labelled with the
node's id and roles. With `daemon.health_token` set, the daemons require it off loopback:
the job reads it from a file (`authorization: credentials_file`); the token itself is never
printed. Without it, each daemon has a random token of its own, which Prometheus cannot know:
the output says so in a comment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from skeleton_app.nodes import Node

DEFAULT_JOB = "skeleton"
DEFAULT_TOKEN_FILE = "/etc/prometheus/skeleton-health-token"


def target(node: Node) -> str:
    """`host:port`, an IPv6 address in brackets."""
    host = f"[{node.host}]" if ":" in node.host else node.host
    return f"{host}:{node.api_port}"


def scrape_config(nodes: Sequence[Node], *, token_file: str | None,
                  job_name: str = DEFAULT_JOB) -> dict[str, Any]:
    """The `scrape_configs` document for `nodes` (`token_file`: None for no authorization)."""
    job: dict[str, Any] = {"job_name": job_name, "metrics_path": "/metrics", "scheme": "http"}
    if token_file is not None:
        job["authorization"] = {"type": "Bearer", "credentials_file": token_file}
    job["static_configs"] = [
        {"targets": [target(n)], "labels": {"node": n.id, "roles": ",".join(n.roles)}}
        for n in sorted(nodes, key=lambda n: n.id)
    ]
    return {"scrape_configs": [job]}


def render(nodes: Sequence[Node], *, token_set: bool, token_file: str = DEFAULT_TOKEN_FILE,
           job_name: str = DEFAULT_JOB) -> str:
    """The YAML to paste into prometheus.yml, with a comment line on top."""
    head = (f"# skeleton: {len(nodes)} node(s); put daemon.health_token in {token_file}\n"
            if token_set else
            "# skeleton: daemon.health_token is not set: each daemon has a random token, so\n"
            "# /metrics answers only on loopback; set it to scrape from elsewhere\n")
    doc = scrape_config(nodes, token_file=token_file if token_set else None, job_name=job_name)
    # Node ids, hosts and roles are validated names: safe_dump quotes anything YAML would read
    # otherwise.
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
