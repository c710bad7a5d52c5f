"""Pure parsers: CoinCap v3 payloads (WebSocket frames, REST envelopes) to typed records.

Every function takes text, bytes or an already decoded JSON document and returns a ``ParseResult``: the
records it could build and a ``Reject`` for every value it refused. They do no I/O and never raise on bad
input, so one malformed frame can never stop the stream.

Rules (see ``/work/shared/coincap-v3.md``):

- REST answers are envelopes ``{"data": <object | list>, "timestamp": <int ms>}``. A snapshot's ``time``
  is the envelope's ``timestamp`` when present and sane, else the caller's ``fetched_at``, so parsing the
  same response twice yields identical rows (the writer's idempotency relies on it).
- Numbers arrive as decimal strings (JSON numbers are accepted too); ``NaN``/``Infinity`` are refused.
- Every numeric field may be null. A bad *optional* value becomes None and is counted as a reject; a
  missing or invalid *key* (asset/exchange/rate id, a history point's price or time) rejects the item.
- Reject reasons are short stable labels (``REJECT_REASONS``): they are Prometheus label values.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeGuard, TypeVar

from collector.coincap.models import (
    AssetSnapshot,
    ExchangeSnapshot,
    MarketSnapshot,
    ParseResult,
    RateSnapshot,
    Reject,
    Tick,
)

__all__ = [
    "MAX_PRICE_USD",
    "MIN_PRICE_USD",
    "REJECT_REASONS",
    "is_valid_id",
    "parse_asset",
    "parse_assets",
    "parse_exchanges",
    "parse_history",
    "parse_markets",
    "parse_price_message",
    "parse_rates",
    "ticks_from_assets",
]

MAX_PRICE_USD = 1e9
"""A USD price above this is refused as ``absurd`` (no asset trades near a billion dollars a unit)."""
MIN_PRICE_USD = 1e-15
"""A USD price below this (but above zero) is refused as ``absurd``."""

NON_JSON = "non_json"
BAD_SHAPE = "bad_shape"
BAD_ASSET_ID = "bad_asset_id"
NON_NUMERIC = "non_numeric"
NOT_FINITE = "not_finite"
NON_POSITIVE = "non_positive"
ABSURD = "absurd"
BAD_TIME = "bad_time"
MISSING_FIELD = "missing_field"
REJECT_REASONS = frozenset(
    {NON_JSON, BAD_SHAPE, BAD_ASSET_ID, NON_NUMERIC, NOT_FINITE, NON_POSITIVE, ABSURD, BAD_TIME, MISSING_FIELD}
)

# CoinCap ids are lower-case slugs such as "bitcoin", "binance-coin", "usd-coin", "1inch",
# "united-states-dollar" (same rule as settings.SLUG). Applies to asset, exchange and rate ids.
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,99}")
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)

_INT4_MAX = 2**31 - 1  # rank, trading_pairs are `integer` columns
_INT8_MAX = 2**63 - 1  # trades_count_24hr is `bigint`
_TEXT_MAX = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A time outside this window is not a CoinCap time (absolute bounds keep parsing deterministic).
_MIN_MS = 1_230_768_000_000  # 2009-01-01
_MAX_MS = 4_102_444_800_000  # 2100-01-01

Payload = str | bytes | bytearray | Mapping[str, Any]
R = TypeVar("R")


def is_valid_id(value: object) -> TypeGuard[str]:
    """True for a CoinCap slug id (lower-case letters, digits and dashes, at most 100 characters)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


# -- WebSocket ---------------------------------------------------------------------------------------------


def parse_price_message(text: str | bytes, received_at: datetime, source: str = "ws") -> ParseResult[Tick]:
    """A ``/prices`` frame ``{"<slug>": "<priceUsd>", ...}``: one Tick per valid entry, stamped ``received_at``."""
    at = _utc(received_at)
    doc = _load(text)
    if isinstance(doc, Reject):
        return ParseResult([], [doc])
    if not isinstance(doc, Mapping):
        return ParseResult([], [Reject(BAD_SHAPE, f"{source} frame is not an object: {_show(doc)}")])
    ticks: list[Tick] = []
    rejects: list[Reject] = []
    for key, value in doc.items():
        where = f"{source}.{_show(key, 40)}"
        if not is_valid_id(key):
            rejects.append(Reject(BAD_ASSET_ID, f"{where}: not a slug id"))
            continue
        price = _Bad(MISSING_FIELD) if value is None else _price(value)
        if isinstance(price, _Bad):
            rejects.append(Reject(price.reason, f"{where}: {_show(value)}"))
            continue
        ticks.append(Tick(at, key, price, source))
    return ParseResult(ticks, rejects)


