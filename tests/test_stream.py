"""The CoinCap price stream (collector/coincap/stream.py) against the fake CoinCap's real WebSocket server.

Frames go through the real pipeline pieces a collector uses (parse_price_message -> Intake -> RecordQueue,
counted in a fresh Metrics), so "delivered", "counted by reason" and "not crashed" are observed, not assumed.
The stream's silence watchdog and gap recording are tested with their own code, not here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from collector.app import Collector
from collector.backoff import Backoff
from collector.buffer import RecordQueue
from collector.coincap.models import Tick
from collector.coincap.parse import parse_price_message
from collector.coincap.stream import PriceStream
from collector.errors import NoWebSocketAccess
from collector.intake import Intake
from collector.metrics import Metrics
from collector.settings import load_settings
from fake_coincap import DEFAULT_KEY, FakeCoinCap, SentFrame, load_fixture

ASSETS = ("bitcoin", "ethereum", "binance-coin", "1inch")
WAIT = 10.0  # generous upper bound for waits on a shared machine; a passing run takes a fraction of it


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Pipeline:
    """What the collector hangs behind the stream: parse -> intake (counting) -> queue."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.queue = RecordQueue(1_000_000)
        self.intake = Intake(self.queue, self.metrics)
        self.frames: list[tuple[str, datetime]] = []
        self.events: list[tuple[str, str]] = []  # ("connect", "") / ("disconnect", reason)

    def on_message(self, text: str, received_at: datetime) -> None:
        self.frames.append((text, received_at))
        self.intake.accept(parse_price_message(text, received_at))

    def ticks(self) -> list[Tick]:
        out: list[Tick] = []
        while len(self.queue):
            for record in self.queue.get_batch(10_000, 0.0, 0.0):
                assert isinstance(record, Tick)
                out.append(record)
        return out


class Running:
    """A PriceStream running in a thread until the block ends (or it raises)."""

    def __init__(self, fake: FakeCoinCap, pipeline: Pipeline, key: str = DEFAULT_KEY,
                 assets: Sequence[str] = ASSETS, wake: bool = True) -> None:
        self.fake = fake
        self.wake = wake  # at the end, close from the server too, not to wait for the stream's next poll
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.stream = PriceStream(
            fake.ws_url, key, assets, pipeline.on_message, metrics=pipeline.metrics, watchdog=30.0,
            backoff=Backoff(initial=0.05, cap=0.2),
            on_connect=lambda at: pipeline.events.append(("connect", "")),
            on_disconnect=lambda at, reason: pipeline.events.append(("disconnect", reason)))
        self.thread = threading.Thread(target=self._run, name="test-stream", daemon=True)

    def _run(self) -> None:
        try:
            self.stream.run(self.stop)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.wake:
            self.fake.ws_close_all()  # wakes a blocking receive at once
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the stream did not stop"


@pytest.fixture
def fake() -> Iterator[FakeCoinCap]:
    with FakeCoinCap() as server:
        yield server


def sent_ticks(frames: Sequence[SentFrame]) -> list[tuple[str, float]]:
    out = []
    for sent in frames:
        for asset, price in json.loads(sent.frame).items():
            out.append((asset, float(price)))
    return out


# -- delivery ----------------------------------------------------------------------------------------------


def test_ticks_are_parsed_and_delivered_in_order(fake: FakeCoinCap) -> None:
    first = json.dumps(load_fixture("ws_prices"))
    fake.ws_script([first, '{"bitcoin": "84742.5", "ethereum": "2771"}'])
    pipeline = Pipeline()
    with Running(fake, pipeline, wake=False) as running:
        wait_until(lambda: len(pipeline.frames) == 2, "the scripted frames")
        assert sample(pipeline.metrics, "coinpulse_stream_connected") == 1
        for i in range(5):
            assert fake.ws_send(json.dumps({"bitcoin": f"{84750 + i}.25"})) == 1
        wait_until(lambda: len(pipeline.frames) == 7, "the live frames")
    assert running.error is None
    with fake.lock:
        sent = list(fake.ws_sent)
        [path] = fake.ws_paths
    assert urlsplit(path).path == "/prices"
    assert parse_qs(urlsplit(path).query) == {"assets": [",".join(ASSETS)], "apiKey": [DEFAULT_KEY]}
    assert [text for text, _ in pipeline.frames] == [s.frame for s in sent]  # every frame, once, in order
    ticks = pipeline.ticks()
    assert [(t.asset_id, t.price_usd) for t in ticks] == sent_ticks(sent)
    assert {t.source for t in ticks} == {"ws"}
    for (_, received_at), frame in zip(pipeline.frames, sent, strict=True):
        assert received_at >= frame.at  # stamped on receipt, by the same clock
        assert all(t.time == received_at for t in ticks if (t.asset_id, t.price_usd) in sent_ticks([frame]))
    stamps = [at for _, at in pipeline.frames]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # distinct frames, distinct times
    assert sample(pipeline.metrics, "coinpulse_ticks_received_total", source="ws") == len(ticks) == 4 + 2 + 5
    assert sample(pipeline.metrics, "coinpulse_stream_connected") == 0  # after the stop
    assert pipeline.events == [("connect", ""), ("disconnect", "stop")]


