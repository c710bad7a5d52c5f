"""The collector's HTTP server: ``/metrics`` (Prometheus text), ``/healthz`` (200 or 503, JSON), and ``POST /alerts``
(Grafana's webhook, logged and counted: collector/alert_receiver.py)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector.alert_receiver import MAX_BODY, AlertReceiver, InvalidNotification
from collector.metrics import Metrics

__all__ = ["HealthReport", "HttpServer"]

log = logging.getLogger(__name__)

HealthReport = dict[str, str]
"""Failing checks by name, each with a one-line reason; empty when healthy."""


class HttpServer:
    def __init__(self, host: str, port: int, metrics: Metrics, health: Callable[[], HealthReport],
                 details: Callable[[], dict[str, Any]] | None = None) -> None:
        self._metrics = metrics
        self._health = health
        self._alerts = AlertReceiver(metrics)  # POST /alerts: Grafana's webhook (collector/alert_receiver.py)
        self._details = details  # extra, informational keys of the /healthz body (e.g. the spool's state)
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()
        log.info("http listening port=%d paths=/metrics,/healthz", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "coinpulse"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(outer._metrics.registry))
                elif path == "/healthz":
                    failing = outer._health()
                    body: dict[str, Any] = {"status": "fail" if failing else "ok", "failing": failing}
                    if outer._details is not None:
                        body.update(outer._details())
                    self._send(503 if failing else 200, "application/json", json.dumps(body).encode())
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

            def do_POST(self) -> None:
                if self.path.split("?", 1)[0] != "/alerts":
                    self._send(404, "text/plain; charset=utf-8", b"not found: POST only to /alerts\n")
                    return
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    self._send(411, "text/plain; charset=utf-8", b"Content-Length required\n")
                    return
                if not 0 <= length <= MAX_BODY:
                    self._send(413, "text/plain; charset=utf-8", b"notification too large\n")
                    return
                try:
                    alerts = outer._alerts.handle(self.rfile.read(length))
                except InvalidNotification as exc:
                    self._send(400, "text/plain; charset=utf-8", f"not a webhook notification: {exc}\n".encode())
                    return
                self._send(200, "application/json", json.dumps({"received": len(alerts)}).encode())

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http %s", format % args)

        return Handler