# -- REST snapshots ----------------------------------------------------------------------------------------


def parse_assets(payload: Payload, fetched_at: datetime, source: str = "rest") -> ParseResult[AssetSnapshot]:
    """``GET /assets``: a list envelope of asset objects."""
    return _parse_list(payload, fetched_at, source, "assets", _asset)


def parse_asset(payload: Payload, fetched_at: datetime, source: str = "rest") -> ParseResult[AssetSnapshot]:
    """``GET /assets/{id}``: an envelope holding one asset object."""
    doc = _load(payload)
    if isinstance(doc, Reject):
        return ParseResult([], [doc])
    rejects: list[Reject] = []
    time = _envelope_time(doc, fetched_at, rejects)
    data = doc.get("data") if isinstance(doc, Mapping) else None
    if not isinstance(data, Mapping):
        rejects.append(Reject(BAD_SHAPE, f"asset: no object under 'data': {_show(doc)}"))
        return ParseResult([], rejects)
    record = _asset(_Item(data, "asset", rejects), time, source)
    return ParseResult([] if record is None else [record], rejects)


def parse_exchanges(payload: Payload, fetched_at: datetime, source: str = "rest") -> ParseResult[ExchangeSnapshot]:
    """``GET /exchanges``: a list envelope of exchange objects."""
    return _parse_list(payload, fetched_at, source, "exchanges", _exchange)


def parse_markets(payload: Payload, fetched_at: datetime, source: str = "rest") -> ParseResult[MarketSnapshot]:
    """``GET /markets`` and ``GET /assets/{id}/markets`` (v2 field set assumed, see coincap-v3.md)."""
    return _parse_list(payload, fetched_at, source, "markets", _market)


def parse_rates(payload: Payload, fetched_at: datetime, source: str = "rest") -> ParseResult[RateSnapshot]:
    """``GET /rates``: a list envelope of rate objects (``currencySymbol`` may be absent)."""
    return _parse_list(payload, fetched_at, source, "rates", _rate)


def parse_history(payload: Payload, asset_id: str) -> ParseResult[Tick]:
    """``GET /assets/{id}/history``: items ``{"priceUsd": "...", "time": <int ms>}`` to ``history`` Ticks."""
    if not is_valid_id(asset_id):
        return ParseResult([], [Reject(BAD_ASSET_ID, f"history: asset id {_show(asset_id)} is not a slug")])
    doc = _load(payload)
    if isinstance(doc, Reject):
        return ParseResult([], [doc])
    rejects: list[Reject] = []
    items = _items(doc, f"history.{asset_id}", rejects)
    ticks: list[Tick] = []
    for index, item in enumerate(items):
        where = f"history.{asset_id}[{index}]"
        if not isinstance(item, Mapping):
            rejects.append(Reject(BAD_SHAPE, f"{where}: not an object: {_show(item)}"))
            continue
        raw_price, raw_time = item.get("priceUsd"), item.get("time")
        if raw_price is None or raw_time is None:
            missing = "priceUsd" if raw_price is None else "time"
            rejects.append(Reject(MISSING_FIELD, f"{where}.{missing}: missing or null"))
            continue
        price = _price(raw_price)
        if isinstance(price, _Bad):
            rejects.append(Reject(price.reason, f"{where}.priceUsd: {_show(raw_price)}"))
            continue
        time = _millis(raw_time)
        if isinstance(time, _Bad):
            rejects.append(Reject(time.reason, f"{where}.time: {_show(raw_time)}"))
            continue
        ticks.append(Tick(time, asset_id, price, "history"))
    return ParseResult(ticks, rejects)


def ticks_from_assets(snapshots: Sequence[AssetSnapshot], received_at: datetime, source: str = "rest") -> list[Tick]:
    """Price ticks from polled ``/assets`` snapshots (REST price feed); snapshots without a price are skipped."""
    at = _utc(received_at)
    ticks: list[Tick] = []
    for snapshot in snapshots:
        price = snapshot.price_usd
        if price is None or isinstance(_price(price), _Bad):  # the parser already counted bad prices
            continue
        ticks.append(Tick(at, snapshot.asset_id, price, source))
    return ticks


# -- item builders -----------------------------------------------------------------------------------------


