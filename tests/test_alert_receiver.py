"""POST /alerts on the collector's real HTTP server (127.0.0.1): Grafana's webhook payload is logged one line per
alert and counted in coinpulse_alert_notifications_total{status}; anything else is refused and counted."""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from collector.http import HttpServer
from collector.metrics import Metrics

# A notification as Grafana 12's webhook integration sends it (alerting/receivers/webhook: the Alertmanager
# webhook fields plus Grafana's orgId, state, title, message, values, valueString...).
GRAFANA_PAYLOAD = {
    "receiver": "coinpulse",
    "status": "firing",
    "orgId": 1,
    "alerts": [
        {"status": "firing",
         "labels": {"alertname": "CoinPulse: user threshold breached", "coinpulse_area": "thresholds",
                    "grafana_folder": "CoinPulse alerts", "threshold_id": "7", "kind": "price_below",
                    "subject": "bitcoin", "severity": "critical", "owner": "", "time_window": "", "unit": "USD"},
         "annotations": {"summary": "bitcoin price 59000 USD is below 60000 USD",
                         "description": "Threshold 7 (price_below bitcoin): current value 59000 USD"},
         "startsAt": "2026-12-02T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
         "generatorURL": "http://grafana:3000/alerting/grafana/coinpulse-user-thresholds/view",
         "fingerprint": "a1b2c3d4e5f60718", "silenceURL": "http://grafana:3000/alerting/silence/new?x=y",
         "dashboardURL": "", "panelURL": "", "values": {"A": 1, "B": 59000, "C": 60000, "D": 1},
         "valueString": "[ var='A' labels={threshold_id=7} value=1 ]"},
        {"status": "resolved",
         "labels": {"alertname": "CoinPulse: no ticks stored", "severity": "critical"},
         "annotations": {"summary": "No price tick stored for 12m"},
         "startsAt": "2026-12-02T09:00:00Z", "endsAt": "2026-12-02T09:30:00Z", "generatorURL": "",
         "fingerprint": "0f0e0d0c0b0a0908", "values": None, "valueString": ""},
    ],
    "groupLabels": {"alertname": "CoinPulse: user threshold breached", "threshold_id": "7"},
    "commonLabels": {"severity": "critical"},
    "commonAnnotations": {},
    "externalURL": "http://grafana:3000/",
    "version": "1",
    "groupKey": "{}:{alertname=\"CoinPulse: user threshold breached\"}",
    "truncatedAlerts": 0,
    "title": "[FIRING 1] bitcoin price 59000 USD is below 60000 USD",
    "state": "alerting",
    "message": "FIRING: bitcoin price 59000 USD is below 60000 USD ...",
}


@pytest.fixture
def server() -> Iterator[tuple[str, Metrics]]:
    metrics = Metrics()
    http = HttpServer("127.0.0.1", 0, metrics, lambda: {})
    http.start()
    try:
        yield f"http://127.0.0.1:{http.port}", metrics
    finally:
        http.stop()


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def count(metrics: Metrics, status: str) -> float:
    value = metrics.registry.get_sample_value("coinpulse_alert_notifications_total", {"status": status})
    return value or 0.0


def test_a_grafana_notification_is_logged_and_counted(server: tuple[str, Metrics],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    base, metrics = server
    with caplog.at_level(logging.INFO, logger="collector.alerts"):
        code, body = post(base + "/alerts", json.dumps(GRAFANA_PAYLOAD).encode())
    assert (code, json.loads(body)) == (200, {"received": 2})
    assert (count(metrics, "firing"), count(metrics, "resolved"), count(metrics, "invalid")) == (1.0, 1.0, 0.0)
    lines = [r.getMessage() for r in caplog.records if r.name == "collector.alerts"]
    assert lines == [
        'alert status=firing alertname="CoinPulse: user threshold breached" severity=critical threshold_id=7 '
        'kind=price_below subject=bitcoin summary="bitcoin price 59000 USD is below 60000 USD" '
        'starts_at=2026-12-02T10:00:00Z fingerprint=a1b2c3d4e5f60718 receiver=coinpulse',
        'alert status=resolved alertname="CoinPulse: no ticks stored" severity=critical '
        'summary="No price tick stored for 12m" starts_at=2026-12-02T09:00:00Z fingerprint=0f0e0d0c0b0a0908 '
        'receiver=coinpulse']
    # ... and the counter is on /metrics for Prometheus.
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'coinpulse_alert_notifications_total{status="firing"} 1.0' in text


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"alerts": [{"status": "pending"}]}', b'{"alerts": {}}',
                                  b'{"alerts": [{"status": "firing", "labels": []}]}'])
def test_anything_else_is_refused_and_counted_as_invalid(server: tuple[str, Metrics], body: bytes) -> None:
    base, metrics = server
    code, text = post(base + "/alerts", body)
    assert code == 400 and text.startswith(b"not a webhook notification: ")
    assert count(metrics, "invalid") == 1.0 and count(metrics, "firing") == 0.0


def test_wrong_path_and_oversized_bodies(server: tuple[str, Metrics]) -> None:
    base, metrics = server
    assert post(base + "/metrics", b"{}")[0] == 404
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:  # announce a body over the limit, send none: refused before anything is read
        conn.putrequest("POST", "/alerts")
        conn.putheader("Content-Length", str(1024 * 1024 + 1))
        conn.endheaders()
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    assert count(metrics, "invalid") == 0.0  # never read, never counted
