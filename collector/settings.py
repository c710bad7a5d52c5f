"""The one Settings object, read from the environment (and from files named by ``*_FILE`` variables).

Built once, in ``cli.main``; everything else receives the values it needs.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from collector.errors import ConfigError
from collector.sharding import replica_ordinal

__all__ = ["Settings", "load_settings", "redact_url"]

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")

# Secrets may come from a file named by <VAR>_FILE (Docker/Kubernetes secrets), never from code.
_FILE_VARS = {"COINCAP_API_KEY": "coincap_api_key", "COINPULSE_DATABASE_URL": "database_url"}


class Settings(BaseSettings):
    """Every knob of CoinPulse. The environment variable names are in README.md, "Configuration"."""

    model_config = SettingsConfigDict(env_prefix="COINPULSE_", extra="ignore", frozen=True)

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://postgres@localhost:5432/coinpulse"),
        description="libpq URL of the TimescaleDB database",
    )
    coincap_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("COINCAP_API_KEY"), description="CoinCap API key"
    )
    coincap_rest_url: str = Field(
        default="https://rest.coincap.io/v3", validation_alias=AliasChoices("COINCAP_REST_URL")
    )
    coincap_ws_url: str = Field(default="wss://wss.coincap.io", validation_alias=AliasChoices("COINCAP_WS_URL"))
    feed: Literal["auto", "ws", "rest", "demo"] = "auto"
    assets: tuple[str, ...] | Literal["ALL"] = "ALL"
    rest_asset_limit: int = Field(default=100, ge=1, le=2000)
    metrics_host: str = "0.0.0.0"  # noqa: S104 - the collector runs in a container; see README
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    spool_dir: Path = Path(".coinpulse/spool")
    # On-disk spool for database outages (collector/spool.py): at the cap the oldest rows are dropped.
    spool_max_bytes: int = Field(default=1024**3, ge=1024**2, description="spool size cap in bytes")
    # Spooled rows per drain transaction (collector/writer.py): live rows wait at most one such transaction.
    spool_drain_rows: int = Field(default=50_000, ge=100, le=1_000_000,
                                  description="spooled rows per drain transaction")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    batch_max_age: float = Field(default=0.2, gt=0, le=60)
    queue_max_rows: int = Field(default=200_000, ge=100)
    shutdown_grace: float = Field(default=10.0, gt=0)

    http_timeout: float = Field(default=10.0, gt=0)
    ws_watchdog: float = Field(default=30.0, gt=0)
    rest_price_interval: float = Field(default=30.0, ge=1)
    # CoinCap credits per month that polling and the stream may spend (collector/budget.py); 0 = no limit.
    # The default is the free plan's 4,000: set your plan's figure.
    credit_budget: int = Field(default=4000, ge=0)
    snapshot_assets_interval: float = Field(default=300.0, ge=1)
    snapshot_exchanges_interval: float = Field(default=900.0, ge=1)
    snapshot_markets_interval: float = Field(default=900.0, ge=1)
    snapshot_rates_interval: float = Field(default=900.0, ge=1)
    markets_limit: int = Field(default=200, ge=1, le=2000)
    stale_after: float = Field(default=120.0, gt=0)

    demo_seed: int = 42
    demo_tick_interval: float = Field(default=0.25, gt=0)
    demo_snapshot_interval: float = Field(default=10.0, gt=0)

    # Raw data lifecycle, applied by `coinpulse migrate` (collector/db/lifecycle.py); rollups are kept.
    retention_days: int = Field(default=90, ge=0, le=36500, description="days raw rows are kept; 0 = forever")
    columnstore_after_days: int = Field(default=7, ge=1, le=36500, description="age at which raw chunks are compressed")

    # History imports (collector/history.py): CoinCap's per-interval limits are undocumented, so configurable.
    history_intervals: str = Field(default="m1:1d,m5:7d,h1:90d,d1",
                                   description="history interval by age, finest first: INTERVAL:MAX_AGE,...,INTERVAL")
    history_points_per_request: int = Field(default=500, ge=1, le=10000,
                                            description="intervals spanned by one history request at most")

    # Gaps and backfill (collector/gaps.py): stream outages and restarts recorded in ingest_gaps, then filled.
    backfill: Literal["auto", "on", "off"] = Field(
        default="auto", description="fill recorded gaps from history: auto = on for live feeds, off for demo")
    backfill_delay: float = Field(default=120.0, ge=0, description="seconds after a gap ends before it is filled")
    gap_min_seconds: float = Field(default=0.0, ge=0, description="shorter intervals without data are not recorded")
    # Per-asset gap starts (GapTracker): an asset's gap starts at its own last tick, at most this many seconds
    # before the stream's last message (0: every asset's gap starts at the stream's last message).
    gap_asset_lookback: float = Field(default=900.0, ge=0, le=86_400,
                                      description="seconds an asset's gap may start before the stream's last message")
    # Share of the credits the stream leaves that gap backfills may spend (collector/budget.py), in any 24 hours.
    backfill_share: float = Field(default=0.2, ge=0, lt=1,
                                  description="share of the credit budget (after the stream) kept for gap backfills")

    # Scale-out (collector/sharding.py, collector/leader.py): replicas split the assets; one runs snapshots.
    replicas: int = Field(default=1, ge=1, le=1000, description="collector replicas splitting the assets")
    replica_index: int = Field(default=None, validate_default=True,  # None: from the hostname's ordinal
                               description="this replica's index, 0 … COINPULSE_REPLICAS-1")

    @field_validator("assets", mode="before")
    @classmethod
    def _parse_assets(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.upper() == "ALL" or not text:
                return "ALL"
            items = tuple(part.strip().lower() for part in text.split(",") if part.strip())
            bad = [item for item in items if not SLUG.match(item)]
            if bad:
                raise ValueError(f"not CoinCap asset ids (lower-case slugs like 'bitcoin'): {', '.join(bad)}")
            return items
        return value

    @field_validator("replica_index", mode="before")
    @classmethod
    def _replica_index(cls, value: Any, info: ValidationInfo) -> Any:
        replicas = info.data.get("replicas", 1)
        given = ""
        if value is None or (isinstance(value, str) and not value.strip()):
            if replicas == 1:
                return 0
            hostname = os.environ.get("HOSTNAME") or socket.gethostname()
            try:
                value = replica_ordinal(hostname)
            except ValueError as exc:
                raise ValueError(f"not set, and {exc}; set it to 0 … {replicas - 1}") from None
            given = f" (from the hostname {hostname!r})"
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise ValueError("must be an integer") from None
        if not 0 <= index < replicas:
            raise ValueError(f"must be 0 … {replicas - 1} with COINPULSE_REPLICAS={replicas}{given}")
        return index

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, value: SecretStr) -> SecretStr:
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a libpq URL starting with postgresql://")
        return value

    @field_validator("coincap_rest_url", "coincap_ws_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
            raise ValueError("must be an absolute http(s):// or ws(s):// URL")
        return value.rstrip("/")

    @property
    def resolved_feed(self) -> Literal["ws", "rest", "demo"]:
        """``auto`` means WebSocket with a key, the demo feed without one."""
        if self.feed == "auto":
            return "ws" if self.coincap_api_key else "demo"
        return self.feed

    def require_api_key(self, why: str) -> str:
        if self.coincap_api_key is None or not self.coincap_api_key.get_secret_value():
            raise ConfigError(f"COINCAP_API_KEY is not set but {why}; get a key at https://pro.coincap.io")
        return self.coincap_api_key.get_secret_value()


def _env_name(field: str) -> str:
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"COINPULSE_{field.upper()}"


def _format(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        name = _env_name(field) if field in Settings.model_fields else field
        msg = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        shown = "" if field in _FILE_VARS.values() or not isinstance(given, str) else f" (got {given!r})"
        lines.append(f"{name}: {msg}{shown}")
    return "; ".join(lines)


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build Settings from ``environ`` (default: the process environment) or raise ConfigError."""
    env = dict(os.environ if environ is None else environ)
    overrides: dict[str, Any] = {}
    for var, field in _FILE_VARS.items():
        path = env.get(f"{var}_FILE")
        if path:
            try:
                overrides[field] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{var}_FILE: cannot read {path}: {exc.strerror}") from None
    try:
        if environ is None:
            return Settings(**overrides)
        # Explicit mapping (tests): pass values as init kwargs by their env names.
        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(env)
            return Settings(**overrides)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    except ValidationError as exc:
        raise ConfigError(_format(exc)) from None


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
