"""Intake (counting, queueing), the polling scheduler, and the HTTP server, each with fake neighbours."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from datetime import timedelta

import pytest

from collector.buffer import RecordQueue
from collector.coincap.models import ParseResult, Reject
from collector.errors import CoinCapAuthError, CoinCapUnavailable
from collector.http import HealthReport, HttpServer
from collector.intake import Intake
from collector.metrics import Metrics
from collector.scheduler import Job, Scheduler
from records import T0, asset_snapshot, ticks


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


class TestIntake:
    def test_counts_ticks_rejects_and_queues(self) -> None:
        metrics, queue = Metrics(), RecordQueue(100)
        intake = Intake(queue, metrics)
        result = ParseResult([*ticks(3), asset_snapshot()], [Reject("non_numeric", "x"), Reject("non_json", "y")])
        assert intake.accept(result)
        assert len(queue) == 4
        assert sample(metrics, "coinpulse_ticks_received_total", source="ws") == 3
        assert sample(metrics, "coinpulse_rows_rejected_total", reason="non_numeric") == 1
        assert metrics.newest_tick_at() == ticks(3)[-1].time.timestamp()

    def test_full_queue_drops_and_counts(self) -> None:
        metrics = Metrics()
        intake = Intake(RecordQueue(5), metrics)
        assert intake.submit(ticks(5))
        assert not intake.submit(ticks(2))
        assert sample(metrics, "coinpulse_rows_dropped_total", reason="queue_full") == 2

    def test_reject_logs_are_rate_limited(self, caplog: pytest.LogCaptureFixture) -> None:
        now = [0.0]
        intake = Intake(RecordQueue(10), Metrics(), log_every=60, clock=lambda: now[0])
        with caplog.at_level(logging.WARNING, logger="collector.intake"):
            for _ in range(1000):
                intake.reject(Reject("non_json", "garbage"))
            now[0] = 61.0
            intake.reject(Reject("non_json", "garbage"))
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2
        assert lines[1].endswith("suppressed_since_last=999")


class TestScheduler:
    def test_runs_every_job_at_start_then_by_interval(self) -> None:
        now = [0.0]
        calls: list[str] = []

        def job(name: str) -> Job:
            def fetch() -> ParseResult[object]:
                calls.append(name)
                return ParseResult([asset_snapshot(time=T0 + timedelta(seconds=len(calls)))], [])
            return Job(name, {"a": 10.0, "b": 25.0}[name], fetch)

        queue = RecordQueue(100)
        sched = Scheduler([job("a"), job("b")], Intake(queue, Metrics()), monotonic=lambda: now[0])

        class Stop(threading.Event):
            def wait(self, timeout: float | None = None) -> bool:
                now[0] += timeout or 0
                if now[0] > 60:
                    self.set()
                return self.is_set()

        sched.run(Stop())
        # a at 0,10,...,60; b at 0,25,50 (a first when both are due)
        assert calls == ["a", "b", "a", "a", "b", "a", "a", "a", "b", "a"]
        assert len(queue) == len(calls)

    def test_errors_are_survived_and_said_once(self, caplog: pytest.LogCaptureFixture) -> None:
        failures = iter([CoinCapAuthError("CoinCap rejected the API key"), CoinCapUnavailable("down"),
                         CoinCapUnavailable("down")])

        def fetch() -> ParseResult[object]:
            raise next(failures)

        sched = Scheduler([Job("assets", 1, fetch)], Intake(RecordQueue(10), Metrics()))
        with caplog.at_level(logging.WARNING, logger="collector.scheduler"):
            assert not sched.run_job(sched.jobs[0])
            assert not sched.run_job(sched.jobs[0])
            assert not sched.run_job(sched.jobs[0])
        assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING"]
        assert sched.last_error["assets"] == "down"


class TestHttp:
    def serve(self, health: HealthReport) -> tuple[HttpServer, Metrics]:
        metrics = Metrics()
        server = HttpServer("127.0.0.1", 0, metrics, lambda: health)
        server.start()
        return server, metrics

    def test_metrics_and_healthy(self) -> None:
        server, metrics = self.serve({})
        try:
            metrics.rows_written.labels(table="price_ticks").inc(7)
            base = f"http://127.0.0.1:{server.port}"
            with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
                text = resp.read().decode()
            assert 'coinpulse_rows_written_total{table="price_ticks"} 7.0' in text
            with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
                assert resp.status == 200
                assert json.loads(resp.read()) == {"status": "ok", "failing": {}}
        finally:
            server.stop()

    def test_unhealthy_is_503_naming_checks(self) -> None:
        server, _ = self.serve({"database": "not connected: refused"})
        try:
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
            assert err.value.code == 503
            assert json.loads(err.value.read()) == {"status": "fail",
                                                    "failing": {"database": "not connected: refused"}}
            err.value.close()
        finally:
            server.stop()
