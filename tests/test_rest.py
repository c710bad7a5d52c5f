"""The CoinCap REST client (collector/coincap/rest.py) against the fake CoinCap's real HTTP server on 127.0.0.1.

Waits go through the client's injected ``sleep`` (recorded, not slept) and ``clock``; the backoff's randomness
is seeded, so every figure asserted here is exact or bounded by the backoff's documented formula.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests

from collector.backoff import Backoff
from collector.buffer import RecordQueue
from collector.coincap.models import AssetSnapshot, ExchangeSnapshot, MarketSnapshot, RateSnapshot, Tick
from collector.coincap.rest import CoinCapRest, credits_for
from collector.errors import (
    CoinCapAuthError,
    CoinCapError,
    CoinCapNotFound,
    CoinCapRateLimited,
    CoinCapUnavailable,
)
from collector.intake import Intake
from collector.metrics import Metrics
from collector.scheduler import Job, Scheduler
from collector_proc import free_port
from fake_coincap import DEFAULT_KEY, FakeCoinCap, load_fixture

TS = 1763753634750  # the envelope "timestamp" the fake answers with
AT = datetime.fromtimestamp(TS / 1000, UTC)
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # the client's injected clock


class Sleeps:
    """An injected Sleeper: records every wait instead of sleeping; ``stop_after`` waits, reports a stop."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.waits: list[float] = []
        self._stop_after = stop_after

    def __call__(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return self._stop_after is not None and len(self.waits) >= self._stop_after


@pytest.fixture
def fake() -> Iterator[FakeCoinCap]:
    with FakeCoinCap(timestamp_ms=TS) as server:
        yield server


def make_client(fake: FakeCoinCap, *, key: str | None = DEFAULT_KEY, sleeps: Sleeps | None = None,
                metrics: Metrics | None = None, timeout: float = 5.0, max_attempts: int = 5,
                backoff: Backoff | None = None, base_url: str | None = None) -> CoinCapRest:
    return CoinCapRest(base_url or fake.rest_url, key, timeout=timeout, metrics=metrics,
                       sleep=sleeps if sleeps is not None else Sleeps(),
                       backoff=backoff or Backoff(initial=1.0, cap=8.0, jitter=0.25, rng=random.Random(7)),
                       max_attempts=max_attempts, clock=lambda: NOW)


def requests_sample(metrics: Metrics, endpoint: str, status: str) -> float:
    return metrics.registry.get_sample_value("coinpulse_api_requests_total",
                                             {"endpoint": endpoint, "status": status}) or 0.0


def credits_sample(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("coinpulse_api_credits_used_total") or 0.0


def num(value: str | None) -> float | None:
    return None if value is None else float(value)


def padded_envelope(size: int) -> bytes:
    """A valid, empty /rates envelope of exactly ``size`` bytes."""
    head = json.dumps({"data": [], "timestamp": TS, "pad": ""}).encode()
    body = head[:-2] + b"x" * (size - len(head)) + b'"}'
    assert len(body) == size
    return body


# -- endpoints ---------------------------------------------------------------------------------------------


def test_assets_are_typed_snapshots_of_every_field(fake: FakeCoinCap) -> None:
    rows = load_fixture("assets")["data"]
    with make_client(fake) as rest:
        result = rest.assets()
    assert result.rejects == []
    assert [type(r) for r in result.records] == [AssetSnapshot] * len(rows)
    for record, row in zip(result.records, rows, strict=True):
        assert record.time == AT and record.source == "rest"  # the envelope's timestamp, not the fetch time
        assert record.asset_id == row["id"] and record.symbol == row["symbol"] and record.name == row["name"]
        assert record.rank == int(row["rank"])
        assert record.price_usd == num(row["priceUsd"])
        assert record.supply == num(row["supply"]) and record.max_supply == num(row["maxSupply"])
        assert record.market_cap_usd == num(row["marketCapUsd"])
        assert record.volume_usd_24hr == num(row["volumeUsd24Hr"])
        assert record.change_percent_24hr == num(row["changePercent24Hr"])
        assert record.vwap_24hr == num(row["vwap24Hr"]) and record.explorer == row["explorer"]
    assert any(r.price_usd is None for r in result.records)  # nulls kept as None (fresh-listing)
    [request] = fake.requests_to("/assets")
    assert request.query == {"limit": "100", "offset": "0"}


def test_assets_by_ids_keep_the_requested_order(fake: FakeCoinCap) -> None:
    with make_client(fake) as rest:
        result = rest.assets(ids=["ethereum", "bitcoin"], limit=2)
    assert [r.asset_id for r in result.records] == ["ethereum", "bitcoin"]
    assert fake.requests_to("/assets")[0].query == {"ids": "ethereum,bitcoin", "limit": "2", "offset": "0"}


def test_one_asset(fake: FakeCoinCap) -> None:
    with make_client(fake) as rest:
        result = rest.asset("bitcoin")
        with pytest.raises(CoinCapNotFound, match="HTTP 404"):
            rest.asset("no-such-coin")
    [record] = result.records
    assert isinstance(record, AssetSnapshot)
    assert (record.asset_id, record.rank, record.max_supply, record.time) == ("bitcoin", 1, 21_000_000.0, AT)
    assert [r.path for r in fake.requests] == ["/v3/assets/bitcoin", "/v3/assets/no-such-coin"]


def test_asset_markets_page(fake: FakeCoinCap) -> None:
    btc = [m for m in load_fixture("markets")["data"] if m["baseId"] == "bitcoin"]
    with make_client(fake) as rest:
        result = rest.asset_markets("bitcoin", limit=2, offset=1)
    assert all(type(r) is MarketSnapshot for r in result.records)
    assert [(r.exchange_id, r.quote_id) for r in result.records] == [(m["exchangeId"], m["quoteId"]) for m in btc[1:3]]
    assert [r.price_usd for r in result.records] == [float(m["priceUsd"]) for m in btc[1:3]]
    assert fake.requests_to("/assets/bitcoin/markets")[0].query == {"limit": "2", "offset": "1"}


def test_history_in_a_time_range(fake: FakeCoinCap) -> None:
    points = load_fixture("history_bitcoin")["data"]
    start = datetime.fromtimestamp(points[1]["time"] / 1000, UTC)
    end = datetime.fromtimestamp(points[2]["time"] / 1000, UTC)
    with make_client(fake) as rest:
        result = rest.history("bitcoin", "h1", start, end)
        with pytest.raises(ValueError, match="interval must be one of"):
            rest.history("bitcoin", "h3", start, end)
        with pytest.raises(ValueError, match="timezone-aware"):
            rest.history("bitcoin", "h1", start.replace(tzinfo=None), end)
    assert result.records == [Tick(datetime.fromtimestamp(p["time"] / 1000, UTC), "bitcoin", float(p["priceUsd"]),
                                   "history") for p in points[1:3]]
    [request] = fake.requests_to("/assets/bitcoin/history")  # the bad calls never left the client
    assert request.query == {"interval": "h1", "start": str(points[1]["time"]), "end": str(points[2]["time"])}


def test_exchanges(fake: FakeCoinCap) -> None:
    rows = load_fixture("exchanges")["data"]
    with make_client(fake) as rest:
        result = rest.exchanges(limit=3)
    assert [type(r) for r in result.records] == [ExchangeSnapshot] * 3
    first = result.records[0]
    assert (first.exchange_id, first.rank, first.trading_pairs, first.socket) == (
        rows[0]["exchangeId"], int(rows[0]["rank"]), int(rows[0]["tradingPairs"]), rows[0]["socket"])
    assert first.volume_usd == float(rows[0]["volumeUsd"])
    assert first.updated == datetime.fromtimestamp(rows[0]["updated"] / 1000, UTC)
    assert fake.requests_to("/exchanges")[0].query == {"limit": "3", "offset": "0"}


def test_markets_filtered(fake: FakeCoinCap) -> None:
    with make_client(fake) as rest:
        result = rest.markets(limit=50, exchange_id="binance", base_id="bitcoin")
    [record] = result.records
    assert type(record) is MarketSnapshot
    assert (record.exchange_id, record.base_id, record.quote_id, record.trades_count_24hr) == (
        "binance", "bitcoin", "tether", 2315011)
    assert fake.requests_to("/markets")[0].query == {
        "limit": "50", "offset": "0", "exchangeId": "binance", "baseId": "bitcoin"}


def test_rates(fake: FakeCoinCap) -> None:
    rows = load_fixture("rates")["data"]
    with make_client(fake) as rest:
        result = rest.rates()
    assert [type(r) for r in result.records] == [RateSnapshot] * len(rows)
    assert [(r.rate_id, r.rate_usd, r.type) for r in result.records] == [
        (row["id"], float(row["rateUsd"]), row["type"]) for row in rows]


def test_bad_arguments_never_reach_the_server(fake: FakeCoinCap) -> None:
    with make_client(fake) as rest:
        for call in (lambda: rest.assets(limit=0), lambda: rest.assets(limit=2001), lambda: rest.exchanges(offset=-1),
                     lambda: rest.asset("../rates"), lambda: rest.assets(ids=["Bitcoin"]),
                     lambda: rest.all_assets(max_rows=0)):
            with pytest.raises(ValueError):
                call()
    assert fake.requests == []


def test_an_unexpected_body_is_counted_by_the_parser_not_raised(fake: FakeCoinCap) -> None:
    fake.script(200, b"<html>maintenance</html>", path="/assets")
    fake.script(200, {"data": {"not": "a list"}, "timestamp": TS}, path="/exchanges")
    with make_client(fake) as rest:
        assets, exchanges = rest.assets(), rest.exchanges()
    assert (assets.records, [r.reason for r in assets.rejects]) == ([], ["non_json"])
    assert (exchanges.records, [r.reason for r in exchanges.rejects]) == ([], ["bad_shape"])


# -- the key -----------------------------------------------------------------------------------------------


def test_key_goes_in_the_bearer_header_only_and_is_never_shown(fake: FakeCoinCap,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    key = fake.api_key
    assert key is not None
    fake.script(500, path="/rates")  # a retry logs a warning
    fake.script(400, f"unknown parameter; your key is {key}", path="/markets")  # a server echoing the key
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG), make_client(fake) as rest:
        rest.assets()
        rest.asset("bitcoin")
        rest.asset_markets("bitcoin")
        rest.history("bitcoin", "d1", NOW - timedelta(days=3), NOW)
        rest.exchanges()
        rest.rates()
        with pytest.raises(CoinCapError) as bad_request:
            rest.markets()
        errors.append(str(bad_request.value))
        with pytest.raises(CoinCapNotFound) as not_found:
            rest.asset("nope")
        errors.append(str(not_found.value))
        shown = [repr(rest), str(rest)]
    assert len(fake.requests) == 9
    for request in fake.requests:
        assert request.headers["authorization"] == f"Bearer {key}"
        assert "apiKey" not in request.query and key not in request.path
    assert "unknown parameter; your key is ***" in errors[0]
    assert any("coincap request failed endpoint=/rates" in r.getMessage() for r in caplog.records)
    assert any(r.name.startswith("urllib3") for r in caplog.records)  # DEBUG really was captured
    for text in [caplog.text, *errors, *shown]:
        assert key not in text


def test_without_a_key_no_authorization_header_is_sent(fake: FakeCoinCap) -> None:
    with make_client(fake, key=None) as rest, pytest.raises(CoinCapAuthError):
        rest.rates()
    assert "authorization" not in fake.requests[0].headers


# -- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["wrong key (401)", "plan refuses (403)"])
def test_auth_errors_raise_at_once_with_a_clear_message(fake: FakeCoinCap, case: str) -> None:
    sleeps, metrics = Sleeps(), Metrics()
    status = "401" if "401" in case else "403"
    key = "not-the-right-key" if status == "401" else DEFAULT_KEY
    if status == "403":
        fake.script(403, {"error": "endpoint not in plan"})
    with make_client(fake, key=key, sleeps=sleeps, metrics=metrics) as rest, \
            pytest.raises(CoinCapAuthError) as raised:
        rest.exchanges()
    message = str(raised.value)
    assert f"HTTP {status}" in message and "COINCAP_API_KEY" in message and "\n" not in message
    assert key not in message
    assert len(fake.requests) == 1 and sleeps.waits == []  # not retried
    assert requests_sample(metrics, "/exchanges", status) == 1


def test_other_client_errors_are_not_retried(fake: FakeCoinCap) -> None:
    fake.script(400, {"error": "limit must be 1..2000"})
    sleeps = Sleeps()
    with make_client(fake, sleeps=sleeps) as rest, pytest.raises(CoinCapError, match=r"HTTP 400.*limit must be"):
        rest.rates()
    assert len(fake.requests) == 1 and sleeps.waits == []


# -- 429, 5xx, timeouts: capped jittered backoff ------------------------------------------------------------


def test_429_waits_as_long_as_retry_after_says(fake: FakeCoinCap) -> None:
    fake.script(429, {"error": "slow down"}, headers={"Retry-After": "7"}, path="/rates")
    sleeps, metrics = Sleeps(), Metrics()
    with make_client(fake, sleeps=sleeps, metrics=metrics) as rest:
        result = rest.rates()
    assert len(result.records) == 4
    assert sleeps.waits == [7.0]  # above the first backoff delay (1s +/- 25%): Retry-After wins
    assert requests_sample(metrics, "/rates", "429") == 1 and requests_sample(metrics, "/rates", "200") == 1


def test_429_retry_after_as_an_http_date_uses_the_injected_clock(fake: FakeCoinCap) -> None:
    when = format_datetime(NOW + timedelta(seconds=20), usegmt=True)
    fake.script(429, headers={"Retry-After": when})
    sleeps = Sleeps()
    with make_client(fake, sleeps=sleeps) as rest:
        rest.rates()
    assert sleeps.waits == [20.0]


def test_429_with_a_short_or_unreadable_retry_after_backs_off(fake: FakeCoinCap) -> None:
    fake.script(429, headers={"Retry-After": "0"})
    fake.script(429, headers={"Retry-After": "soon"})
    fake.script(429)
    sleeps = Sleeps()
    with make_client(fake, sleeps=sleeps, backoff=Backoff(initial=1.0, cap=8.0, jitter=0.25,
                                                          rng=random.Random(1))) as rest:
        rest.rates()
    assert len(sleeps.waits) == 3
    for wait, base in zip(sleeps.waits, (1.0, 2.0, 4.0), strict=True):  # exponential, each +/- 25% jitter
        assert base * 0.75 <= wait <= base * 1.25


def test_429_asking_for_a_very_long_wait_raises_instead_of_sleeping(fake: FakeCoinCap) -> None:
    fake.script(429, headers={"Retry-After": "3600"})
    sleeps = Sleeps()
    with make_client(fake, sleeps=sleeps) as rest, pytest.raises(CoinCapRateLimited) as raised:
        rest.rates()
    assert raised.value.retry_after == 3600.0
    assert sleeps.waits == [] and len(fake.requests) == 1


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_a_burst_of_errors_is_retried_with_capped_jittered_backoff(fake: FakeCoinCap, status: int) -> None:
    fake.script(status, {"error": "busy"}, path="/assets", times=5)
    sleeps, metrics = Sleeps(), Metrics()
    backoff = Backoff(initial=1.0, cap=3.0, jitter=0.25, rng=random.Random(status))
    with make_client(fake, sleeps=sleeps, metrics=metrics, backoff=backoff, max_attempts=6) as rest:
        result = rest.assets()
    assert len(result.records) == 6  # the sixth attempt got the data
    assert len(fake.requests_to("/assets")) == 6
    assert len(sleeps.waits) == 5
    for wait, base in zip(sleeps.waits, (1.0, 2.0, 3.0, 3.0, 3.0), strict=True):
        assert base * 0.75 <= wait <= min(base * 1.25, 3.0)  # capped at 3s
    assert sleeps.waits[:2] != [1.0, 2.0] and len(set(sleeps.waits)) > 2  # jittered, not the bare exponential
    assert requests_sample(metrics, "/assets", str(status)) == 5
    assert requests_sample(metrics, "/assets", "200") == 1


@pytest.mark.parametrize("status, error", [(429, CoinCapRateLimited), (500, CoinCapUnavailable)])
def test_a_burst_longer_than_the_attempts_raises_our_error(fake: FakeCoinCap, status: int,
                                                           error: type[CoinCapError]) -> None:
    fake.script(status, times=10)
    sleeps, metrics = Sleeps(), Metrics()
    with make_client(fake, sleeps=sleeps, metrics=metrics, max_attempts=4) as rest, \
            pytest.raises(error, match="after 4 attempts"):
        rest.exchanges()
    assert len(fake.requests) == 4 and len(sleeps.waits) == 3  # no wait after the last attempt
    assert requests_sample(metrics, "/exchanges", str(status)) == 4


def test_a_stop_request_during_a_wait_ends_the_retries(fake: FakeCoinCap) -> None:
    fake.script(503, times=10)
    sleeps = Sleeps(stop_after=1)
    with make_client(fake, sleeps=sleeps) as rest, pytest.raises(CoinCapUnavailable, match="after 1 attempts"):
        rest.rates()
    assert len(fake.requests) == 1


def test_mixed_failures_then_success(fake: FakeCoinCap) -> None:
    fake.script(0)  # hang up without answering
    fake.script(429, headers={"Retry-After": "2"})
    fake.script(502)
    sleeps, metrics = Sleeps(), Metrics()
    with make_client(fake, sleeps=sleeps, metrics=metrics) as rest:
        assert len(rest.rates().records) == 4
    assert len(sleeps.waits) == 3 and sleeps.waits[1] >= 2.0
    assert {status: requests_sample(metrics, "/rates", status) for status in ("error", "429", "502", "200")} == {
        "error": 1, "429": 1, "502": 1, "200": 1}


def test_the_timeout_is_applied_and_a_slow_answer_retried(fake: FakeCoinCap, caplog: pytest.LogCaptureFixture) -> None:
    fake.script(200, {"data": [], "timestamp": TS}, path="/rates", delay=1.0)  # slower than the timeout
    sleeps, metrics = Sleeps(), Metrics()
    with caplog.at_level(logging.WARNING, logger="collector.coincap.rest"), \
            make_client(fake, sleeps=sleeps, metrics=metrics, timeout=0.2) as rest:
        result = rest.rates()
    assert len(result.records) == 4  # the slow (empty) answer was abandoned; the retry got the data
    assert len(sleeps.waits) == 1
    assert requests_sample(metrics, "/rates", "error") == 1 and credits_sample(metrics) == 1
    assert "problem=timeout (0.2s)" in caplog.text


def test_timeouts_every_time_raise_unavailable(fake: FakeCoinCap) -> None:
    fake.script(200, delay=1.0, times=2)
    with make_client(fake, timeout=0.2, max_attempts=2) as rest, \
            pytest.raises(CoinCapUnavailable, match=r"after 2 attempts: timeout \(0.2s\)"):
        rest.rates()
    with pytest.raises(ValueError, match="timeout must be positive"):
        CoinCapRest(fake.rest_url, DEFAULT_KEY, timeout=0)


def test_nothing_listening_raises_unavailable_and_costs_no_credits(fake: FakeCoinCap) -> None:
    sleeps, metrics = Sleeps(), Metrics()
    with make_client(fake, sleeps=sleeps, metrics=metrics, max_attempts=3,
                     base_url=f"http://127.0.0.1:{free_port()}/v3") as rest:
        with pytest.raises(CoinCapUnavailable, match="after 3 attempts: connection error"):
            rest.assets()
        assert rest.credits_used == 0
    assert len(sleeps.waits) == 2
    assert requests_sample(metrics, "/assets", "error") == 3 and credits_sample(metrics) == 0


def test_a_scheduled_poll_survives_a_failing_burst_and_recovers(fake: FakeCoinCap) -> None:
    """No crash in the collector either: the scheduler logs the failed run and the next one lands."""
    fake.script(500, times=3)
    metrics = Metrics()
    queue = RecordQueue(1000)
    with make_client(fake, metrics=metrics, max_attempts=3) as rest:
        scheduler = Scheduler([Job("rates", 60, rest.rates)], Intake(queue, metrics))
        assert scheduler.run_job(scheduler.jobs[0]) is False
        assert "CoinCapUnavailable" not in scheduler.last_error["rates"]  # a message, not a type name
        assert scheduler.run_job(scheduler.jobs[0]) is True
    assert len(queue) == 4
    assert requests_sample(metrics, "/rates", "500") == 3


# -- pagination --------------------------------------------------------------------------------------------


def universe(fake: FakeCoinCap, n: int) -> list[str]:
    template = fake.assets[0]
    ids = [f"coin-{i:02d}" for i in range(n)]
    with fake.lock:
        fake.assets = [{**copy.deepcopy(template), "id": a, "rank": str(i + 1)} for i, a in enumerate(ids)]
    return ids


def pages(fake: FakeCoinCap) -> list[tuple[str, str]]:
    return [(r.query["limit"], r.query["offset"]) for r in fake.requests_to("/assets")]


@pytest.mark.parametrize("n, expected_pages", [
    (23, [("5", "0"), ("5", "5"), ("5", "10"), ("5", "15"), ("5", "20")]),  # the short last page ends it
    (20, [("5", "0"), ("5", "5"), ("5", "10"), ("5", "15"), ("5", "20")]),  # an exact multiple: one empty page
    (4, [("5", "0")]),
])
def test_all_assets_fetches_every_page_then_stops(fake: FakeCoinCap, n: int, expected_pages: list[Any]) -> None:
    ids = universe(fake, n)
    metrics = Metrics()
    with make_client(fake, metrics=metrics) as rest:
        result = rest.all_assets(max_rows=1000, page_size=5)
    assert [r.asset_id for r in result.records] == ids  # every row once, in rank order
    assert pages(fake) == expected_pages
    assert requests_sample(metrics, "/assets", "200") == len(expected_pages)


def test_all_assets_stops_at_max_rows(fake: FakeCoinCap) -> None:
    ids = universe(fake, 30)
    with make_client(fake) as rest:
        result = rest.all_assets(max_rows=12, page_size=5)
    assert [r.asset_id for r in result.records] == ids[:12]
    assert pages(fake) == [("5", "0"), ("5", "5"), ("2", "10")]


def test_a_failing_page_is_retried_in_place(fake: FakeCoinCap) -> None:
    ids = universe(fake, 12)
    fake.script(0, path="/assets")
    fake.script(0, path="/assets")
    with make_client(fake) as rest:
        rest.all_assets(max_rows=5, page_size=5)  # first page: two hang-ups, then data
        fake.script(503, path="/assets")
        result = rest.all_assets(max_rows=100, page_size=5)
    assert [r.asset_id for r in result.records] == ids
    assert pages(fake)[3:] == [("5", "0"), ("5", "0"), ("5", "5"), ("5", "10")]


# -- credits -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, credits", [(100, 1), (2499, 1), (2500, 2), (4999, 2), (5000, 3), (12_600, 6)])
def test_credits_are_1_per_call_plus_1_per_further_2500_bytes(fake: FakeCoinCap, size: int, credits: int) -> None:
    fake.script(200, padded_envelope(size))
    metrics = Metrics()
    with make_client(fake, metrics=metrics) as rest:
        rest.rates()
        assert rest.credits_used == credits == credits_for(size)
    assert credits_sample(metrics) == credits


def test_credits_add_up_over_calls_and_count_answered_failures(fake: FakeCoinCap) -> None:
    fake.script(500, b"")  # answered: counted as a call (CoinCap does not say; we err on the high side)
    fake.script(200, padded_envelope(7_500))
    metrics = Metrics()
    with make_client(fake, metrics=metrics) as rest:
        rest.rates()  # 500 (1) + 7,500 bytes (4)
        rest.asset("bitcoin")  # a few hundred bytes (1)
        assert rest.credits_used == 6
    assert credits_sample(metrics) == 6


def test_credits_of_a_real_answer_follow_its_size(fake: FakeCoinCap) -> None:
    universe(fake, 40)  # 40 full asset rows: several times 2,500 bytes
    size = len(requests.get(f"{fake.rest_url}/assets", params={"limit": 40, "offset": 0}, timeout=5,
                            headers={"Authorization": f"Bearer {DEFAULT_KEY}"}).content)
    assert size > 5000
    with make_client(fake) as rest:
        rest.assets(limit=40)
        assert rest.credits_used == 1 + size // 2500