class _Item:
    """Reads fields of one CoinCap object; a bad optional value becomes None and a counted reject."""

    __slots__ = ("_obj", "_rejects", "_where")

    def __init__(self, obj: Mapping[Any, Any], where: str, rejects: list[Reject]) -> None:
        self._obj = obj
        self._where = where
        self._rejects = rejects

    def ident(self, key: str) -> str | None:
        """A required slug id; None (item rejected) when missing or malformed."""
        value = self._obj.get(key)
        if value is None:
            self._rejects.append(Reject(MISSING_FIELD, f"{self._where}.{key}: missing or null"))
            return None
        if not is_valid_id(value):
            self._rejects.append(Reject(BAD_ASSET_ID, f"{self._where}.{key}: {_show(value)}"))
            return None
        return value

    def _check(self, key: str, parse: Callable[[object], R | _Bad]) -> R | None:
        value = self._obj.get(key)
        if value is None:
            return None
        result = parse(value)
        if isinstance(result, _Bad):
            self._rejects.append(Reject(result.reason, f"{self._where}.{key}: {_show(value)}"))
            return None
        return result

    def price(self, key: str) -> float | None:
        return self._check(key, _price)

    def positive(self, key: str) -> float | None:
        return self._check(key, _positive)

    def quantity(self, key: str) -> float | None:
        return self._check(key, _quantity)

    def number(self, key: str) -> float | None:
        return self._check(key, _number)

    def int4(self, key: str) -> int | None:
        return self._check(key, lambda v: _integer(v, _INT4_MAX))

    def int8(self, key: str) -> int | None:
        return self._check(key, lambda v: _integer(v, _INT8_MAX))

    def text(self, key: str) -> str | None:
        return self._check(key, _text)

    def flag(self, key: str) -> bool | None:
        return self._check(key, _flag)

    def time(self, key: str) -> datetime | None:
        return self._check(key, _millis)


def _asset(f: _Item, time: datetime, source: str) -> AssetSnapshot | None:
    asset_id = f.ident("id")
    if asset_id is None:
        return None
    return AssetSnapshot(
        time, asset_id, f.int4("rank"), f.text("symbol"), f.text("name"), f.quantity("supply"),
        f.quantity("maxSupply"), f.quantity("marketCapUsd"), f.quantity("volumeUsd24Hr"), f.price("priceUsd"),
        f.number("changePercent24Hr"), f.quantity("vwap24Hr"), f.text("explorer"), source,
    )


def _exchange(f: _Item, time: datetime, source: str) -> ExchangeSnapshot | None:
    exchange_id = f.ident("exchangeId")
    if exchange_id is None:
        return None
    return ExchangeSnapshot(
        time, exchange_id, f.text("name"), f.int4("rank"), f.quantity("percentTotalVolume"), f.quantity("volumeUsd"),
        f.int4("tradingPairs"), f.flag("socket"), f.text("exchangeUrl"), f.time("updated"), source,
    )


def _market(f: _Item, time: datetime, source: str) -> MarketSnapshot | None:
    exchange_id, base_id, quote_id = f.ident("exchangeId"), f.ident("baseId"), f.ident("quoteId")
    if exchange_id is None or base_id is None or quote_id is None:
        return None
    return MarketSnapshot(
        time, exchange_id, base_id, quote_id, f.text("baseSymbol"), f.text("quoteSymbol"), f.int4("rank"),
        # priceQuote is in the quote currency (BTC/IDR is above MAX_PRICE_USD): only positive and finite.
        f.positive("priceQuote"), f.price("priceUsd"), f.quantity("volumeUsd24Hr"),
        f.quantity("percentExchangeVolume"), f.int8("tradesCount24Hr"), f.time("updated"), source,
    )


def _rate(f: _Item, time: datetime, source: str) -> RateSnapshot | None:
    rate_id = f.ident("id")
    if rate_id is None:
        return None
    return RateSnapshot(
        time, rate_id, f.text("symbol"), f.text("currencySymbol"), f.price("rateUsd"), f.text("type"), source
    )


# -- envelopes ---------------------------------------------------------------------------------------------


def _parse_list(payload: Payload, fetched_at: datetime, source: str, name: str,
                build: Callable[[_Item, datetime, str], R | None]) -> ParseResult[R]:
    doc = _load(payload)
    if isinstance(doc, Reject):
        return ParseResult([], [doc])
    rejects: list[Reject] = []
    time = _envelope_time(doc, fetched_at, rejects)
    records: list[R] = []
    for index, item in enumerate(_items(doc, name, rejects)):
        where = f"{name}[{index}]"
        if not isinstance(item, Mapping):
            rejects.append(Reject(BAD_SHAPE, f"{where}: not an object: {_show(item)}"))
            continue
        record = build(_Item(item, where, rejects), time, source)
        if record is not None:
            records.append(record)
    return ParseResult(records, rejects)


