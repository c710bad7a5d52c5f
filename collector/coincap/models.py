"""Typed records produced by the parsers and consumed by the writer.

Records are NamedTuples whose field order is the column order of their table, so the writer can hand
them to binary COPY as they are. Every numeric CoinCap field may be null (None); prices in ticks never.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, NamedTuple, TypeVar

__all__ = [
    "AssetSnapshot",
    "ExchangeSnapshot",
    "MarketSnapshot",
    "ParseResult",
    "RateSnapshot",
    "Record",
    "Reject",
    "Tick",
    "TickSource",
]

TickSource = Literal["ws", "rest", "history", "demo"]
SnapshotSource = Literal["rest", "demo"]


class Tick(NamedTuple):
    """One price observation; ``time`` is when the collector received it (UTC)."""

    time: datetime
    asset_id: str
    price_usd: float
    source: str


class AssetSnapshot(NamedTuple):
    time: datetime
    asset_id: str
    rank: int | None
    symbol: str | None
    name: str | None
    supply: float | None
    max_supply: float | None
    market_cap_usd: float | None
    volume_usd_24hr: float | None
    price_usd: float | None
    change_percent_24hr: float | None
    vwap_24hr: float | None
    explorer: str | None
    source: str


class ExchangeSnapshot(NamedTuple):
    time: datetime
    exchange_id: str
    name: str | None
    rank: int | None
    percent_total_volume: float | None
    volume_usd: float | None
    trading_pairs: int | None
    socket: bool | None
    exchange_url: str | None
    updated: datetime | None
    source: str


class MarketSnapshot(NamedTuple):
    time: datetime
    exchange_id: str
    base_id: str
    quote_id: str
    base_symbol: str | None
    quote_symbol: str | None
    rank: int | None
    price_quote: float | None
    price_usd: float | None
    volume_usd_24hr: float | None
    percent_exchange_volume: float | None
    trades_count_24hr: int | None
    updated: datetime | None
    source: str


class RateSnapshot(NamedTuple):
    time: datetime
    rate_id: str
    symbol: str | None
    currency_symbol: str | None
    rate_usd: float | None
    type: str | None
    source: str


Record = Tick | AssetSnapshot | ExchangeSnapshot | MarketSnapshot | RateSnapshot


class Reject(NamedTuple):
    """A value the parser refused. ``reason`` is a short stable label (used as a metric label)."""

    reason: str
    detail: str


T = TypeVar("T")


@dataclass(slots=True)
class ParseResult(Generic[T]):
    records: list[T]
    rejects: list[Reject]
