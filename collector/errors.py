"""The project's exception tree.

Every error a user can cause (bad configuration, bad key, unreachable database, missing extension)
is a ``CoinPulseError`` whose message is one line saying what is wrong and what to do. The CLI prints
that line and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations

__all__ = [
    "CoinCapAuthError",
    "CoinCapError",
    "CoinCapNotFound",
    "CoinCapRateLimited",
    "CoinCapUnavailable",
    "CoinPulseError",
    "ConfigError",
    "DatabaseError",
    "ExtensionMissing",
    "NoWebSocketAccess",
    "SchemaNotMigrated",
]


class CoinPulseError(Exception):
    """Base of every error CoinPulse raises on purpose."""


class ConfigError(CoinPulseError):
    """A setting is missing or invalid."""


class DatabaseError(CoinPulseError):
    """The database cannot be reached or refused an operation."""


class ExtensionMissing(DatabaseError):
    """The timescaledb extension is not installed or not preloaded on the server."""


class SchemaNotMigrated(DatabaseError):
    """The database has no CoinPulse schema, or an older one: run `coinpulse migrate`."""


class CoinCapError(CoinPulseError):
    """The CoinCap API answered with an error, or could not be reached."""


class CoinCapAuthError(CoinCapError):
    """401/403: the API key is missing, wrong, or its plan does not allow the call."""


class CoinCapNotFound(CoinCapError):
    """404: unknown asset or exchange slug."""


class CoinCapRateLimited(CoinCapError):
    """429 answered more often than the retry policy allows."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CoinCapUnavailable(CoinCapError):
    """Network failure or 5xx after retries."""


class NoWebSocketAccess(CoinCapAuthError):
    """The WebSocket answered ``Unauthorized``: the key's plan has no streaming; poll REST instead."""