def _load(payload: object) -> object:
    """The decoded JSON document, or a ``non_json`` Reject."""
    if isinstance(payload, Mapping):
        return payload
    if not isinstance(payload, str | bytes | bytearray):
        return Reject(BAD_SHAPE, f"payload is a {type(payload).__name__}")
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return Reject(NON_JSON, f"{type(exc).__name__}: {_show(payload[:60])}")


def _items(doc: object, name: str, rejects: list[Reject]) -> list[Any]:
    data = doc.get("data") if isinstance(doc, Mapping) else None
    if not isinstance(data, list):
        rejects.append(Reject(BAD_SHAPE, f"{name}: no list under 'data': {_show(doc)}"))
        return []
    return data


def _envelope_time(doc: object, fetched_at: datetime, rejects: list[Reject]) -> datetime:
    fallback = _utc(fetched_at)
    raw = doc.get("timestamp") if isinstance(doc, Mapping) else None
    if raw is None:
        return fallback
    time = _millis(raw)
    if isinstance(time, _Bad):
        rejects.append(Reject(time.reason, f"envelope.timestamp: {_show(raw)}; using fetch time"))
        return fallback
    return time


# -- values ------------------------------------------------------------------------------------------------


class _Bad(NamedTuple):
    """Why a value was refused (a reject reason)."""

    reason: str


def _number(value: object) -> float | _Bad:
    """A finite float from a decimal string (or a JSON number), else the reject reason."""
    if isinstance(value, bool):
        return _Bad(NON_NUMERIC)
    if isinstance(value, int):
        try:
            number = float(value)
        except OverflowError:
            return _Bad(NOT_FINITE)
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if _DECIMAL.fullmatch(text):
            number = float(text)  # "1e999" overflows to inf: refused below
        elif _NON_FINITE.fullmatch(text):
            return _Bad(NOT_FINITE)
        else:
            return _Bad(NON_NUMERIC)
    else:
        return _Bad(NON_NUMERIC)
    return number if math.isfinite(number) else _Bad(NOT_FINITE)


def _positive(value: object) -> float | _Bad:
    number = _number(value)
    if not isinstance(number, _Bad) and number <= 0:
        return _Bad(NON_POSITIVE)
    return number


def _price(value: object) -> float | _Bad:
    """A USD price: finite, positive, within [MIN_PRICE_USD, MAX_PRICE_USD]."""
    number = _positive(value)
    if not isinstance(number, _Bad) and not MIN_PRICE_USD <= number <= MAX_PRICE_USD:
        return _Bad(ABSURD)
    return number


def _quantity(value: object) -> float | _Bad:
    """A supply, volume, market cap or percentage share: finite and not negative."""
    number = _number(value)
    if not isinstance(number, _Bad) and number < 0:
        return _Bad(NON_POSITIVE)
    return number


def _integer(value: object, maximum: int) -> int | _Bad:
    """A count or rank: "12", "12.0" or 12; not negative and fitting its column."""
    if isinstance(value, int) and not isinstance(value, bool):
        whole = value
    else:
        number = _number(value)
        if isinstance(number, _Bad):
            return number
        if not number.is_integer():
            return _Bad(NON_NUMERIC)
        whole = int(number)
    if whole < 0:
        return _Bad(NON_POSITIVE)
    if whole > maximum:
        return _Bad(ABSURD)
    return whole


def _text(value: object) -> str | _Bad:
    """A string PostgreSQL can store (no NUL, valid UTF-8) of sane length."""
    if not isinstance(value, str) or len(value) > _TEXT_MAX or "\x00" in value:
        return _Bad(BAD_SHAPE)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, which JSON allows ("\ud800")
        return _Bad(BAD_SHAPE)
    return value


def _flag(value: object) -> bool | _Bad:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    return _Bad(BAD_SHAPE)


def _millis(value: object) -> datetime | _Bad:
    """Integer milliseconds since the epoch (also as a string of digits) to an aware UTC datetime."""
    if isinstance(value, int) and not isinstance(value, bool):
        millis: float = value
    elif isinstance(value, float) and math.isfinite(value):
        millis = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        millis = int(value) if len(value) <= 16 else _MAX_MS + 1
    else:
        return _Bad(BAD_TIME)
    if not _MIN_MS <= millis <= _MAX_MS:
        return _Bad(BAD_TIME)
    return _EPOCH + timedelta(milliseconds=millis)


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("parser times must be timezone-aware (UTC)")
    return at.astimezone(UTC)


def _show(value: object, limit: int = 80) -> str:
    """A short repr of an offending value for a reject's detail."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
