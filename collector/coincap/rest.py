"""The CoinCap v3 REST client: requests in, parsed records out, CoinCap failures mapped to our errors.

One ``CoinCapRest`` per collector. Every call retries 429 (honouring ``Retry-After``), 5xx answers, timeouts
and connection errors with capped jittered backoff, then raises ``CoinCapRateLimited`` or
``CoinCapUnavailable``; 401/403 raise ``CoinCapAuthError`` at once, 404 ``CoinCapNotFound``. A 200 whose
body is not what we expect is not an error here: the parsers turn it into counted rejects.

The API key travels in the ``Authorization: Bearer`` header only, never in a URL, a log line or a message.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import requests

from collector.backoff import Backoff, Sleeper
from collector.coincap.models import (
    AssetSnapshot,
    ExchangeSnapshot,
    MarketSnapshot,
    ParseResult,
    RateSnapshot,
    Tick,
)
from collector.coincap.parse import (
    is_valid_id,
    parse_asset,
    parse_assets,
    parse_exchanges,
    parse_history,
    parse_markets,
    parse_rates,
)
from collector.errors import (
    CoinCapAuthError,
    CoinCapError,
    CoinCapNotFound,
    CoinCapRateLimited,
    CoinCapUnavailable,
)
from collector.metrics import Metrics

__all__ = ["HISTORY_INTERVALS", "MAX_LIMIT", "CoinCapRest", "credits_for"]

log = logging.getLogger(__name__)

HISTORY_INTERVALS = frozenset({"m1", "m5", "m15", "m30", "h1", "h2", "h6", "h12", "d1"})
MAX_LIMIT = 2000
"""CoinCap's largest page (``limit``)."""

_MAX_RETRY_AFTER = 300.0
"""A 429 asking us to wait longer than this is raised at once (``retry_after`` set) rather than slept."""
_CREDIT_BYTES = 2500


def credits_for(n_bytes: int) -> int:
    """Credits CoinCap bills for one response of ``n_bytes``: 1 per call plus 1 per further 2,500 bytes.

    An estimate: we count the decoded body, and count every answered call (failed ones too); CoinCap does
    not say whether it bills compressed bytes or failed calls, so this errs on the high side.
    """
    return 1 + max(0, n_bytes) // _CREDIT_BYTES