MALFORMED: dict[str, list[str | bytes]] = {
    "non_json": ["not json", "{\"bitcoin\": ", "", "\ufeff{}x", b"\xff\xfe\x00binary garbage"],
    "bad_shape": ["[1, 2, 3]", "\"84000\"", "42", "null"],
    "bad_asset_id": ['{"BTC": "84000"}', '{"": "1"}', '{"../etc": "1"}'],
    "non_numeric": ['{"bitcoin": "eighty"}', '{"bitcoin": true}', '{"bitcoin": {"usd": "1"}}', '{"bitcoin": "0x10"}'],
    "not_finite": ['{"bitcoin": "NaN"}', '{"bitcoin": "Infinity"}', '{"bitcoin": "-inf"}', '{"bitcoin": "1e999"}'],
    "non_positive": ['{"bitcoin": "0"}', '{"bitcoin": "-84000"}', '{"bitcoin": "-0.0"}'],
    "absurd": ['{"bitcoin": "1e12"}', '{"bitcoin": "1e-20"}'],
    "missing_field": ['{"bitcoin": null}'],
}


def test_malformed_frames_are_counted_by_reason_and_the_stream_keeps_going(fake: FakeCoinCap) -> None:
    pipeline = Pipeline()
    with Running(fake, pipeline) as running:
        wait_until(lambda: fake.ws_open == 1, "the connection")
        for _ in range(20):
            for frames in MALFORMED.values():
                for frame in frames:
                    assert fake.ws_send(frame) == 1
        fake.ws_send('{"bitcoin": "84000.5", "ethereum": "NaN", "Bad Id": "1", "1inch": "0.17"}')  # mixed
        fake.ws_send('{"ethereum": "2770.25"}')
        expected_frames = 20 * sum(len(f) for f in MALFORMED.values()) + 2
        wait_until(lambda: len(pipeline.frames) == expected_frames, "every frame")
        assert running.thread.is_alive()
    assert running.error is None
    assert fake.ws_connections == 1  # garbage never cost a reconnect
    rejected = {reason: sample(pipeline.metrics, "coinpulse_rows_rejected_total", reason=reason)
                for reason in MALFORMED}
    expected = {reason: 20 * len(frames) for reason, frames in MALFORMED.items()}
    expected["not_finite"] += 1
    expected["bad_asset_id"] += 1
    assert rejected == expected
    assert [(t.asset_id, t.price_usd) for t in pipeline.ticks()] == [
        ("bitcoin", 84000.5), ("1inch", 0.17), ("ethereum", 2770.25)]  # nothing but the valid entries
    assert sample(pipeline.metrics, "coinpulse_stream_reconnects_total", reason="error") == 0


# -- reconnects --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1011])
def test_reconnects_after_the_server_closes(fake: FakeCoinCap, code: int) -> None:
    pipeline = Pipeline()
    with Running(fake, pipeline) as running:
        wait_until(lambda: fake.ws_open == 1, "the first connection")
        fake.ws_send('{"bitcoin": "84000.25"}')
        wait_until(lambda: len(pipeline.frames) == 1, "a frame on the first connection")
        assert fake.ws_close_all(code, "going away") == 1
        assert fake.wait_for(lambda: fake.ws_connections == 2 and fake.ws_open == 1, timeout=WAIT)
        fake.ws_send('{"bitcoin": "84001.75"}')
        wait_until(lambda: len(pipeline.frames) == 2, "a frame on the second connection")
        assert sample(pipeline.metrics, "coinpulse_stream_connected") == 1
    assert running.error is None
    assert [(t.asset_id, t.price_usd) for t in pipeline.ticks()] == [("bitcoin", 84000.25), ("bitcoin", 84001.75)]
    assert sample(pipeline.metrics, "coinpulse_stream_reconnects_total", reason="closed") == 1
    # every connect is followed by exactly one disconnect (the last one's reason is the test's own teardown)
    assert pipeline.events[:3] == [("connect", ""), ("disconnect", "closed"), ("connect", "")]
    assert [kind for kind, _ in pipeline.events[3:]] == ["disconnect"]
    assert [f.connection for f in fake.ws_sent] == [1, 2]


