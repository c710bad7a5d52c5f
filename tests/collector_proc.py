"""Running `coinpulse` as a user would: a subprocess with an environment, read through /metrics and /healthz."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CollectorProcess:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.port = free_port()
        self.log_path = tmp / "collector.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("COINPULSE_", "COINCAP_"))}
        self.env = {**base, "COINPULSE_METRICS_HOST": "127.0.0.1", "COINPULSE_METRICS_PORT": str(self.port),
                    "COINPULSE_SPOOL_DIR": str(tmp / "spool"), **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CollectorProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "collector.cli", "run"], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        _, body = self.get("/metrics")
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def health(self) -> tuple[int, dict[str, Any]]:
        code, body = self.get("/healthz")
        return code, json.loads(body)

    def wait_for(self, check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited with {self.proc.returncode} waiting for {what}:\n{self.log}")
            try:
                if check():
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.log[-3000:]}")

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"collector did not exit within {timeout}s of SIGTERM:\n{self.log[-3000:]}") from None
        finally:
            self._log.close()
        return code