def _time_sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CoinCapRest:
    """GET CoinCap v3 endpoints under ``base_url`` (e.g. ``https://rest.coincap.io/v3``) and parse them."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        metrics: Metrics | None = None,
        session: requests.Session | None = None,
        sleep: Sleeper | None = None,
        backoff: Backoff | None = None,
        max_attempts: int = 5,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.base_url = base_url.rstrip("/")
        self._key = api_key or None
        self._timeout = timeout
        self._metrics = metrics
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._sleep: Sleeper = sleep if sleep is not None else _time_sleep
        self._backoff = backoff if backoff is not None else Backoff(initial=1.0, cap=30.0)
        self._max_attempts = max_attempts
        self._clock = clock if clock is not None else _utcnow
        self.credits_used = 0
        """Credits this client's answered calls cost so far (the same estimate as ``credits_for``)."""

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> CoinCapRest:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- endpoints -----------------------------------------------------------------------------------------

    def assets(self, ids: Sequence[str] | None = None, limit: int = 100, offset: int = 0) -> ParseResult[AssetSnapshot]:
        """``/assets``: one page, optionally only ``ids``."""
        params: dict[str, str | int] = _page(limit, offset)
        if ids is not None:
            params["ids"] = ",".join(_slug(asset_id) for asset_id in ids)
        return self._list("/assets", "/assets", params, parse_assets)[0]

    def all_assets(self, max_rows: int, page_size: int = MAX_LIMIT) -> ParseResult[AssetSnapshot]:
        """``/assets`` page by page (``offset`` advancing by the rows received) until ``max_rows`` or the end."""
        if max_rows < 1 or not 1 <= page_size <= MAX_LIMIT:
            raise ValueError(f"need max_rows >= 1 and 1 <= page_size <= {MAX_LIMIT}")
        total: ParseResult[AssetSnapshot] = ParseResult([], [])
        offset = 0
        while offset < max_rows:
            limit = min(page_size, max_rows - offset)
            page, rows = self._list("/assets", "/assets", _page(limit, offset), parse_assets)
            total.records.extend(page.records)
            total.rejects.extend(page.rejects)
            offset += rows
            if rows < limit:
                break
        return total

    def asset(self, asset_id: str) -> ParseResult[AssetSnapshot]:
        """``/assets/{id}``; ``CoinCapNotFound`` for an unknown slug."""
        body, fetched_at = self._get("/assets/{id}", f"/assets/{_slug(asset_id)}", {})
        return parse_asset(body, fetched_at)

    def asset_markets(self, asset_id: str, limit: int = 100, offset: int = 0) -> ParseResult[MarketSnapshot]:
        """``/assets/{id}/markets``: one page of the asset's markets."""
        path = f"/assets/{_slug(asset_id)}/markets"
        return self._list("/assets/{id}/markets", path, _page(limit, offset), parse_markets)[0]

    def history(self, asset_id: str, interval: str, start: datetime, end: datetime) -> ParseResult[Tick]:
        """``/assets/{id}/history``: prices at ``interval`` between ``start`` and ``end`` (aware datetimes)."""
        if interval not in HISTORY_INTERVALS:
            raise ValueError(f"interval must be one of {', '.join(sorted(HISTORY_INTERVALS))}, not {interval!r}")
        params: dict[str, str | int] = {"interval": interval, "start": _unix_ms(start), "end": _unix_ms(end)}
        body, _ = self._get("/assets/{id}/history", f"/assets/{_slug(asset_id)}/history", params)
        return parse_history(body, asset_id)

    def exchanges(self, limit: int = 100, offset: int = 0) -> ParseResult[ExchangeSnapshot]:
        """``/exchanges``: one page."""
        return self._list("/exchanges", "/exchanges", _page(limit, offset), parse_exchanges)[0]

    def markets(self, limit: int = 100, offset: int = 0, exchange_id: str | None = None,
                base_id: str | None = None) -> ParseResult[MarketSnapshot]:
        """``/markets``: one page, optionally filtered by exchange and base asset."""
        params: dict[str, str | int] = _page(limit, offset)
        if exchange_id is not None:
            params["exchangeId"] = _slug(exchange_id)
        if base_id is not None:
            params["baseId"] = _slug(base_id)
        return self._list("/markets", "/markets", params, parse_markets)[0]

    def rates(self) -> ParseResult[RateSnapshot]:
        """``/rates``: every rate (fiat and crypto) in USD."""
        return self._list("/rates", "/rates", {}, parse_rates)[0]

    # -- transport -----------------------------------------------------------------------------------------

    def _list(self, endpoint: str, path: str, params: Mapping[str, str | int],
              parse: Callable[[Any, datetime], ParseResult[Any]]) -> tuple[ParseResult[Any], int]:
        """GET a list endpoint; the parsed page and the number of rows CoinCap sent (for paging)."""
        body, fetched_at = self._get(endpoint, path, params)
        try:
            doc: object = json.loads(body)
        except (ValueError, RecursionError):
            return parse(body, fetched_at), 0  # the parser reports it as non_json
        data = doc.get("data") if isinstance(doc, dict) else None
        return parse(doc if isinstance(doc, dict) else body, fetched_at), len(data) if isinstance(data, list) else 0

    def _get(self, endpoint: str, path: str, params: Mapping[str, str | int]) -> tuple[bytes, datetime]:
        """The body of a 2xx answer and when it arrived; retries and error mapping as the module says."""
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        backoff = copy.copy(self._backoff)  # per call: concurrent callers must not share attempt counts
        backoff.reset()
        problem = "no attempt made"
        retry_after: float | None = None
        for attempt in range(1, self._max_attempts + 1):
            retry_after = None
            try:
                response = self._session.get(url, params=params, headers=headers, timeout=self._timeout)
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                    requests.exceptions.InvalidSchema) as exc:
                self._count(endpoint, "error", 0)
                raise CoinCapError(f"bad CoinCap REST URL {self.base_url!r} ({type(exc).__name__}): "
                                   "check COINCAP_REST_URL") from None
            except requests.RequestException as exc:
                self._count(endpoint, "error", 0)
                problem = _describe(exc, self._timeout)
                wait = backoff.next_delay()
            else:
                status, body = response.status_code, response.content
                self._count(endpoint, str(status), len(body))
                if 200 <= status < 300:
                    return body, self._clock()
                if status in (401, 403):
                    raise CoinCapAuthError(
                        f"CoinCap rejected the API key (HTTP {status}) for {endpoint}: check COINCAP_API_KEY "
                        "and that its plan includes this endpoint (https://pro.coincap.io/dashboard)")
                if status == 404:
                    raise CoinCapNotFound(f"CoinCap has no {path} (HTTP 404): check the asset or exchange id")
                if status == 429:
                    retry_after = _retry_after(response.headers.get("Retry-After"), self._clock())
                    problem = "rate limited (HTTP 429)"
                    if retry_after is not None and retry_after > _MAX_RETRY_AFTER:
                        raise CoinCapRateLimited(
                            f"CoinCap rate limit on {endpoint}: asked to wait {retry_after:.0f}s "
                            "(are the monthly credits used up?)", retry_after)
                    wait = backoff.next_delay(at_least=retry_after or 0.0)
                elif status >= 500:
                    problem = f"HTTP {status}"
                    wait = backoff.next_delay()
                else:
                    raise CoinCapError(f"CoinCap answered HTTP {status} for {endpoint}: {self._snippet(body)}")
            if attempt == self._max_attempts:
                break
            log.warning("coincap request failed endpoint=%s problem=%s attempt=%d/%d retry_in=%.2fs",
                        endpoint, problem, attempt, self._max_attempts, wait)
            if self._sleep(wait):
                break  # stop requested
        if problem.startswith("rate limited"):
            raise CoinCapRateLimited(
                f"CoinCap kept rate-limiting {endpoint} after {attempt} attempts: lower the polling rate",
                retry_after)
        raise CoinCapUnavailable(f"CoinCap unreachable for {endpoint} after {attempt} attempts: {problem}")

    def _count(self, endpoint: str, status: str, n_bytes: int) -> None:
        if status != "error":
            self.credits_used += credits_for(n_bytes)
        if self._metrics is None:
            return
        self._metrics.api_requests.labels(endpoint=endpoint, status=status).inc()
        if status != "error":
            self._metrics.api_credits.inc(credits_for(n_bytes))

    def _snippet(self, body: bytes) -> str:
        text = body[:200].decode("utf-8", errors="replace").replace("\n", " ")
        return text.replace(self._key, "***") if self._key else text


def _page(limit: int, offset: int) -> dict[str, str | int]:
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise ValueError(f"need 1 <= limit <= {MAX_LIMIT} and offset >= 0 (got limit={limit}, offset={offset})")
    return {"limit": limit, "offset": offset}


def _slug(value: str) -> str:
    """A CoinCap id, checked before it goes into a path or query (no path tricks, no stray characters)."""
    if not is_valid_id(value):
        raise ValueError(f"not a CoinCap id (lower-case slug like 'bitcoin'): {value!r}")
    return quote(value, safe="")


def _unix_ms(at: datetime) -> int:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("history start/end must be timezone-aware datetimes")
    return math.floor(at.timestamp() * 1000)


def _retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date); None if absent or bad."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _describe(exc: requests.RequestException, timeout: float) -> str:
    """A short name for a transport failure (requests' messages are long and repeat the URL)."""
    if isinstance(exc, requests.Timeout):
        return f"timeout ({timeout:g}s)"
    if isinstance(exc, requests.ConnectionError):
        return "connection error"
    return type(exc).__name__
