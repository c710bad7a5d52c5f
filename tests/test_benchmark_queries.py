"""benchmarks/queries.py end to end on a small data set, so that the command the README gives keeps working.

The figures are for on-demand runs on a full year (README, "Performance"); here only what the script checks and
reports: it loads, each rollup query returns as many rows as the same query over the raw ticks (the script
asserts that), and it prints, per query, the rows, the ratio, what the rollup sorted and the target verdict.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.full_edition
def test_candle_and_dashboard_benchmark_runs_on_a_small_data_set(make_database: Callable[[], str]) -> None:
    url = make_database()
    done = subprocess.run(
        [sys.executable, "benchmarks/queries.py", "--database-url", url, "--assets", "3", "--days", "9", "--runs",
         "1", "--dashboards"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "loading 7,776 ticks: 3 assets" in out  # 9 days of 5-minute ticks
    rows = {m["title"].strip(): int(m["rows"]) for m in re.finditer(
        r"^(?P<title>(?:1y daily candles, by (?:asset|time)|30d hourly candles, 1 asset)) +(?P<rows>\d+) \|"
        r" +[\d.]+ ms +[\d.]+ ms \| +\d+ ms +\d+ ms \| +\d+x$", out, re.MULTILINE)}
    # 9 days x 3 assets of daily candles; 9 days x 24 hours for one asset (the 30-day window holds all 9 days).
    assert rows == {"1y daily candles, by asset": 27, "1y daily candles, by time": 27,
                    "30d hourly candles, 1 asset": 216}
    assert len(re.findall(r"^ +rollup: (?:sorts [\d,]+ rows|no sort \(read in the order asked for\))$", out,
                          re.MULTILINE)) == 3
    assert len(re.findall(r"^ +target rollup < 20 ms and >= 500x: (?:met|NOT MET)$", out, re.MULTILINE)) == 2
    assert re.search(r"^slowest: .+ [\d.]+ ms; target every panel < 50 ms: (?:met|NOT MET)$", out, re.MULTILINE)
