"""Where the migration scripts and rollup SQL files are: in the wheel, or in a source checkout."""

from __future__ import annotations

from pathlib import Path

__all__ = ["continuous_aggregates_dir", "migrations_dir"]

_PACKAGE = Path(__file__).resolve().parents[1]


def _find(name: str) -> Path:
    for candidate in (_PACKAGE / "_resources" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"CoinPulse is installed without its {name}/ directory (looked beside {_PACKAGE})")


def migrations_dir() -> Path:
    return _find("migrations")


def continuous_aggregates_dir() -> Path:
    return _find("continuous_aggregates")
