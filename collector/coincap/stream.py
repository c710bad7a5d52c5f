"""The CoinCap v3 price stream: ``wss://wss.coincap.io/prices?assets=...&apiKey=...`` with a watchdog.

``PriceStream.run(stop)`` connects, hands every text frame to ``on_message(text, received_at)`` and
reconnects whenever the socket closes, fails, or stays silent for ``watchdog`` seconds (the watchdog: an
open socket that delivers nothing is as dead as a closed one), until ``stop`` is set. Reconnects wait a
capped, jittered exponential backoff (``collector.backoff.Backoff``), reset by the first message of a
working connection, so a server that accepts connections but stays silent is retried ever more slowly, up
to the cap.

Time is injected: ``clock`` (monotonic seconds) measures silence and ``sleep`` waits out the backoff, so
tests drive both with a fake clock; ``poll`` is the longest blocking receive, i.e. how often the watchdog
and ``stop`` are looked at.

A key whose plan has no streaming (a plain-text ``Unauthorized`` frame, or HTTP 401/403 on the upgrade)
raises ``NoWebSocketAccess``: the caller falls back to REST polling.

Every ``on_connect(at)`` is followed by exactly one ``on_disconnect(at, reason)``, reason one of
``watchdog``, ``closed``, ``error``, ``unauthorized`` or ``stop``, so outages can be recorded as gaps.
The API key is part of the URL (CoinCap's documented form), so the URL is never logged unredacted.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import websocket

from collector.backoff import Backoff, Sleeper
from collector.coincap.parse import is_valid_id
from collector.errors import NoWebSocketAccess
from collector.metrics import Metrics

__all__ = ["PriceStream"]

log = logging.getLogger(__name__)

_MAX_POLL = 1.0
"""Longest blocking receive, so ``stop`` and the watchdog are checked at least this often."""
_CLOSE_TIMEOUT = 1.0
_API_KEY_PARAM = re.compile(r"(apiKey=)[^&\s]*")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PriceStream:
    """One WebSocket subscription to CoinCap's ``/prices``, kept alive until stopped."""

    def __init__(
        self,
        ws_url: str,
        api_key: str,
        assets: Sequence[str] | Literal["ALL"],
        on_message: Callable[[str, datetime], object],
        *,
        metrics: Metrics | None = None,
        watchdog: float = 30.0,
        backoff: Backoff | None = None,
        on_connect: Callable[[datetime], object] | None = None,
        on_disconnect: Callable[[datetime, str], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _utcnow,
        connect_timeout: float = 10.0,
        sleep: Sleeper | None = None,
        poll: float | None = None,
    ) -> None:
        if watchdog <= 0 or connect_timeout <= 0 or (poll is not None and poll <= 0):
            raise ValueError("watchdog, connect_timeout and poll must be positive")
        if assets == "ALL":
            subscription = "ALL"
        else:
            bad = [asset for asset in assets if not is_valid_id(asset)]
            if bad or not assets:
                raise ValueError(f"assets must be 'ALL' or CoinCap slugs, got {list(assets)!r}")
            subscription = ",".join(assets)
        self._url = f"{ws_url.rstrip('/')}/prices?assets={subscription}&apiKey={quote(api_key, safe='')}"
        self._key = api_key
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._metrics = metrics
        self._watchdog = watchdog
        self._poll = poll if poll is not None else min(_MAX_POLL, watchdog / 2)
        self._sleep = sleep  # None: wait on the stop event
        self._backoff = backoff if backoff is not None else Backoff(initial=1.0, cap=60.0)
        self._clock = clock
        self._wall_clock = wall_clock
        self._connect_timeout = connect_timeout

    @property
    def url(self) -> str:
        """The stream URL with the API key redacted (for logs and messages)."""
        return self._redact(self._url)

    def run(self, stop: threading.Event) -> None:
        """Stream until ``stop`` is set; raises ``NoWebSocketAccess`` when the key may not stream."""
        sleep: Sleeper = self._sleep if self._sleep is not None else stop.wait
        self._backoff.reset()
        while not stop.is_set():
            reason = self._session(stop)
            if reason == "stop" or stop.is_set():
                break
            if self._metrics is not None:
                self._metrics.stream_reconnects.labels(reason=reason).inc()
            delay = self._backoff.next_delay()
            log.warning("price stream lost reason=%s reconnect_in=%.2fs url=%s", reason, delay, self.url)
            if sleep(delay) or stop.is_set():
                break
        log.info("price stream stopped url=%s", self.url)

    # -- one connection ------------------------------------------------------------------------------------

    def _session(self, stop: threading.Event) -> str:
        """Connect once and receive until the connection ends; the reason it ended."""
        ws = self._connect()
        if ws is None:
            return "error"
        connected_at = self._wall_clock()
        opened = self._clock()  # silence is measured from here until the first message
        log.info("price stream connected url=%s", self.url)
        if self._metrics is not None:
            self._metrics.stream_connected.set(1)
        reason = "error"
        try:
            if self._on_connect is not None:
                self._on_connect(connected_at)
            reason = self._receive(ws, stop, opened)
        except NoWebSocketAccess:
            reason = "unauthorized"
            raise
        finally:
            # No close handshake after 'Unauthorized': the server is closing already (1008), and websocket-client
            # logs a non-1000 close reply at ERROR level, a second, alarming line beside the fallback's one.
            self._close(ws, handshake=reason not in ("closed", "unauthorized"))
            if self._metrics is not None:
                self._metrics.stream_connected.set(0)
            if self._on_disconnect is not None:
                self._on_disconnect(self._wall_clock(), reason)
        return reason

    def _connect(self) -> Any:
        try:
            ws = websocket.create_connection(self._url, timeout=self._connect_timeout)
        except websocket.WebSocketBadStatusException as exc:
            if exc.status_code in (401, 403):
                raise self._no_access(f"HTTP {exc.status_code} on the upgrade") from None
            log.warning("price stream refused status=%s url=%s", exc.status_code, self.url)
            return None
        except (websocket.WebSocketException, OSError) as exc:
            log.warning("price stream cannot connect error=%s url=%s", self._describe(exc), self.url)
            return None
        ws.settimeout(self._poll)
        return ws

    def _receive(self, ws: Any, stop: threading.Event, opened: float) -> str:
        last = opened
        got_one = False
        while True:
            if stop.is_set():
                return "stop"
            silent = self._clock() - last
            if silent >= self._watchdog:
                log.warning("price stream silent for %.1fs (watchdog %.1fs), reconnecting", silent, self._watchdog)
                return "watchdog"
            try:
                opcode, data = ws.recv_data()
            except (websocket.WebSocketTimeoutException, TimeoutError):
                continue
            except websocket.WebSocketConnectionClosedException:
                return "closed"
            except (websocket.WebSocketException, OSError, ValueError) as exc:
                log.warning("price stream receive failed error=%s", self._describe(exc))
                return "error"
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return "closed"
            if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                continue
            received_at = self._wall_clock()
            last = self._clock()
            text = data.decode("utf-8", errors="replace") if isinstance(data, bytes | bytearray) else str(data)
            if text[:12].lower() == "unauthorized":
                raise self._no_access("the server answered 'Unauthorized'")
            if not got_one:
                got_one = True
                self._backoff.reset()  # a working connection: the next outage starts from a short delay
            self._on_message(text, received_at)

    def _close(self, ws: Any, handshake: bool) -> None:
        """Close politely (close frame, short wait for the reply) unless the peer already closed."""
        with contextlib.suppress(websocket.WebSocketException, OSError, ValueError):
            if handshake:
                ws.close(timeout=_CLOSE_TIMEOUT)
            else:
                ws.shutdown()

    def _no_access(self, what: str) -> NoWebSocketAccess:
        return NoWebSocketAccess(
            f"CoinCap refused the price stream ({what}): the API key's plan has no WebSocket access; "
            "use REST polling (COINPULSE_FEED=rest) or a paid plan")

    def _redact(self, text: str) -> str:
        text = _API_KEY_PARAM.sub(r"\1***", text)
        return text.replace(self._key, "***") if self._key else text

    def _describe(self, exc: BaseException) -> str:
        return self._redact(f"{type(exc).__name__}: {exc}")[:200]
