"""A real Prometheus server scrapes a real aggregator during a training run of real clients.

Prometheus (Debian's package, installed by `make test` through .ci/install-tools) runs as a child process
on 127.0.0.1 with a temporary storage folder, on deploy/prometheus/prometheus.yml (target and intervals
adapted) and the real alert rules. The test reads the round metrics back through the HTTP query API,
evaluates every Grafana dashboard query, and watches FedserAggregatorDown go pending when the aggregator stops.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

import grpc
import pytest
import yaml

from experiments.processes import single_thread_env, start_aggregator, start_client, stop_process
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import aggregator_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CLIENT_ARGS = ["--threads", "1"]
TRAIN_PER_CLIENT = 56  # 3 speakers x 28 files per client, one speaker held out
# Dashboard variables as Grafana would fill them in.
DASHBOARD_VARS = {"$job": "fedser-aggregator", "$window": "5m", "$__rate_interval": "1m"}
# Panels that may be empty after a clean run: no auth in --insecure mode.
MAY_BE_EMPTY = {"Authentication failures by reason [A]"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail("prometheus is not installed: run `make test` (it installs the deploy tools) or .ci/install-tools")
    return found


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.base}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read().decode())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, AssertionError, KeyError, ValueError) as exc:
            last_error = exc
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what} (last error: {last_error})\n{tail}")


def write_config(tmp_path: Path, metrics_port: int) -> Path:
    """deploy/prometheus/prometheus.yml, pointed at the test's aggregator, scraping every second."""
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "fedser-aggregator"
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def dashboard_queries() -> dict[str, str]:
    d = json.loads((DEPLOY / "grafana/fedser-dashboard.json").read_text())
    out = {}
    for p in d["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in DASHBOARD_VARS.items():
                expr = expr.replace(var, value)
            out[f"{p['title']} [{t['refId']}]"] = expr
    return out


def push_without_header(target: str) -> None:
    """One update that the aggregator must refuse (bad_header): the rejections panel gets data."""
    with grpc.insecure_channel(target) as ch:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.AggregatorStub(ch).PushUpdate(iter([pb.PushUpdateRequest(chunk=b"not a header")]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_real_prometheus_scrapes_a_training_run(tmp_path: Path, corpus: list[Path]) -> None:
    binary = prometheus_binary()
    env = single_thread_env()
    agg = start_aggregator(tmp_path / "ckpt", tmp_path / "aggregator.log", env=env, args=[
        "--clients-per-round", "3", "--min-clients", "2", "--rounds", "2", "--round-timeout", "120",
        "--local-epochs", "1", "--batch-size", "16",
    ])
    port = free_port()
    prom_log = tmp_path / "prometheus.log"
    with open(prom_log, "wb") as log:
        prom = subprocess.Popen(
            [binary, f"--config.file={write_config(tmp_path, agg.metrics_port)}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    api = Prometheus(port)
    clients: list[subprocess.Popen] = []
    try:
        wait_for("Prometheus to serve queries", lambda: prom.poll() is None and api.query("vector(1)") != [], 60, prom_log)
        # The alert rules of deploy/ loaded and evaluating without errors.
        groups = api.get("/api/v1/rules")["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        assert set(rules) == {"FedserAggregatorDown", "FedserNoRoundClosed", "FedserRejectionRateHigh",
                              "FedserTooFewParticipants"}
        wait_for("the first scrape", lambda: api.value('up{job="fedser-aggregator"}') == 1, 30, prom_log)
        assert api.value("fedser_model_version") == 0

        push_without_header(agg.target)
        clients = [start_client(agg.target, folder, f"client-{k}", tmp_path / f"client-{k}.log", CLIENT_ARGS, env=env)
                   for k, folder in enumerate(corpus)]
        for c in clients:
            c.wait(timeout=300)
        assert [c.returncode for c in clients] == [0, 0, 0], [
            (tmp_path / f"client-{k}.log").read_text()[-1500:] for k in range(3)]

        # Read the round metrics back through Prometheus, once it has scraped the end of the run.
        wait_for("Prometheus to see the finished federation",
                 lambda: api.value("fedser_federation_finished") == 1 and api.value("fedser_global_evaluated_version") == 2,
                 30, prom_log)
        assert api.value("fedser_model_version") == 2
        assert api.value("fedser_round") == 2
        assert api.value("fedser_round_participants") == 3
        assert api.value("fedser_round_samples") == 3 * TRAIN_PER_CLIENT
        assert api.value('fedser_rounds_completed_total{closed_by="quorum"}') == 2
        assert api.value("fedser_round_duration_seconds_count") == 2
        assert api.value('fedser_updates_total{status="accepted"}') == 6
        assert api.value('fedser_updates_total{status="rejected",reason="bad_header"}') == 1
        assert api.value('fedser_evaluation_reports_total{status="accepted"}') == 9
        assert api.value("fedser_global_evaluation_examples") == 84
        assert 0 <= api.value("fedser_global_accuracy") <= 1 and 0 <= api.value("fedser_global_uar") <= 1
        assert api.value("fedser_bytes_sent_total") > 0 and api.value("fedser_bytes_received_total") > 0
        (build,) = api.query("fedser_build_info")
        assert build["metric"]["job"] == "fedser-aggregator" and build["metric"]["architecture"] == "seed-cnn-v1"

        # Every dashboard query answers with data from this run.
        def empty() -> list[str]:
            return [name for name, expr in dashboard_queries().items() if not api.query(expr)]

        # increase() needs two samples of a series: give Prometheus a few more scrapes if the run was quick.
        deadline = time.monotonic() + 20
        while not set(empty()) <= MAY_BE_EMPTY and time.monotonic() < deadline:
            time.sleep(1)
        assert set(empty()) <= MAY_BE_EMPTY, f"dashboard queries without data: {empty()}"
        (p50,) = api.query(dashboard_queries()["Round duration quantiles [A]"])
        assert 0 < float(p50["value"][1]) <= 300
        (rejected,) = api.query(dashboard_queries()["Rejected updates by reason [A]"])
        assert rejected["metric"] == {"reason": "bad_header"}

        # A healthy run fires nothing.
        assert [a for a in api.get("/api/v1/alerts")["alerts"] if a["state"] != "inactive"] == []
        evaluated = [r for g in api.get("/api/v1/rules")["groups"] for r in g["rules"]]
        assert [(r["name"], r["health"]) for r in evaluated] == [(name, "ok") for name in rules], evaluated

        # The aggregator goes away: up == 0 and FedserAggregatorDown is pending (it fires after its `for: 2m`).
        assert agg.stop() == 0
        wait_for("up == 0", lambda: api.value('up{job="fedser-aggregator"}') == 0, 30, prom_log)

        def down_pending() -> bool:
            alerts = [a for a in api.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == "FedserAggregatorDown"]
            return [a["state"] for a in alerts] == ["pending"] and alerts[0]["labels"]["severity"] == "critical"

        wait_for("FedserAggregatorDown to be pending", down_pending, 30, prom_log)
    finally:
        for c in clients:
            stop_process(c)
        agg.stop()
        assert stop_process(prom, timeout_s=30) == 0, prom_log.read_text()[-3000:]
