"""The demo feed: a seeded synthetic market, emitting CoinCap v3-shaped payloads.

Nothing here is market data. Prices are geometric random walks from made-up starting points; snapshots
are plausible but invented. The payloads (WebSocket price frames, REST envelopes with every number as a
decimal string) go through the very same parsers, queue and writer as live data, marked
``source = 'demo'``, so a fresh stack shows moving dashboards without an API key.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from collector.coincap import parse
from collector.intake import Intake

__all__ = ["DEMO_ASSETS", "DemoFeed", "DemoMarket"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Asset:
    id: str
    symbol: str
    name: str
    price: float
    supply: float
    max_supply: float | None
    volatility: float  # per-step relative standard deviation
    volume_24h: float


# (id, symbol, name, start price USD, supply, max supply, daily volume USD)
DEMO_ASSETS: tuple[tuple[str, str, str, float, float, float | None, float], ...] = (
    ("bitcoin", "BTC", "Bitcoin", 91000.0, 19_950_000, 21_000_000, 3.1e10),
    ("ethereum", "ETH", "Ethereum", 3100.0, 120_700_000, None, 1.6e10),
    ("tether", "USDT", "Tether", 1.0, 184_000_000_000, None, 6.5e10),
    ("solana", "SOL", "Solana", 140.0, 560_000_000, None, 3.9e9),
    ("binance-coin", "BNB", "BNB", 880.0, 139_000_000, 200_000_000, 1.8e9),
    ("xrp", "XRP", "XRP", 2.1, 60_000_000_000, 100_000_000_000, 3.2e9),
    ("usd-coin", "USDC", "USDC", 1.0, 75_000_000_000, None, 8.0e9),
    ("cardano", "ADA", "Cardano", 0.45, 36_000_000_000, 45_000_000_000, 6.0e8),
    ("dogecoin", "DOGE", "Dogecoin", 0.16, 150_000_000_000, None, 1.1e9),
    ("tron", "TRX", "TRON", 0.28, 94_700_000_000, None, 5.5e8),
    ("chainlink", "LINK", "Chainlink", 13.5, 680_000_000, 1_000_000_000, 4.8e8),
    ("avalanche", "AVAX", "Avalanche", 14.0, 425_000_000, 720_000_000, 3.9e8),
    ("stellar", "XLM", "Stellar", 0.25, 32_000_000_000, 50_001_806_812, 1.6e8),
    ("litecoin", "LTC", "Litecoin", 88.0, 76_400_000, 84_000_000, 4.1e8),
    ("polkadot", "DOT", "Polkadot", 2.6, 1_600_000_000, None, 2.2e8),
    ("uniswap", "UNI", "Uniswap", 6.2, 630_000_000, 1_000_000_000, 2.6e8),
)

_EXCHANGES = (
    ("binance", "Binance", 31.0), ("coinbase", "Coinbase", 14.0), ("okx", "OKX", 11.0),
    ("bybit", "Bybit", 9.5), ("kraken", "Kraken", 5.0), ("kucoin", "KuCoin", 3.5),
    ("gate", "Gate", 3.0), ("bitstamp", "Bitstamp", 1.2),
)
_QUOTES = (("tether", "USDT"), ("usd-coin", "USDC"), ("united-states-dollar", "USD"))
_RATES = (
    ("united-states-dollar", "USD", "$", 1.0, "fiat"), ("euro", "EUR", "€", 1.08, "fiat"),
    ("british-pound-sterling", "GBP", "£", 1.27, "fiat"), ("japanese-yen", "JPY", "¥", 0.0066, "fiat"),
    ("swiss-franc", "CHF", "Fr.", 1.13, "fiat"), ("canadian-dollar", "CAD", "$", 0.72, "fiat"),
)
_STABLE = {"tether", "usd-coin"}


def _s(value: float | None) -> str | None:
    """CoinCap sends numbers as decimal strings."""
    return None if value is None else repr(float(value))


class DemoMarket:
    """The synthetic market's state; every method returns a payload exactly as CoinCap would send it."""

    def __init__(self, seed: int = 42) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - synthetic prices, not cryptography
        self.assets = [
            _Asset(a, s, n, p, sup, mx, 0.0001 if a in _STABLE else self._rng.uniform(0.0008, 0.0025), vol)
            for a, s, n, p, sup, mx, vol in DEMO_ASSETS
        ]
        self._open = {a.id: a.price for a in self.assets}

    def step(self, fraction: float = 0.6) -> str:
        """Move a random subset of prices one step; return the WebSocket frame ({"slug": "price", ...})."""
        frame: dict[str, str] = {}
        for asset in self.assets:
            if self._rng.random() > fraction:
                continue
            shock = self._rng.gauss(0.0, asset.volatility)
            if asset.id in _STABLE:
                asset.price = 1.0 + (asset.price - 1.0) * 0.9 + shock  # pegged: mean-reverting around 1
            else:
                asset.price *= math.exp(shock)
            frame[asset.id] = repr(round(asset.price, 10))
        return json.dumps(frame)

    def _envelope(self, data: object, at: datetime) -> str:
        return json.dumps({"data": data, "timestamp": int(at.timestamp() * 1000)})

    def assets_payload(self, at: datetime) -> str:
        ranked = sorted(self.assets, key=lambda a: a.price * a.supply, reverse=True)
        data = []
        for rank, a in enumerate(ranked, start=1):
            change = (a.price / self._open[a.id] - 1.0) * 100.0
            volume = a.volume_24h * self._rng.uniform(0.9, 1.1)
            data.append({
                "id": a.id, "rank": str(rank), "symbol": a.symbol, "name": a.name, "supply": _s(a.supply),
                "maxSupply": _s(a.max_supply), "marketCapUsd": _s(a.price * a.supply), "volumeUsd24Hr": _s(volume),
                "priceUsd": _s(a.price), "changePercent24Hr": _s(change), "vwap24Hr": _s(a.price * 0.999),
                "explorer": f"https://example.invalid/demo/{a.id}",
            })
        return self._envelope(data, at)

    def exchanges_payload(self, at: datetime) -> str:
        total = sum(a.volume_24h for a in self.assets)
        data = []
        for rank, (eid, name, share) in enumerate(_EXCHANGES, start=1):
            jitter = self._rng.uniform(0.9, 1.1)
            data.append({
                "exchangeId": eid, "name": name, "rank": str(rank), "percentTotalVolume": _s(share * jitter),
                "volumeUsd": _s(total * share / 100 * jitter), "tradingPairs": str(200 + 37 * rank),
                "socket": rank % 3 != 0, "exchangeUrl": f"https://example.invalid/demo/{eid}",
                "updated": int(at.timestamp() * 1000),
            })
        return self._envelope(data, at)

    def markets_payload(self, at: datetime, limit: int = 200) -> str:
        data = []
        for eid, _name, share in _EXCHANGES:
            for a in self.assets:
                if a.id in _STABLE:
                    continue
                for quote_id, quote_symbol in _QUOTES:
                    skew = self._rng.gauss(0.0, 0.0008)
                    price = a.price * (1.0 + skew)
                    volume = a.volume_24h * share / 100 / len(_QUOTES) * self._rng.uniform(0.5, 1.5)
                    data.append({
                        "exchangeId": eid, "rank": None, "baseSymbol": a.symbol, "baseId": a.id,
                        "quoteSymbol": quote_symbol, "quoteId": quote_id, "priceQuote": _s(price),
                        "priceUsd": _s(price), "volumeUsd24Hr": _s(volume),
                        "percentExchangeVolume": _s(self._rng.uniform(0.1, 8.0)),
                        "tradesCount24Hr": str(int(volume / 900)), "updated": int(at.timestamp() * 1000),
                    })
        data.sort(key=lambda m: float(str(m["volumeUsd24Hr"])), reverse=True)
        for rank, market in enumerate(data, start=1):
            market["rank"] = str(rank)
        return self._envelope(data[:limit], at)

    def rates_payload(self, at: datetime) -> str:
        data = [
            {"id": rid, "symbol": sym, "currencySymbol": cur, "rateUsd": _s(rate * self._rng.uniform(0.999, 1.001)),
             "type": kind}
            for rid, sym, cur, rate, kind in _RATES
        ]
        data += [{"id": a.id, "symbol": a.symbol, "currencySymbol": None, "rateUsd": _s(a.price), "type": "crypto"}
                 for a in self.assets[:2]]
        return self._envelope(data, at)


