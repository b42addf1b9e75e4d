"""`registry.metrics_retention` (seconds or a duration) and `skeleton nodes export
--prometheus` (the scrape config: one target per node, node/roles labels, the token only as a
credentials file), without a database: the config's static nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from skeleton_app.app.cli import cli
from skeleton_app.app.views.scrape_config import scrape_config, target
from skeleton_app.config import load_config
from skeleton_app.errors import ConfigError
from skeleton_app.nodes import Node

NODES = """
app: {dir: /srv/skeleton}
daemon: {api_port: 8765%s}
nodes:
  - {id: gpu-01, host: 10.0.0.1, roles: [stt_realtime, tts]}
  - {id: v6, host: "fd00::5", api_port: 9000}
"""


@pytest.mark.parametrize(("given", "seconds"), [
    ("7d", 7 * 86400.0), ("36h", 36 * 3600.0), ("90m", 5400.0), ("120s", 120.0),
    ("1.5h", 5400.0), (3600, 3600.0), (86400.5, 86400.5)])
def test_metrics_retention_takes_seconds_or_a_duration(tmp_path: Path, given: object,
                                                       seconds: float) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"registry": {"metrics_retention": given}}))
    assert load_config(str(path), env={}).registry.metrics_retention == seconds


def test_metrics_retention_default_env_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("{}\n")
    assert load_config(str(path), env={}).registry.metrics_retention == 7 * 86400.0
    env = {"SKELETON_REGISTRY_METRICS_RETENTION": "2d"}
    assert load_config(str(path), env=env).registry.metrics_retention == 2 * 86400.0
    for bad, why in (("7 weeks", "seconds or a duration"), ("-1d", "seconds or a duration"),
                     (0, "positive"), ("400d", "at most a year"), (True, "seconds or")):
        path.write_text(yaml.safe_dump({"registry": {"metrics_retention": bad}}))
        with pytest.raises(ConfigError, match=f"registry.metrics_retention: .*{why}"):
            load_config(str(path), env={})


def test_scrape_config_targets_and_labels() -> None:
    nodes = [Node(id="b", host="fd00::5", api_port=9000),
             Node(id="a", host="10.0.0.1", api_port=8765, roles=("tts", "stt_batch"))]
    assert target(nodes[0]) == "[fd00::5]:9000"
    doc = scrape_config(nodes, token_file="/etc/prometheus/t")
    (job,) = doc["scrape_configs"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/etc/prometheus/t"}
    assert job["static_configs"] == [
        {"targets": ["10.0.0.1:8765"], "labels": {"node": "a", "roles": "tts,stt_batch"}},
        {"targets": ["[fd00::5]:9000"], "labels": {"node": "b", "roles": ""}}]
    assert "authorization" not in scrape_config(nodes, token_file=None)["scrape_configs"][0]


@pytest.mark.parametrize("token", [None, "s3cret-token-never-printed"])
def test_nodes_export_prometheus(tmp_path: Path, token: str | None) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(NODES % (f", health_token: {token}" if token else ""))
    result = CliRunner().invoke(
        cli, ["nodes", "export", "--prometheus", "--config", str(path),
              "--token-file", "/run/secrets/skeleton"], env={"SKELETON_DATABASE_URL": ""})
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout)
    (job,) = doc["scrape_configs"]
    assert [c["targets"] for c in job["static_configs"]] == [["10.0.0.1:8765"],
                                                             ["[fd00::5]:9000"]]
    assert job["static_configs"][0]["labels"] == {"node": "gpu-01",
                                                  "roles": "stt_realtime,tts"}
    if token:
        assert job["authorization"]["credentials_file"] == "/run/secrets/skeleton"
        assert token not in result.output
    else:
        assert "authorization" not in job
        assert result.stdout.startswith("# skeleton: daemon.health_token is not set")
