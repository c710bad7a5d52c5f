"""A fake CoinCap v3 for tests: a REST server and a WebSocket server on 127.0.0.1, OS-chosen ports.

    with FakeCoinCap() as fake:
        rest = CoinCapRest(fake.rest_url, fake.api_key, timeout=2)
        fake.script(429, headers={"Retry-After": "3"})        # next request answers 429, then normal data
        fake.ws_script(['{"bitcoin": "84000.1"}'])            # sent to every new /prices connection

REST (``rest_url`` = ``http://127.0.0.1:PORT/v3``): /assets, /assets/{id}, /assets/{id}/markets,
/assets/{id}/history, /exchanges, /exchanges/{id}, /markets, /rates, /rates/{id}; data from the
attributes ``assets``, ``exchanges``, ``markets``, ``rates``, ``history`` (defaults: tests/fixtures/coincap),
honouring ``limit``/``offset``/``ids`` and the /markets filters. The key is checked (``Authorization:
Bearer`` or ``apiKey=``; wrong -> 401) unless ``api_key`` is None. Every request is recorded. ``script()``
queues responses (status, headers, body, delay), optionally for one path, consumed before normal answers;
status 0 hangs up without answering (a connection error for the client).

WebSocket (``ws_url`` = ``ws://127.0.0.1:PORT``, path /prices): a wrong ``apiKey`` (or ``ws_access=False``,
a plan without streaming) gets a text frame ``Unauthorized`` and a close, like CoinCap; ``ws_reject_status``
answers the upgrade with that HTTP status instead. Then: ``ws_script`` frames on connect, ``ws_send`` to
every client, ``ws_feed(interval)`` for a steady stream, ``ws_silent()`` to stay open but quiet,
``ws_close_all()`` to drop clients. Every frame sent to a client is recorded in ``ws_sent`` (when, to which
connection, what), so a test can compare what landed with what was sent. ``wait_for(predicate)`` waits for
the fake's state without sleeping.

Several clients are served at once (threads), so a ``coinpulse run`` subprocess can use it too.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

__all__ = ["DEFAULT_KEY", "FIXTURES", "FakeCoinCap", "RecordedRequest", "SentFrame", "load_fixture"]

FIXTURES = Path(__file__).parent / "fixtures" / "coincap"
DEFAULT_KEY = "fake-coincap-key-7c41d9e2"
_INTERVAL_MS = {"m1": 60_000, "m5": 300_000, "m15": 900_000, "m30": 1_800_000, "h1": 3_600_000,
                "h2": 7_200_000, "h6": 21_600_000, "h12": 43_200_000, "d1": 86_400_000}
_TICK = 0.05  # how often a WebSocket handler looks at the feed settings


def load_fixture(name: str) -> Any:
    """A fixture file (``assets``, ``exchanges``, ...) decoded, e.g. ``load_fixture("assets")["data"]``."""
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # as sent, without the query, e.g. "/v3/assets/bitcoin"
    query: dict[str, str]  # last value of each parameter
    headers: dict[str, str]  # names lower-cased


@dataclass(frozen=True)
class SentFrame:
    at: datetime  # wall clock (UTC) just before the frame was handed to the socket
    connection: int  # 1 for the first accepted connection, 2 for the next, ...
    frame: str | bytes  # bytes went out as a binary frame


@dataclass
class _Scripted:
    status: int
    body: bytes
    headers: dict[str, str]
    path: str | None
    delay: float


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FakeCoinCap:
    def __init__(self, api_key: str | None = DEFAULT_KEY, *, ws_access: bool = True,
                 ws_reject_status: int | None = None, timestamp_ms: int | None = None) -> None:
        self.api_key = api_key
        self.ws_access = ws_access
        self.ws_reject_status = ws_reject_status
        self.timestamp_ms = timestamp_ms  # envelope "timestamp"; None = the current time
        self.lock = threading.RLock()  # hold it while mutating the data attributes below
        self.assets: list[dict[str, Any]] = load_fixture("assets")["data"]
        self.exchanges: list[dict[str, Any]] = load_fixture("exchanges")["data"]
        self.markets: list[dict[str, Any]] = load_fixture("markets")["data"]
        self.rates: list[dict[str, Any]] = load_fixture("rates")["data"]
        self.history: dict[str, list[dict[str, Any]]] = {"bitcoin": load_fixture("history_bitcoin")["data"]}
        self.requests: list[RecordedRequest] = []
        self.ws_attempts = 0  # every upgrade on /prices, refused ones too
        self.ws_connections = 0  # accepted (authorised) connections, ever
        self.ws_paths: list[str] = []  # request paths (with query) of every /prices upgrade
        self.ws_sent: list[SentFrame] = []  # every frame sent to an accepted connection, in order
        self._cond = threading.Condition(self.lock)
        self._scripted: list[_Scripted] = []
        self._ws_frames: list[str | bytes] = []
        self._ws_clients: dict[ServerConnection, int] = {}  # open connections and their numbers
        self._ws_silent = False
        self._ws_feed: float | None = None
        self._feed_step = 0
        self._closing = threading.Event()
        self._http: ThreadingHTTPServer | None = None
        self._ws: Server | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> FakeCoinCap:
        self._http = _HttpServer(("127.0.0.1", 0), _handler_class(self))
        self._ws = serve(self._ws_handler, "127.0.0.1", 0, process_request=self._ws_process_request,
                         compression=None, close_timeout=2)
        http_thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="fake-coincap-http", daemon=True)
        ws_thread = threading.Thread(target=self._ws.serve_forever, name="fake-coincap-ws", daemon=True)
        self._threads = [http_thread, ws_thread]
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._ws is not None:
            self._ws.shutdown()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for thread in self._threads:
            thread.join(10)
        self._ws = self._http = None

    def __enter__(self) -> FakeCoinCap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def rest_url(self) -> str:
        assert self._http is not None, "start the fake first"
        return f"http://127.0.0.1:{self._http.server_address[1]}/v3"

    @property
    def ws_url(self) -> str:
        assert self._ws is not None, "start the fake first"
        return f"ws://127.0.0.1:{self._ws.socket.getsockname()[1]}"

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` (evaluated under the lock) holds; re-checked on every request/connection."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))  # also re-check now and then: predicates may read other state
            return True

    # -- REST ----------------------------------------------------------------------------------------------

    def script(self, status: int, body: str | bytes | dict[str, Any] | list[Any] = b"", *,
               headers: dict[str, str] | None = None, path: str | None = None, delay: float = 0.0,
               times: int = 1) -> None:
        """Queue ``times`` scripted answers; ``path`` (after /v3, e.g. "/assets") limits them to that path."""
        if isinstance(body, dict | list):
            raw = json.dumps(body).encode()
        else:
            raw = body.encode() if isinstance(body, str) else body
        with self.lock:
            for _ in range(times):
                self._scripted.append(_Scripted(status, raw, dict(headers or {}), path, delay))

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Recorded requests for ``path`` (after /v3, e.g. "/assets")."""
        with self.lock:
            return [r for r in self.requests if r.path == "/v3" + path]

    def _answer(self, method: str, target: str, headers: dict[str, str]) -> _Reply:
        split = urlsplit(target)
        query = {name: values[-1] for name, values in parse_qs(split.query, keep_blank_values=True).items()}
        with self._cond:
            self.requests.append(RecordedRequest(method, split.path, query, headers))
            self._cond.notify_all()
            if not split.path.startswith("/v3/"):
                return _error(404, "not found")
            path = split.path[3:]
            for index, item in enumerate(self._scripted):
                if item.path is None or item.path == path:
                    del self._scripted[index]
                    return _Reply(item.status, item.body, item.headers, item.delay)
            if self.api_key is not None:
                auth = headers.get("authorization", "")
                given = auth[7:] if auth.startswith("Bearer ") else query.get("apiKey")
                if given != self.api_key:
                    return _error(401, "Unauthorized")
            if method != "GET":
                return _error(405, "method not allowed")
            try:
                return self._route(path, query)
            except ValueError as exc:
                return _error(400, str(exc))

    def _route(self, path: str, query: dict[str, str]) -> _Reply:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts == ["assets"]:
            rows = self.assets
            if "ids" in query:
                wanted = query["ids"].split(",")
                rows = sorted((a for a in rows if a.get("id") in wanted), key=lambda a: wanted.index(a["id"]))
            if query.get("search"):
                needle = query["search"].lower()
                rows = [a for a in rows if needle in str(a.get("id")).lower() or needle in str(a.get("symbol")).lower()]
            return self._page(rows, query)
        if parts[0] == "assets" and len(parts) in (2, 3):
            asset = next((a for a in self.assets if a.get("id") == parts[1]), None)
            if asset is None:
                return _error(404, f"{parts[1]} not found")
            if len(parts) == 2:
                return self._envelope(asset)
            if parts[2] == "markets":
                return self._page([m for m in self.markets if m.get("baseId") == parts[1]], query)
            if parts[2] == "history":
                return self._envelope(self._history(asset, query))
        if parts == ["exchanges"]:
            return self._page(self.exchanges, query)
        if parts[0] == "exchanges" and len(parts) == 2:
            found = next((e for e in self.exchanges if e.get("exchangeId") == parts[1]), None)
            return _error(404, f"{parts[1]} not found") if found is None else self._envelope(found)
        if parts == ["markets"]:
            rows = self.markets
            for name in ("exchangeId", "baseId", "baseSymbol", "quoteId", "quoteSymbol"):
                if name in query:
                    rows = [m for m in rows if m.get(name) == query[name]]
            if "assetId" in query:
                rows = [m for m in rows if query["assetId"] in (m.get("baseId"), m.get("quoteId"))]
            return self._page(rows, query)
        if parts == ["rates"]:
            rows = self.rates
            if "ids" in query:
                wanted = query["ids"].split(",")
                rows = [r for r in rows if r.get("id") in wanted]
            return self._envelope(rows)
        if parts[0] == "rates" and len(parts) == 2:
            found = next((r for r in self.rates if r.get("id") == parts[1]), None)
            return _error(404, f"{parts[1]} not found") if found is None else self._envelope(found)
        return _error(404, "not found")

    def _page(self, rows: Sequence[dict[str, Any]], query: dict[str, str]) -> _Reply:
        limit, offset = _int(query, "limit", 100), _int(query, "offset", 0)
        if not 1 <= limit <= 2000 or offset < 0:
            raise ValueError("limit must be 1..2000 and offset >= 0")
        return self._envelope(list(rows[offset:offset + limit]))

    def _history(self, asset: dict[str, Any], query: dict[str, str]) -> list[dict[str, Any]]:
        interval = query.get("interval")
        if interval not in _INTERVAL_MS:
            raise ValueError("interval is required: m1 m5 m15 m30 h1 h2 h6 h12 d1")
        step = _INTERVAL_MS[interval]
        if asset["id"] in self.history:
            lo, hi = _int(query, "start", 0), _int(query, "end", 2**62)
            return [p for p in self.history[asset["id"]] if lo <= int(p["time"]) <= hi]
        end = _int(query, "end", self._now_ms())
        start = _int(query, "start", end - 100 * step)
        base = float(asset.get("priceUsd") or 1.0)  # synthetic, deterministic: one point per interval
        first = -(-start // step) * step
        return [{"priceUsd": repr(base * (1 + 0.002 * math.sin(t / step))), "time": t}
                for t in range(first, end + 1, step)][:2000]

    def _envelope(self, data: Any) -> _Reply:
        body = json.dumps({"data": copy.deepcopy(data), "timestamp": self._now_ms()}).encode()
        return _Reply(200, body, {"Content-Type": "application/json; charset=utf-8"})

    def _now_ms(self) -> int:
        return self.timestamp_ms if self.timestamp_ms is not None else int(time.time() * 1000)

    # -- WebSocket -----------------------------------------------------------------------------------------

    def ws_script(self, frames: Sequence[str | bytes]) -> None:
        """Frames sent to every new authorised connection, in order, right after it opens."""
        with self.lock:
            self._ws_frames = list(frames)

    def ws_send(self, frame: str | bytes) -> int:
        """Send ``frame`` (bytes: a binary frame) to every connected client now (nothing while silent);
        how many got it."""
        with self.lock:
            if self._ws_silent:
                return 0
            clients = list(self._ws_clients.items())
        sent = 0
        for client, number in clients:
            with contextlib.suppress(ConnectionClosed):
                self._send(client, number, frame)
                sent += 1
        return sent

    def _send(self, client: ServerConnection, number: int, frame: str | bytes) -> None:
        """Send one frame and record it (recorded before sending: ``at`` is never after the client got it)."""
        with self.lock:
            self.ws_sent.append(SentFrame(datetime.now(UTC), number, frame))
        client.send(frame)

    def ws_feed(self, interval: float | None) -> None:
        """Every ``interval`` seconds send each client a frame moving every priced asset; None stops it."""
        with self.lock:
            self._ws_feed = interval

    def ws_silent(self, silent: bool = True) -> None:
        """Keep connections open but send nothing (no script, feed or ``ws_send``) until called with False."""
        with self.lock:
            self._ws_silent = silent

    def ws_close_all(self, code: int = 1000, reason: str = "") -> int:
        """Close every open client connection from the server side; how many were closed."""
        with self.lock:
            clients = list(self._ws_clients)
        for client in clients:
            client.close(code, reason)
        return len(clients)

    @property
    def ws_open(self) -> int:
        """Connections open right now."""
        with self.lock:
            return len(self._ws_clients)

    def feed_frame(self) -> str:
        """The next frame of the steady feed (deterministic): every asset with a price, slightly moved."""
        with self.lock:
            self._feed_step += 1
            step = self._feed_step
            frame = {a["id"]: repr(float(a["priceUsd"]) * (1 + 0.001 * math.sin(step + i)))
                     for i, a in enumerate(self.assets) if a.get("priceUsd")}
        return json.dumps(frame)

    def _ws_process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        with self._cond:
            self.ws_attempts += 1
            self.ws_paths.append(request.path)
            self._cond.notify_all()
            status = self.ws_reject_status
        if urlsplit(request.path).path != "/prices":
            return connection.respond(404, "not found\n")
        if status is not None:
            return connection.respond(status, "Unauthorized\n")
        return None

    def _ws_handler(self, connection: ServerConnection) -> None:
        request = connection.request
        assert request is not None
        query = {k: v[-1] for k, v in parse_qs(urlsplit(request.path).query).items()}
        auth = request.headers.get("Authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else query.get("apiKey")
        if not self.ws_access or (self.api_key is not None and given != self.api_key):
            with contextlib.suppress(ConnectionClosed):
                connection.send("Unauthorized")
            connection.close(1008, "Unauthorized")
            return
        with self._cond:
            self.ws_connections += 1
            number = self.ws_connections
            self._ws_clients[connection] = number
            frames = [] if self._ws_silent else list(self._ws_frames)
            self._cond.notify_all()
        try:
            for frame in frames:
                self._send(connection, number, frame)
            next_feed = time.monotonic()
            while not self._closing.is_set():
                with contextlib.suppress(TimeoutError):
                    connection.recv(timeout=_TICK)  # clients send nothing we need; this notices a close
                with self.lock:
                    interval, silent = self._ws_feed, self._ws_silent
                if interval is not None and not silent and time.monotonic() >= next_feed:
                    self._send(connection, number, self.feed_frame())
                    next_feed = time.monotonic() + interval
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                self._ws_clients.pop(connection, None)
                self._cond.notify_all()


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True  # server_close() joins the handler threads: no thread outlives the fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up mid-answer (timeouts in tests) are expected; stay quiet."""


def _handler_class(fake: FakeCoinCap) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers at shutdown
        server_version = "FakeCoinCap/1"

        def do_GET(self) -> None:
            self._reply(fake._answer("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))

        def do_POST(self) -> None:
            self._reply(fake._answer("POST", self.path, {k.lower(): v for k, v in self.headers.items()}))

        def _reply(self, reply: _Reply) -> None:
            if reply.delay and fake._closing.wait(reply.delay):
                return
            if reply.status == 0:  # hang up without a word: the client sees a dropped connection
                self.close_connection = True
                return
            self.send_response(reply.status)
            headers = {"Content-Type": "application/json", **reply.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _error(status: int, message: str) -> _Reply:
    return _Reply(status, json.dumps({"error": message}).encode())


def _int(query: dict[str, str], name: str, default: int) -> int:
    if name not in query:
        return default
    try:
        return int(query[name])
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None

