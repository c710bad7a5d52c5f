"""The collector's own alert sink: ``POST /alerts`` with Grafana's webhook JSON.

With no notification channel configured, Grafana's contact point ``coinpulse`` posts here (README.md, "Alerts"),
so a fresh stack shows delivery end to end: every alert of a notification becomes one log line (logger
``collector.alerts``, key=value) and is counted in ``coinpulse_alert_notifications_total{status}`` (``firing``,
``resolved``; a body that is not a Grafana webhook counts once as ``invalid``).

The payload is Grafana's (and Alertmanager's) webhook JSON: ``{"receiver", "status", "alerts": [{"status",
"labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint", ...}], "groupLabels",
"commonLabels", ...}``. Parsing is pure (``parse_notification``); ``AlertReceiver`` logs and counts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from collector.metrics import Metrics

__all__ = ["MAX_BODY", "AlertReceiver", "InvalidNotification", "ReceivedAlert", "parse_notification"]

log = logging.getLogger("collector.alerts")

MAX_BODY = 1024 * 1024
"""Bytes a notification may have; Grafana's are a few KB per alert."""

_KEY_LABELS = ("severity", "threshold_id", "kind", "subject", "asset_id", "exchange_id", "job", "instance")


class InvalidNotification(ValueError):
    """The body is not a Grafana/Alertmanager webhook notification."""


@dataclass(frozen=True, slots=True)
class ReceivedAlert:
    status: str  # "firing" or "resolved"
    alertname: str
    labels: dict[str, str]
    summary: str
    starts_at: str
    fingerprint: str
    receiver: str


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidNotification(f"{what} must be an object")
    return {str(k): str(v) for k, v in value.items()}


def parse_notification(body: bytes) -> list[ReceivedAlert]:
    """The alerts of one webhook notification; InvalidNotification if it is not one."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidNotification(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("alerts"), list):
        raise InvalidNotification("expected an object with an `alerts` list")
    receiver = str(data.get("receiver", ""))
    out = []
    for item in data["alerts"]:
        if not isinstance(item, dict):
            raise InvalidNotification("every alert must be an object")
        status = item.get("status")
        if status not in ("firing", "resolved"):
            raise InvalidNotification(f"alert status must be firing or resolved, not {status!r}")
        labels = _strings(item.get("labels"), "labels")
        annotations = _strings(item.get("annotations"), "annotations")
        out.append(ReceivedAlert(str(status), labels.get("alertname", ""), labels, annotations.get("summary", ""),
                                 str(item.get("startsAt", "")), str(item.get("fingerprint", "")), receiver))
    return out


def _kv(value: str) -> str:
    """A log value: bare when it is one plain word, else JSON-quoted (so a line always splits back into pairs)."""
    if value and all(c.isalnum() or c in "-_.:/@+%" for c in value):
        return value
    return json.dumps(value, ensure_ascii=False)


class AlertReceiver:
    """Logs and counts the notifications posted to ``/alerts``."""

    def __init__(self, metrics: Metrics) -> None:
        self._counter = metrics.alert_notifications

    def handle(self, body: bytes) -> list[ReceivedAlert]:
        """Log one line per alert and count it; InvalidNotification (counted as ``invalid``) otherwise."""
        try:
            alerts = parse_notification(body)
        except InvalidNotification as exc:
            self._counter.labels(status="invalid").inc()
            log.warning("alert notification rejected reason=%s bytes=%d", _kv(str(exc)), len(body))
            raise
        for alert in alerts:
            self._counter.labels(status=alert.status).inc()
            extra = " ".join(f"{k}={_kv(alert.labels[k])}" for k in _KEY_LABELS if alert.labels.get(k))
            log.info("alert status=%s alertname=%s %s summary=%s starts_at=%s fingerprint=%s receiver=%s",
                     alert.status, _kv(alert.alertname), extra or "-", _kv(alert.summary), _kv(alert.starts_at),
                     _kv(alert.fingerprint), _kv(alert.receiver))
        return alerts
