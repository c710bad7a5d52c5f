"""Ingest throughput: raw psycopg binary COPY vs the CoinPulse writer path, on one database, in one run.

    .venv/bin/python benchmarks/ingest.py [--rows 1000000] [--database-url URL]

Without --database-url a throwaway local TimescaleDB cluster is started (as the tests do) and removed.
Every variant writes the same N tick rows into an empty hypertable with the schema and indexes of
coinpulse.price_ticks. Printed: rows/s of each, and the ratio writer / raw (target: >= 0.85 on 1M rows).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from collector.buffer import RecordQueue
from collector.coincap.models import Tick
from collector.coincap.parse import parse_price_message
from collector.db.migrate import migrate
from collector.intake import Intake
from collector.metrics import Metrics
from collector.writer import TABLES, BatchWriter, copy_rows
from pgserver import benchmark_database

ASSETS = [f"asset-{i:03d}" for i in range(100)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_frames(rows: int, per_frame: int = 50) -> list[tuple[datetime, str]]:
    """WebSocket-shaped frames: each names ``per_frame`` assets; one frame per millisecond."""
    rng = random.Random(7)
    frames = []
    for i in range(rows // per_frame):
        start = (i * per_frame) % len(ASSETS)
        names = [ASSETS[(start + k) % len(ASSETS)] for k in range(per_frame)]
        frames.append((T0 + timedelta(milliseconds=i),
                       json.dumps({a: repr(round(rng.uniform(0.01, 90000.0), 8)) for a in names})))
    return frames


def frames_to_ticks(frames: list[tuple[datetime, str]]) -> list[list[Tick]]:
    return [parse_price_message(text, at).records for at, text in frames]


def reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE coinpulse.price_ticks")
        conn.execute("TRUNCATE coinpulse.assets CASCADE")


def count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM coinpulse.price_ticks").fetchone()
        return int(row[0]) if row else 0


def raw_copy(url: str, batches: list[list[Tick]], batch_rows: int) -> float:
    """Plain binary COPY, committed every ``batch_rows`` rows (the writer's batch size)."""
    spec = TABLES[Tick]
    flat = [t for batch in batches for t in batch]
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        with conn.cursor() as cur:
            for i in range(0, len(flat), batch_rows):
                copy_rows(cur, sql.Identifier("coinpulse", "price_ticks"), spec, flat[i:i + batch_rows])
                conn.commit()
        return time.perf_counter() - started


def writer_path(url: str, produce: Callable[[RecordQueue, Intake], None], batch_rows: int, expected: int) -> float:
    metrics = Metrics()
    queue = RecordQueue(200_000)
    intake = Intake(queue, metrics)
    writer = BatchWriter(url, queue, metrics, batch_size=batch_rows, batch_max_age=0.2)
    writer._connection()  # connect before the clock starts, as raw_copy does
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop, lambda: None))
    started = time.perf_counter()
    thread.start()
    produce(queue, intake)
    while metrics.registry.get_sample_value("coinpulse_rows_written_total", {"table": "price_ticks"}) != expected:
        time.sleep(0.001)
        if not thread.is_alive():
            raise RuntimeError("writer thread died")
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join()
    return elapsed


def submit(queue: RecordQueue, intake: Intake, records: list[Tick]) -> None:
    """Like a blocking producer: wait until the rows fit, then hand them over (so nothing overflows, nothing is
    counted or logged as dropped, and each tick is counted as received once)."""
    queue.wait_for_room(len(records))
    if not intake.submit(records):
        raise RuntimeError("the queue refused rows after wait_for_room: more than one producer?")


def feed_records(batches: list[list[Tick]]) -> Callable[[RecordQueue, Intake], None]:
    def produce(queue: RecordQueue, intake: Intake) -> None:
        for batch in batches:
            submit(queue, intake, batch)
    return produce


def feed_frames(frames: list[tuple[datetime, str]]) -> Callable[[RecordQueue, Intake], None]:
    def produce(queue: RecordQueue, intake: Intake) -> None:
        for at, text in frames:
            submit(queue, intake, parse_price_message(text, at).records)
    return produce


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=5000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with benchmark_database(args.database_url, "coinpulse_bench_ingest") as (url, _):
        migrate(url)
        print(f"generating {args.rows:,} ticks as WebSocket frames ...", flush=True)
        frames = make_frames(args.rows)
        batches = frames_to_ticks(frames)
        n = sum(len(b) for b in batches)
        results: dict[str, float] = {}
        for name, run in (
            ("raw COPY", lambda: raw_copy(url, batches, args.batch_rows)),
            ("writer (parse excluded)", lambda: writer_path(url, feed_records(batches), args.batch_rows, n)),
            ("writer (parse included)", lambda: writer_path(url, feed_frames(frames), args.batch_rows, n)),
        ):
            reset(url)
            seconds = run()
            assert count(url) == n, f"{name}: wrote {count(url)} rows, expected {n}"
            results[name] = n / seconds
            print(f"{name:26s} {n:>10,} rows in {seconds:6.2f} s = {n / seconds:>10,.0f} rows/s", flush=True)
        raw = results["raw COPY"]
        print(f"ratio writer (parse excluded) / raw: {results['writer (parse excluded)'] / raw:.2f}  (target >= 0.85)")
        print(f"ratio writer (parse included) / raw: {results['writer (parse included)'] / raw:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
