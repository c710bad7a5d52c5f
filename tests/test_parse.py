"""The pure CoinCap parsers: recorded-shape fixtures, every reject reason, and property-based garbage."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.coincap.models import (
    AssetSnapshot,
    ExchangeSnapshot,
    MarketSnapshot,
    ParseResult,
    RateSnapshot,
    Tick,
)
from collector.coincap.parse import (
    MAX_PRICE_USD,
    MIN_PRICE_USD,
    REJECT_REASONS,
    is_valid_id,
    parse_asset,
    parse_assets,
    parse_exchanges,
    parse_history,
    parse_markets,
    parse_price_message,
    parse_rates,
    ticks_from_assets,
)
from fake_coincap import FIXTURES

FETCHED = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
RECEIVED = datetime(2026, 1, 2, 3, 4, 6, 123456, tzinfo=UTC)


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def ms(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)


def reasons(result: ParseResult[Any]) -> list[str]:
    return [r.reason for r in result.rejects]


# -- recorded shapes -----------------------------------------------------------------------------------------


def test_price_frame_fixture() -> None:
    result = parse_price_message(fixture_bytes("ws_prices").decode(), RECEIVED)
    assert result.rejects == []
    assert result.records == [
        Tick(RECEIVED, "bitcoin", 84741.12, "ws"),
        Tick(RECEIVED, "ethereum", 2770.5511, "ws"),
        Tick(RECEIVED, "binance-coin", 842.3, "ws"),
        Tick(RECEIVED, "1inch", 0.1701, "ws"),
    ]


def test_price_frame_source_and_time_are_normalised_to_utc() -> None:
    local = RECEIVED.astimezone(timezone(timedelta(hours=-5)))
    result = parse_price_message(b'{"bitcoin": "1.5"}', local, source="demo")
    assert result.records == [Tick(RECEIVED, "bitcoin", 1.5, "demo")]
    assert result.records[0].time.utcoffset() == timedelta(0)


def test_assets_fixture() -> None:
    t = ms(1763753634750)
    result = parse_assets(fixture_bytes("assets"), FETCHED)
    assert result.rejects == []
    assert result.records == [
        AssetSnapshot(t, "bitcoin", 1, "BTC", "Bitcoin", 19958218.0, 21000000.0, 1691270312664.35872,
                      31218820441.118834, 84739.05000000000291, -2.418849205738131, 85912.33761174062,
                      "https://blockchain.info/", "rest"),
        AssetSnapshot(t, "ethereum", 2, "ETH", "Ethereum", 120694458.216, None, 334340557023.1132,
                      16102291776.541234, 2770.14, -3.905512840011227, 2838.447120915564,
                      "https://etherscan.io/", "rest"),
        AssetSnapshot(t, "binance-coin", 4, "BNB", "BNB", 137734379.0, 200000000.0, 116012046271.27,
                      1804230995.003, 842.291234, 0.512, 838.9012, "https://bscscan.com/", "rest"),
        AssetSnapshot(t, "usd-coin", 7, "USDC", "USDC", 75811092136.0, None, 75803510974.0, 8040018225.0,
                      0.9999, 0.0012, 0.99995, None, "rest"),
        AssetSnapshot(t, "1inch", 212, "1INCH", "1inch Network", 1402010958.0, 1500000000.0, 238341862.86, None,
                      0.17, None, None, "https://etherscan.io/token/0x111111111117dc0aa78b770fa6a738034120c302",
                      "rest"),
        AssetSnapshot(t, "fresh-listing", 2001, "FRESH", "Fresh Listing", None, None, None, None, None, None,
                      None, None, "rest"),
    ]


def test_single_asset_fixture() -> None:
    result = parse_asset(fixture_bytes("asset_bitcoin"), FETCHED, source="demo")
    assert result.rejects == []
    assert result.records == [
        AssetSnapshot(ms(1763753640012), "bitcoin", 1, "BTC", "Bitcoin", 19958218.0, 21000000.0,
                      1691270312664.35872, 31218820441.118834, 84739.05, -2.418849205738131, 85912.33761174062,
                      "https://blockchain.info/", "demo"),
    ]


def test_exchanges_fixture() -> None:
    t = ms(1763753634999)
    result = parse_exchanges(fixture_bytes("exchanges"), FETCHED)
    assert result.rejects == []
    assert result.records == [
        ExchangeSnapshot(t, "binance", "Binance", 1, 31.1140209584, 12803558217.339, 1437, True,
                         "https://www.binance.com/", ms(1763753612345), "rest"),
        ExchangeSnapshot(t, "kraken", "Kraken", 5, 4.021, 1654120221.7, 812, False, "https://kraken.com",
                         ms(1763753601000), "rest"),
        ExchangeSnapshot(t, "gate", "Gate", 9, None, None, 3010, None, "https://gate.io/", ms(1763753555555),
                         "rest"),
        ExchangeSnapshot(t, "uniswap-v3", "Uniswap (V3)", 14, 0.8831, 363311200.12, 0, False, None, None, "rest"),
    ]


def test_markets_fixture() -> None:
    t = ms(1763753635120)
    result = parse_markets(fixture_bytes("markets"), FETCHED)
    assert result.rejects == []
    assert result.records == [
        MarketSnapshot(t, "binance", "bitcoin", "tether", "BTC", "USDT", 1, 84751.01, 84733.105, 2604318812.5512,
                       20.341, 2315011, ms(1763753630001), "rest"),
        MarketSnapshot(t, "binance", "ethereum", "tether", "ETH", "USDT", 2, 2770.61, 2770.024, 1411007761.01,
                       11.02, 1201944, ms(1763753630001), "rest"),
        MarketSnapshot(t, "kraken", "bitcoin", "euro", "BTC", "EUR", 31, 73511.2, 84744.95, None, None, None,
                       ms(1763753590000), "rest"),
        # a quote price above MAX_PRICE_USD is fine: it is in rupiah, not dollars; "8812.0" is an int
        MarketSnapshot(t, "indodax", "bitcoin", "indonesian-rupiah", "BTC", "IDR", 210, 1418051000.0, 84729.8,
                       3100221.0, 41.5, 8812, ms(1763753500000), "rest"),
    ]


def test_rates_fixture_with_and_without_currency_symbol() -> None:
    t = ms(1763753635500)
    result = parse_rates(fixture_bytes("rates"), FETCHED)
    assert result.rejects == []
    assert result.records == [
        RateSnapshot(t, "united-states-dollar", "USD", "$", 1.0, "fiat", "rest"),
        RateSnapshot(t, "euro", "EUR", "€", 1.152712, "fiat", "rest"),
        RateSnapshot(t, "japanese-yen", "JPY", None, 0.006351, "fiat", "rest"),
        RateSnapshot(t, "bitcoin", "BTC", None, 84739.05, "crypto", "rest"),
    ]


def test_history_fixture() -> None:
    result = parse_history(fixture_bytes("history_bitcoin"), "bitcoin")
    assert result.rejects == []
    assert result.records == [
        Tick(ms(1763752800000), "bitcoin", 84901.1283746501928374, "history"),
        Tick(ms(1763753100000), "bitcoin", 84877.00123111, "history"),
        Tick(ms(1763753400000), "bitcoin", 84810.55, "history"),
        Tick(ms(1763753700000), "bitcoin", 84739.0500000000029104, "history"),
    ]


def test_parsers_accept_a_decoded_mapping_as_well_as_text() -> None:
    raw = fixture_bytes("exchanges")
    assert parse_exchanges(json.loads(raw), FETCHED) == parse_exchanges(raw.decode(), FETCHED)


# -- envelope time -------------------------------------------------------------------------------------------


def test_replaying_a_response_yields_identical_rows() -> None:
    raw = fixture_bytes("markets")
    first = parse_markets(raw, FETCHED)
    again = parse_markets(raw, FETCHED + timedelta(hours=5))
    assert first == again


def test_snapshot_time_falls_back_to_fetch_time_without_timestamp() -> None:
    payload = {"data": [{"id": "euro", "rateUsd": "1.1"}]}
    result = parse_rates(payload, FETCHED)
    assert result.records == [RateSnapshot(FETCHED, "euro", None, None, 1.1, None, "rest")]
    assert result.rejects == []


@pytest.mark.parametrize("stamp", ["soon", -1, 0, True, 1.5e300, 99999999999999999, "1e12", [1]])
def test_insane_envelope_timestamp_falls_back_and_is_counted(stamp: object) -> None:
    result = parse_rates({"data": [{"id": "euro", "rateUsd": "1.1"}], "timestamp": stamp}, FETCHED)
    assert [r.time for r in result.records] == [FETCHED]
    assert reasons(result) == ["bad_time"]


def test_timestamp_as_digit_string_is_accepted() -> None:
    result = parse_rates({"data": [{"id": "euro"}], "timestamp": "1763753635500"}, FETCHED)
    assert result.records[0].time == ms(1763753635500)


# -- price frames: every reason --------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "reason"), [
    ("abc", "non_numeric"),
    ("", "non_numeric"),
    ("1_000", "non_numeric"),
    ("0x10", "non_numeric"),
    ("١٢", "non_numeric"),  # Arabic-Indic digits: float() takes them, CoinCap never sends them
    (True, "non_numeric"),
    ([1], "non_numeric"),
    ({"usd": "1"}, "non_numeric"),
    ("NaN", "not_finite"),
    ("nan", "not_finite"),
    ("Infinity", "not_finite"),
    ("-inf", "not_finite"),
    ("1e999", "not_finite"),
    (10**400, "not_finite"),
    ("0", "non_positive"),
    ("-0.0", "non_positive"),
    ("-5.25", "non_positive"),
    ("1000000000.5", "absurd"),
    ("1e-16", "absurd"),
    (None, "missing_field"),
])
def test_price_frame_rejects(value: object, reason: str) -> None:
    frame = json.dumps({"bitcoin": "100.0", "ethereum": value}, ensure_ascii=False)
    result = parse_price_message(frame, RECEIVED)
    assert result.records == [Tick(RECEIVED, "bitcoin", 100.0, "ws")]
    assert reasons(result) == [reason]
    assert "ethereum" in result.rejects[0].detail


@pytest.mark.parametrize("value", ["1e9", "1e-15", 42, 0.5, " 42.5 ", "+3", ".5", "7."])
def test_price_frame_accepts_boundaries_and_plain_numbers(value: object) -> None:
    result = parse_price_message(json.dumps({"bitcoin": value}), RECEIVED)
    assert result.rejects == []
    assert len(result.records) == 1
    assert MIN_PRICE_USD <= result.records[0].price_usd <= MAX_PRICE_USD


def test_nan_literal_in_json_is_not_finite() -> None:
    result = parse_price_message('{"bitcoin": NaN, "ethereum": Infinity}', RECEIVED)
    assert result.records == []
    assert reasons(result) == ["not_finite", "not_finite"]


@pytest.mark.parametrize("key", ["Bitcoin", "-btc", "bit coin", "", "bitcoin\n", "b" * 101, "bitcoin_cash", "é"])
def test_price_frame_bad_asset_ids(key: str) -> None:
    result = parse_price_message(json.dumps({key: "1.0"}), RECEIVED)
    assert result.records == []
    assert reasons(result) == ["bad_asset_id"]


@pytest.mark.parametrize("slug", ["bitcoin", "binance-coin", "1inch", "united-states-dollar", "0x", "a"])
def test_real_slug_shapes_are_valid_ids(slug: str) -> None:
    assert is_valid_id(slug)


@pytest.mark.parametrize(("frame", "reason"), [
    ("Unauthorized", "non_json"),
    (b"\xff\xfe\x00garbage", "non_json"),
    ("{bitcoin: 1}", "non_json"),
    ("[" * 100_000, "non_json"),
    ('["bitcoin", "1.0"]', "bad_shape"),
    ('"bitcoin"', "bad_shape"),
    ("null", "bad_shape"),
])
def test_price_frame_shape_rejects(frame: str | bytes, reason: str) -> None:
    result = parse_price_message(frame, RECEIVED)
    assert result.records == []
    assert reasons(result) == [reason]


def test_empty_frame_is_no_ticks_and_no_rejects() -> None:
    assert parse_price_message("{}", RECEIVED) == ParseResult([], [])


def test_naive_times_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_price_message("{}", datetime(2026, 1, 1))  # naive on purpose


# -- snapshots: bad optional fields are counted, bad keys reject the item --------------------------------------


def asset(**fields: object) -> dict[str, object]:
    return {"id": "bitcoin", "rank": "1", "symbol": "BTC", "priceUsd": "100.0", **fields}


@pytest.mark.parametrize(("field", "value", "reason", "column"), [
    ("supply", "lots", "non_numeric", "supply"),
    ("maxSupply", "-1", "non_positive", "max_supply"),
    ("marketCapUsd", "Infinity", "not_finite", "market_cap_usd"),
    ("volumeUsd24Hr", "NaN", "not_finite", "volume_usd_24hr"),
    ("priceUsd", "0", "non_positive", "price_usd"),
    ("priceUsd", "5e9", "absurd", "price_usd"),
    ("changePercent24Hr", "down", "non_numeric", "change_percent_24hr"),
    ("vwap24Hr", False, "non_numeric", "vwap_24hr"),
    ("rank", "1.5", "non_numeric", "rank"),
    ("rank", "-3", "non_positive", "rank"),
    ("rank", "1e12", "absurd", "rank"),
    ("symbol", 7, "bad_shape", "symbol"),
    ("name", "Bit\x00coin", "bad_shape", "name"),
    ("name", "\ud800", "bad_shape", "name"),
    ("explorer", "x" * 1001, "bad_shape", "explorer"),
])
def test_bad_optional_asset_field_keeps_the_row(field: str, value: object, reason: str, column: str) -> None:
    result = parse_assets({"data": [asset(**{field: value})], "timestamp": 1763753634750}, FETCHED)
    assert len(result.records) == 1
    assert getattr(result.records[0], column) is None
    assert result.records[0].asset_id == "bitcoin"
    assert reasons(result) == [reason]
    assert field in result.rejects[0].detail


@pytest.mark.parametrize(("value", "expected"), [("12", 12), ("12.0", 12), (12, 12), ("0", 0), ("1e3", 1000)])
def test_integer_fields_accept_strings_and_floats(value: object, expected: int) -> None:
    result = parse_assets({"data": [asset(rank=value)]}, FETCHED)
    assert result.records[0].rank == expected
    assert result.rejects == []


@pytest.mark.parametrize(("item", "reason"), [
    ({"rank": "1", "priceUsd": "1.0"}, "missing_field"),
    ({"id": None, "priceUsd": "1.0"}, "missing_field"),
    ({"id": "BTC!", "priceUsd": "1.0"}, "bad_asset_id"),
    ({"id": 1}, "bad_asset_id"),
    ("bitcoin", "bad_shape"),
    (None, "bad_shape"),
])
def test_item_without_a_valid_id_is_rejected(item: object, reason: str) -> None:
    result = parse_assets({"data": [item, asset()]}, FETCHED)
    assert [r.asset_id for r in result.records] == ["bitcoin"]
    assert reasons(result) == [reason]


@pytest.mark.parametrize("payload", [{"error": "limit exceeded"}, {"data": {"id": "bitcoin"}}, [], {"data": None}])
def test_list_endpoint_without_a_list_is_bad_shape(payload: Any) -> None:
    for parse in (parse_assets, parse_exchanges, parse_markets, parse_rates):
        result = parse(payload, FETCHED)
        assert result.records == []
        assert reasons(result) == ["bad_shape"]


def test_single_asset_endpoint_rejects_a_list() -> None:
    result = parse_asset(fixture_bytes("assets"), FETCHED)
    assert result.records == []
    assert reasons(result) == ["bad_shape"]


def test_non_json_body_is_one_reject_for_every_parser() -> None:
    body = b"<html><body>502 Bad Gateway</body></html>"
    for parse in (parse_assets, parse_asset, parse_exchanges, parse_markets, parse_rates):
        assert reasons(parse(body, FETCHED)) == ["non_json"]
    assert reasons(parse_history(body, "bitcoin")) == ["non_json"]


def test_exchange_socket_and_updated_variants() -> None:
    data = [
        {"exchangeId": "a", "socket": "true", "updated": "1763753612345"},
        {"exchangeId": "b", "socket": 1, "updated": "yesterday"},
        {"exchangeId": "c", "socket": None, "updated": 12},
        {"exchangeId": "d", "tradingPairs": "3000000000"},
    ]
    result = parse_exchanges({"data": data, "timestamp": 1763753634999}, FETCHED)
    by_id = {r.exchange_id: r for r in result.records}
    assert (by_id["a"].socket, by_id["a"].updated) == (True, ms(1763753612345))
    assert (by_id["b"].socket, by_id["b"].updated) == (None, None)
    assert (by_id["c"].socket, by_id["c"].updated) == (None, None)
    assert by_id["d"].trading_pairs is None  # does not fit the integer column
    assert sorted(reasons(result)) == ["absurd", "bad_shape", "bad_time", "bad_time"]


def test_market_needs_all_three_ids() -> None:
    good = {"exchangeId": "kraken", "baseId": "bitcoin", "quoteId": "euro", "tradesCount24Hr": "3000000000"}
    data = [good, {**good, "quoteId": None}, {**good, "baseId": "Bitcoin"}, {"exchangeId": "kraken"}]
    result = parse_markets({"data": data}, FETCHED)
    assert [(m.exchange_id, m.base_id, m.quote_id) for m in result.records] == [("kraken", "bitcoin", "euro")]
    assert result.records[0].trades_count_24hr == 3_000_000_000  # bigint column
    assert sorted(reasons(result)) == ["bad_asset_id", "missing_field", "missing_field", "missing_field"]


def test_rate_bounds() -> None:
    data = [{"id": "euro", "rateUsd": "-1"}, {"id": "tiny-coin", "rateUsd": "1e-20"}]
    result = parse_rates({"data": data}, FETCHED)
    assert [(r.rate_id, r.rate_usd) for r in result.records] == [("euro", None), ("tiny-coin", None)]
    assert reasons(result) == ["non_positive", "absurd"]


# -- history ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("item", "reason"), [
    ({"time": 1763752800000}, "missing_field"),
    ({"priceUsd": "1.0"}, "missing_field"),
    ({"priceUsd": None, "time": 1763752800000}, "missing_field"),
    ({"priceUsd": "1.0", "time": "yesterday"}, "bad_time"),
    ({"priceUsd": "1.0", "time": -5}, "bad_time"),
    ({"priceUsd": "1.0", "time": 1763752800000 * 1000}, "bad_time"),  # microseconds, not ms
    ({"priceUsd": "free", "time": 1763752800000}, "non_numeric"),
    ({"priceUsd": "0", "time": 1763752800000}, "non_positive"),
    (["1.0", 1763752800000], "bad_shape"),
])
def test_history_rejects(item: object, reason: str) -> None:
    good = {"priceUsd": "2.5", "time": 1763753100000}
    result = parse_history({"data": [item, good]}, "bitcoin")
    assert result.records == [Tick(ms(1763753100000), "bitcoin", 2.5, "history")]
    assert reasons(result) == [reason]


def test_history_with_a_bad_asset_id_rejects_everything() -> None:
    result = parse_history(fixture_bytes("history_bitcoin"), "Bitcoin/../rates")
    assert result.records == []
    assert reasons(result) == ["bad_asset_id"]


# -- REST price polling ----------------------------------------------------------------------------------------


def test_ticks_from_assets_skip_unpriced_snapshots() -> None:
    snapshots = parse_assets(fixture_bytes("assets"), FETCHED).records
    ticks = ticks_from_assets(snapshots, RECEIVED)
    assert [(t.asset_id, t.price_usd) for t in ticks] == [
        ("bitcoin", 84739.05), ("ethereum", 2770.14), ("binance-coin", 842.291234), ("usd-coin", 0.9999),
        ("1inch", 0.17),
    ]
    assert {(t.time, t.source) for t in ticks} == {(RECEIVED, "rest")}


def test_ticks_from_assets_refuse_prices_that_did_not_come_through_the_parser() -> None:
    odd = AssetSnapshot(FETCHED, "bitcoin", 1, None, None, None, None, None, None, math.inf, None, None, None, "rest")
    assert ticks_from_assets([odd], RECEIVED) == []


# -- properties --------------------------------------------------------------------------------------------------

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
numberish = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.floats(),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.decimals(allow_nan=True).map(str),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "inf", "", " ", "1e999", "0", "-0", "1e-300", "12.0", "0x1f"]),
    st.text(max_size=12), st.lists(st.integers(), max_size=2),
)
slugish = st.one_of(st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True), st.text(max_size=12), st.none(),
                    st.integers())
weird = st.one_of(numberish, st.text(max_size=30), json_values)

ITEM_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # parser name: (id fields, other fields)
    "assets": (("id",), ("rank", "symbol", "name", "supply", "maxSupply", "marketCapUsd", "volumeUsd24Hr",
                         "priceUsd", "changePercent24Hr", "vwap24Hr", "explorer")),
    "exchanges": (("exchangeId",), ("name", "rank", "percentTotalVolume", "volumeUsd", "tradingPairs", "socket",
                                    "exchangeUrl", "updated")),
    "markets": (("exchangeId", "baseId", "quoteId"), ("rank", "baseSymbol", "quoteSymbol", "priceQuote", "priceUsd",
                                                      "volumeUsd24Hr", "percentExchangeVolume", "tradesCount24Hr",
                                                      "updated")),
    "rates": (("id",), ("symbol", "currencySymbol", "rateUsd", "type")),
}
LIST_PARSERS: dict[str, Callable[[Any, datetime], ParseResult[Any]]] = {
    "assets": parse_assets, "exchanges": parse_exchanges, "markets": parse_markets, "rates": parse_rates,
}


@st.composite
def items(draw: st.DrawFn, kind: str) -> dict[str, object]:
    ids, others = ITEM_FIELDS[kind]
    item: dict[str, object] = {}
    for name in ids:
        if draw(st.integers(0, 9)):  # mostly present
            item[name] = draw(slugish)
    for name in others:
        if draw(st.booleans()):
            item[name] = draw(weird)
    return item


def check_record(record: object) -> None:
    """Every field of every record is something the database can store."""
    assert isinstance(record, tuple)
    assert isinstance(record[0], datetime) and record[0].utcoffset() == timedelta(0)
    for value in record:
        if isinstance(value, float):
            assert math.isfinite(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            assert 0 <= value < 2**63
        elif isinstance(value, str):
            assert "\x00" not in value
            value.encode("utf-8")
    if isinstance(record, Tick):
        check_tick(record)


def check_tick(tick: Tick) -> None:
    assert is_valid_id(tick.asset_id)
    assert math.isfinite(tick.price_usd)
    assert 0 < MIN_PRICE_USD <= tick.price_usd <= MAX_PRICE_USD


def check_result(result: ParseResult[Any]) -> None:
    for record in result.records:
        check_record(record)
    for reject in result.rejects:
        assert reject.reason in REJECT_REASONS
        assert isinstance(reject.detail, str) and len(reject.detail) < 400


def all_parsers(payload: Any) -> list[ParseResult[Any]]:
    out = [parse(payload, FETCHED) for parse in (*LIST_PARSERS.values(), parse_asset)]
    out.append(parse_history(payload, "bitcoin"))
    if isinstance(payload, str | bytes):
        out.append(parse_price_message(payload, RECEIVED))
    return out


@PROPERTY
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_any_parser(raw: bytes) -> None:
    for result in all_parsers(raw):
        check_result(result)


@PROPERTY
@given(json_values)
def test_random_json_never_crashes_any_parser(value: Any) -> None:
    text = json.dumps(value)
    for result in all_parsers(text):
        check_result(result)
    envelope = {"data": value, "timestamp": 1763753634750}
    for result in all_parsers(envelope) + all_parsers(json.dumps(envelope)):
        check_result(result)


@PROPERTY
@given(st.dictionaries(st.one_of(slugish.map(str), st.text(max_size=10)), numberish, max_size=8))
def test_every_frame_entry_is_a_tick_or_a_reject(frame: dict[str, object]) -> None:
    text = json.dumps(frame)
    result = parse_price_message(text, RECEIVED)
    check_result(result)
    assert len(result.records) + len(result.rejects) == len(frame)
    assert {t.asset_id for t in result.records} <= set(frame)
    for tick in result.records:
        assert tick.time == RECEIVED


STAMP = 1763753634750


@PROPERTY
@given(st.sampled_from(sorted(ITEM_FIELDS)).flatmap(lambda kind: st.tuples(
    st.just(kind), st.lists(items(kind), max_size=6), st.one_of(st.just(STAMP), st.none(), json_values))))
def test_every_snapshot_item_is_a_record_or_rejected(case: tuple[str, list[dict[str, object]], object]) -> None:
    kind, data, stamp = case
    parse = LIST_PARSERS[kind]
    whole = parse({"data": data, "timestamp": stamp}, FETCHED)
    check_result(whole)
    ids, _ = ITEM_FIELDS[kind]
    expected_records: list[Any] = []
    for item in data:
        alone = parse({"data": [item], "timestamp": stamp}, FETCHED)
        check_result(alone)
        if all(is_valid_id(item.get(name)) for name in ids):
            assert len(alone.records) == 1  # a valid id always keeps the row
        else:
            assert alone.records == [] and alone.rejects  # otherwise the item is rejected, and counted
        expected_records += alone.records
    assert whole.records == expected_records
    if stamp == STAMP:  # a sane envelope timestamp makes a replay (decoded again, fetched later) identical
        assert parse(json.dumps({"data": data, "timestamp": stamp}), FETCHED + timedelta(days=1)) == whole


@PROPERTY
@given(st.lists(st.fixed_dictionaries({}, optional={"priceUsd": numberish, "time": weird}), max_size=6))
def test_every_history_item_is_a_tick_or_a_reject(data: list[dict[str, object]]) -> None:
    result = parse_history({"data": data}, "bitcoin")
    check_result(result)
    assert len(result.records) + len(result.rejects) == len(data)
    assert all(t.source == "history" and t.asset_id == "bitcoin" for t in result.records)


@PROPERTY
@given(st.lists(items("assets"), max_size=6))
def test_ticks_from_polled_assets_are_always_valid(data: list[dict[str, object]]) -> None:
    snapshots = parse_assets({"data": data}, FETCHED).records
    ticks = ticks_from_assets(snapshots, RECEIVED)
    for tick in ticks:
        check_tick(tick)
    assert len(ticks) == sum(1 for s in snapshots if s.price_usd is not None)
