"""The Prometheus-datasource alert rules' PromQL, checked and run by Prometheus's own engine (promtool).

Each rule is what Grafana evaluates: an instant query, reduced to its last value, compared by the rule's
threshold expression. As a Prometheus rule that is ``(<query>) <op> <threshold>``; `promtool check rules` parses
it and `promtool test rules` evaluates it on synthetic series, asserting which series would alert.

promtool comes from `scripts/tools promtool` (Debian's prometheus package, unpacked into .cache/tools); without
it these tests skip, saying so.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from alerting_support import provisioned

ROOT = Path(__file__).resolve().parents[1]


def prometheus_rules() -> dict[str, Any]:
    """The provisioned Prometheus rules as a Prometheus rule file (alert name = Grafana rule uid)."""
    out = []
    for uid, rule in provisioned().items():
        data = {d["refId"]: d for d in rule["data"]}
        queries = [d for d in rule["data"] if d["datasourceUid"] == "coinpulse-prom"]
        if not queries:
            continue
        (query,) = queries
        assert query["model"]["instant"] is True
        condition = data[rule["condition"]]["model"]
        assert condition["type"] == "threshold"
        reduced = data[condition["expression"]]["model"]
        assert reduced == {**reduced, "type": "reduce", "expression": query["refId"], "reducer": "last"}
        evaluator = condition["conditions"][0]["evaluator"]
        op = {"gt": ">", "lt": "<"}[evaluator["type"]]
        out.append({"alert": uid, "expr": f"({query['model']['expr']}) {op} {evaluator['params'][0]}"})
    assert {r["alert"] for r in out} == {"coinpulse-commit-lag", "coinpulse-spool-growing",
                                         "coinpulse-collector-database-down"}
    return {"groups": [{"name": "coinpulse", "rules": out}]}


def run(promtool: str, tmp_path: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(prometheus_rules()), encoding="utf-8")
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}), encoding="utf-8")
    return subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)


def test_promql_parses(promtool: str, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(prometheus_rules()), encoding="utf-8")
    done = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 3 rules found" in done.stdout


def lag_buckets(instance: str, slow: bool) -> list[dict[str, str]]:
    """A histogram whose observations (10 a minute) all land in (5, 10] s when slow, in (0, 1] s otherwise."""
    grows, flat = "0+10x30", "0+0x30"
    return [{"series": f'coinpulse_tick_to_commit_seconds_bucket{{instance="{instance}",le="{le}"}}',
             "values": grows if (le in ("10", "+Inf") or not slow) else flat} for le in ("1", "5", "10", "+Inf")]


def test_rules_alert_on_exactly_the_expected_series(promtool: str, tmp_path: Path) -> None:
    tests = [
        {"interval": "1m",  # slow commits: p95 about 9.75 s > 5 s
         "input_series": lag_buckets("c1", slow=True),
         "alert_rule_test": [{"eval_time": "20m", "alertname": "coinpulse-commit-lag",
                              "exp_alerts": [{"exp_labels": {}}]}]},
        {"interval": "1m",  # fast commits: p95 under 1 s
         "input_series": lag_buckets("c1", slow=False),
         "alert_rule_test": [{"eval_time": "20m", "alertname": "coinpulse-commit-lag", "exp_alerts": []}]},
        {"interval": "1m",
         "input_series": [{"series": 'coinpulse_spool_bytes{instance="growing"}', "values": "0+4096x30"},
                          {"series": 'coinpulse_spool_bytes{instance="draining"}', "values": "100000-2000x30"},
                          {"series": 'coinpulse_spool_bytes{instance="empty"}', "values": "0+0x30"}],
         "alert_rule_test": [{"eval_time": "20m", "alertname": "coinpulse-spool-growing",
                              "exp_alerts": [{"exp_labels": {"instance": "growing"}}]}]},
        {"interval": "1m",
         "input_series": [{"series": 'coinpulse_database_up{instance="up"}', "values": "1x30"},
                          {"series": 'coinpulse_database_up{instance="down"}', "values": "1x5 0x25"}],
         "alert_rule_test": [{"eval_time": "20m", "alertname": "coinpulse-collector-database-down",
                              "exp_alerts": [{"exp_labels": {"instance": "down"}}]}]},
    ]
    done = run(promtool, tmp_path, tests)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_a_wrong_expectation_fails(promtool: str, tmp_path: Path) -> None:
    """promtool really evaluates: expecting the healthy instance to alert fails."""
    done = run(promtool, tmp_path, [
        {"interval": "1m", "input_series": [{"series": 'coinpulse_database_up{instance="up"}', "values": "1x30"}],
         "alert_rule_test": [{"eval_time": "20m", "alertname": "coinpulse-collector-database-down",
                              "exp_alerts": [{"exp_labels": {"instance": "up"}}]}]}])
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr
