"""Builders of records for tests (valid by construction)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from collector.coincap.models import AssetSnapshot, ExchangeSnapshot, MarketSnapshot, RateSnapshot, Tick

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def ticks(n: int, assets: tuple[str, ...] = ("bitcoin", "ethereum"), start: datetime = T0,
          step: timedelta = timedelta(milliseconds=250), source: str = "ws") -> list[Tick]:
    out = []
    for i in range(n):
        asset = assets[i % len(assets)]
        out.append(Tick(start + step * i, asset, 100.0 + i * 0.5, source))
    return out


def asset_snapshot(asset_id: str = "bitcoin", time: datetime = T0, rank: int = 1, price: float = 50000.0,
                   source: str = "rest") -> AssetSnapshot:
    return AssetSnapshot(time, asset_id, rank, asset_id[:3].upper(), asset_id.title(), 19_000_000.0, None,
                         price * 19_000_000.0, 1.5e10, price, 0.5, price * 0.99, "https://example.org", source)


def exchange_snapshot(exchange_id: str = "binance", time: datetime = T0) -> ExchangeSnapshot:
    return ExchangeSnapshot(time, exchange_id, exchange_id.title(), 1, 25.5, 1.2e10, 900, True,
                            "https://example.org", time - timedelta(seconds=30), "rest")


def market_snapshot(exchange_id: str = "kraken", time: datetime = T0) -> MarketSnapshot:
    return MarketSnapshot(time, exchange_id, "bitcoin", "tether", "BTC", "USDT", 1, 50010.0, 50000.0, 3.2e9,
                          12.5, 120_000, time - timedelta(seconds=10), "rest")


def rate_snapshot(rate_id: str = "euro", time: datetime = T0) -> RateSnapshot:
    return RateSnapshot(time, rate_id, "EUR", "€", 1.08, "fiat", "rest")
