"""Prometheus and Grafana in docker/compose.yaml: wired to the daemon, provisioned from docker/, and a dashboard
whose every query names metrics the daemon really exports (read from a live daemon's `/metrics`, not a list)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefetchd.testing.daemon_process import DaemonProcess, scrape
from prefetchd_client import idx_iter
from tests.deploy.compose_cli import COMPOSE_FILE, resolved_model

DOCKER = COMPOSE_FILE.parent
DASHBOARD = DOCKER / "grafana" / "dashboards" / "prefetchd.json"
PINNED = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+$")  # an exact release, never `latest`
# PromQL words that are not metric names: aggregation modifiers, set and vector-matching operators
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return resolved_model()


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → the file or folder of docker/ bound there (read-only)."""
    binds = [m for m in service.get("volumes", []) if m["type"] == "bind"]
    assert all(m.get("read_only") for m in binds), "provisioning is read-only"
    return {m["target"]: Path(m["source"]) for m in binds}


def _daemon_listen_port(model: dict[str, Any]) -> int:
    command = model["services"]["prefetchd"]["command"]
    host, _, port = command[command.index("--http") + 1].rpartition(":")
    assert host == "0.0.0.0", "inside its container the daemon must listen beyond loopback to be scraped"
    return int(port)


def test_prometheus_and_grafana_are_pinned_and_provisioned_from_docker(model: dict[str, Any]) -> None:
    prometheus, grafana = model["services"]["prometheus"], model["services"]["grafana"]
    assert prometheus["image"].startswith("prom/prometheus:") and PINNED.match(prometheus["image"])
    assert grafana["image"].startswith("grafana/grafana:") and PINNED.match(grafana["image"])
    assert _mounts(prometheus) == {"/etc/prometheus/prometheus.yml": DOCKER / "prometheus.yml"}
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == DOCKER / "grafana" / "provisioning"
    for mount in mounts.values():
        assert mount.exists(), mount
    (provider,) = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/prefetchd.yaml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent, "the provider reads where the dashboards are"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounts[str(Path(home).parent)] / Path(home).name == DASHBOARD
    (source,) = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    panel_sources = {p["datasource"]["uid"] for p in _panels()} | {t["datasource"]["uid"] for t in _targets()}
    assert panel_sources == {source["uid"]}, "every panel asks the provisioned data source"
    assert {dep: spec["condition"] for dep, spec in grafana["depends_on"].items()} == {"prometheus": "service_started"}


def test_prometheus_scrapes_the_daemon_service_on_the_port_it_listens_on(model: dict[str, Any]) -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (targets,) = [group["targets"] for group in job["static_configs"]]
    assert targets == [f"prefetchd:{_daemon_listen_port(model)}"]
    assert "prefetchd" in model["services"], "the target is the daemon's compose service name"


def _panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return panels


def _targets() -> list[dict[str, Any]]:
    return [target for panel in _panels() for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once label matchers, ranges, grouping
    clauses, strings, numbers and function calls are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    words = re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", text)
    return {m.group(1) for m in words if not m.group(2) and m.group(1) not in PROMQL_WORDS}


def test_metric_names_are_read_out_of_promql() -> None:
    expr = 'sum by (kind) (rate(a_total{kind="x y"}[1m])) / on (kind) b + 2 * max without (le) (c_bucket)'
    assert metric_names(expr) == {"a_total", "b", "c_bucket"}


def test_the_dashboard_shows_throughput_stall_retries_rings_and_the_aimd_limit() -> None:
    names = set().union(*(metric_names(t["expr"]) for t in _targets()))
    assert {
        "prefetchd_sent_bytes_total",
        "prefetchd_s3_received_bytes_total",
        "prefetchd_batches_total",
        "prefetchd_trainer_wait_seconds_total",
        "prefetchd_s3_retries_total",
        "prefetchd_s3_failed_requests_total",
        "prefetchd_stream_ring_slots",
        "prefetchd_s3_concurrency_limit",
    } <= names
    stall = [t["expr"] for t in _targets() if "prefetchd_trainer_wait_seconds_total" in t["expr"]]
    assert any(e.startswith("sum(rate(prefetchd_trainer_wait_seconds_total[") for e in stall), "stall as a rate"


def test_every_dashboard_query_names_only_metrics_a_live_daemon_exports(
    daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    image, label = fashion_urls["t10k-images-idx3-ubyte"], fashion_urls["t10k-labels-idx1-ubyte"]
    with idx_iter(image, label, batch_size=100, socket_path=daemon.socket_path) as batches:
        for _ in range(3):
            next(batches)
        exported = {name for name, _labels in scrape(daemon.http_url)}  # per-stream series live while it is open
    for target in _targets():
        names = metric_names(target["expr"])
        assert names, target["expr"]
        assert names <= exported, f"{target['expr']}: {sorted(names - exported)} are not exported"