class DemoFeed:
    """Runs a DemoMarket: a price frame every ``tick_interval`` s, all snapshots every ``snapshot_interval``."""

    def __init__(self, intake: Intake, *, seed: int = 42, tick_interval: float = 0.25,
                 snapshot_interval: float = 10.0, markets_limit: int = 200,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.market = DemoMarket(seed)
        self._intake = intake
        self._tick_interval = tick_interval
        self._snapshot_interval = snapshot_interval
        self._markets_limit = markets_limit
        self._now = clock
        self._monotonic = monotonic

    def run(self, stop: threading.Event) -> None:
        log.warning("DEMO FEED: prices and snapshots are SYNTHETIC (source='demo'), not market data; "
                    "set COINCAP_API_KEY for live CoinCap data")
        next_snapshot = self._monotonic()
        while not stop.is_set():
            if self._monotonic() >= next_snapshot:
                self.emit_snapshots()
                next_snapshot = self._monotonic() + self._snapshot_interval
            self.emit_prices()
            stop.wait(self._tick_interval)

    def emit_prices(self) -> None:
        frame = self.market.step()
        self._intake.accept(parse.parse_price_message(frame, self._now(), source="demo"))

    def emit_snapshots(self) -> None:
        at = self._now()
        m = self.market
        self._intake.accept(parse.parse_assets(m.assets_payload(at), at, source="demo"))
        self._intake.accept(parse.parse_exchanges(m.exchanges_payload(at), at, source="demo"))
        self._intake.accept(parse.parse_markets(m.markets_payload(at, self._markets_limit), at, source="demo"))
        self._intake.accept(parse.parse_rates(m.rates_payload(at), at, source="demo"))