def test_a_server_answering_the_upgrade_with_an_error_is_retried(fake: FakeCoinCap) -> None:
    fake.ws_reject_status = 503
    pipeline = Pipeline()
    with Running(fake, pipeline) as running:
        assert fake.wait_for(lambda: fake.ws_attempts >= 3, timeout=WAIT)
        fake.ws_reject_status = None  # the server is back
        assert fake.wait_for(lambda: fake.ws_open == 1, timeout=WAIT)
        fake.ws_send('{"ethereum": "2770.5"}')
        wait_until(lambda: len(pipeline.frames) == 1, "a frame once the server is back")
    assert running.error is None
    assert sample(pipeline.metrics, "coinpulse_stream_reconnects_total", reason="error") >= 2


# -- no WebSocket on this plan -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["plan without streaming", "wrong key", "upgrade refused 401", "upgrade refused 403"])
def test_unauthorized_raises_no_websocket_access_without_retrying(case: str, caplog: pytest.LogCaptureFixture) -> None:
    server = FakeCoinCap(ws_access=case != "plan without streaming",
                         ws_reject_status=int(case[-3:]) if case.startswith("upgrade") else None)
    key = "wrong-key-0123" if case == "wrong key" else DEFAULT_KEY
    pipeline = Pipeline()
    with caplog.at_level(logging.DEBUG), server:
        running = Running(server, pipeline, key=key)
        with running:
            running.thread.join(WAIT)
        assert isinstance(running.error, NoWebSocketAccess), running.error
        assert server.ws_attempts == 1  # a plan without streaming is not retried
    message = str(running.error)
    assert "no WebSocket access" in message and "COINPULSE_FEED=rest" in message
    assert key not in message and key not in client_log(caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # a refusal is not an error
    assert "apiKey=***" in running.stream.url and key not in running.stream.url
    assert pipeline.frames == []  # the 'Unauthorized' text is not a price frame: nothing parsed or rejected
    assert sample(pipeline.metrics, "coinpulse_rows_rejected_total", reason="non_json") == 0


def test_without_websocket_access_the_collector_polls_rest_and_says_so_once(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The collector's answer to 'Unauthorized': one log line, then REST /assets polling for prices."""
    server = FakeCoinCap(ws_access=False)
    with server, caplog.at_level(logging.INFO):
        settings = load_settings({
            "COINPULSE_DATABASE_URL": db_url, "COINCAP_API_KEY": DEFAULT_KEY, "COINPULSE_FEED": "ws",
            "COINCAP_REST_URL": server.rest_url, "COINCAP_WS_URL": server.ws_url,
            "COINPULSE_ASSETS": "bitcoin,ethereum", "COINPULSE_CREDIT_BUDGET": "0",
            "COINPULSE_REST_PRICE_INTERVAL": "1", "COINPULSE_BATCH_MAX_AGE": "0.05",
            "COINPULSE_METRICS_HOST": "127.0.0.1", "COINPULSE_METRICS_PORT": "0"})
        collector = Collector(settings)
        collector.start()
        try:
            # the snapshot job polls /assets once at start; the price polls follow every second
            assert server.wait_for(lambda: len(server.requests_to("/assets")) >= 3, timeout=WAIT)
            wait_until(lambda: rest_ticks(db_url) >= 4, "polled price ticks in the database")
        finally:
            collector.shutdown()
        assert server.ws_attempts == 1
    said = [r for r in caplog.records if "no WebSocket access" in r.getMessage()
            or "polling REST" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert said[0].levelno == logging.WARNING and said[0].name == "collector.app"
    assert "polling REST /assets for prices" in said[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # nothing alarming besides that line
    price_polls = [r for r in server.requests_to("/assets") if r.query.get("ids") == "bitcoin,ethereum"]
    assert len(price_polls) >= 3
    assert sample(collector.metrics, "coinpulse_feed_info", feed="rest") == 1
    assert sample(collector.metrics, "coinpulse_feed_info", feed="ws") == 0
    assert sample(collector.metrics, "coinpulse_ticks_received_total", source="rest") >= 4
    assert sample(collector.metrics, "coinpulse_ticks_received_total", source="ws") == 0
    assert DEFAULT_KEY not in client_log(caplog)


def client_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the collector and its WebSocket library logged (not the fake server's own debug lines)."""
    return "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith("websockets"))


def rest_ticks(url: str) -> int:
    with psycopg.connect(url) as conn:
        row: Any = conn.execute(
            "SELECT count(*) FROM coinpulse.price_ticks WHERE source = 'rest' AND asset_id IN ('bitcoin', 'ethereum')"
        ).fetchone()
    return int(row[0])
