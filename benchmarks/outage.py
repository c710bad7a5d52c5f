"""A long database outage under load: `coinpulse run` streams 5,000 ticks/s while the database is cut.

    .venv/bin/python benchmarks/outage.py [--rate 5000] [--cut 120] [--assets 250] [--database-url URL]

The collector runs as a real subprocess against the fake CoinCap WebSocket (tests/fake_coincap.py), with the
database behind a TCP proxy (tests/tcp_proxy.py). Phases: ``--before`` s with the database up, ``--cut`` s
with the link cut (the collector spools), then restored: the spool drains while the stream goes on, then
``--after`` s more. Without --database-url a throwaway local TimescaleDB cluster is started and removed.

Printed: the collector's peak RSS (VmHWM) and its RSS over the cut (flat = bounded memory), the spool's peak
bytes and rows, the drain rate after the restore, and the loss and duplicate counts over every tick the
fake delivered (both must be 0; the exit status is 1 otherwise). Targets: RSS < 300 MB and flat during the
cut, drain >= 50,000 rows/s. The drain is bound by the server's COPY work, so the same number of rows of the
same shape is then COPYed raw (psycopg binary COPY, batches of 5,000, into price_ticks under other asset
ids) on the same database, and the drain rate is printed as a ratio of that: on a shared machine the
absolute figure moves with the load, the ratio much less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from psycopg import sql

from collector.coincap.models import Tick
from collector.db.migrate import migrate
from collector.writer import TABLES, copy_rows
from collector_proc import CollectorProcess
from fake_coincap import DEFAULT_KEY, FakeCoinCap
from pgserver import benchmark_database
from tcp_proxy import TcpProxy

MB = 1024 * 1024


class Feed:
    """``rate`` ticks/s as frames of ``len(assets)`` prices; frame k, asset j costs ``k + 1 + j/10000``."""

    def __init__(self, fake: FakeCoinCap, assets: list[str], rate: float) -> None:
        self.fake, self.assets = fake, assets
        self.interval = len(assets) / rate
        self.delivered: list[int] = []  # frame numbers a client got
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        k, next_at = 0, time.monotonic()
        while not self._stop.is_set():
            frame = json.dumps({a: f"{k + 1}.{j:04d}" for j, a in enumerate(self.assets)})
            if self.fake.ws_send(frame) == 1:
                self.delivered.append(k)
            k += 1
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Sampler:
    """Every ``every`` s: the collector's RSS and spool size, kept with their monotonic time."""

    def __init__(self, proc: CollectorProcess, every: float = 0.5) -> None:
        self.proc, self.every = proc, every
        self.samples: list[tuple[float, float, float, float]] = []  # (t, rss MB, spool bytes, spool rows)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                m = self.proc.metrics()
            except OSError:
                continue
            self.samples.append((time.monotonic(), status(self.proc)["VmRSS"] / 1024,
                                 m.get(("coinpulse_spool_bytes", ()), 0.0), m.get(("coinpulse_spool_rows", ()), 0.0)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def between(self, t0: float, t1: float) -> list[tuple[float, float, float, float]]:
        return [s for s in self.samples if t0 <= s[0] <= t1]


def status(proc: CollectorProcess) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) ... of the collector, in kB."""
    assert proc.proc is not None
    out = {}
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[name] = int(value.split()[0])
    return out


def wait(check: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def audit(url: str, feed: Feed) -> tuple[int, int, int]:
    """(ticks expected, missing, duplicates) over every frame the fake delivered, from the prices alone."""
    n = len(feed.assets)
    with psycopg.connect(url) as conn:
        per_frame = {int(k): int(c) for k, c in conn.execute(
            "SELECT floor(price_usd)::bigint - 1, count(*) FROM coinpulse.price_ticks WHERE source = 'ws' GROUP BY 1")}
        row: Any = conn.execute(
            "SELECT count(*) - count(DISTINCT (asset_id, price_usd)) FROM coinpulse.price_ticks WHERE source = 'ws'"
        ).fetchone()
    delivered = set(feed.delivered)
    missing = sum(max(0, n - per_frame.get(k, 0)) for k in delivered)
    missing += sum(c for k, c in per_frame.items() if k not in delivered)  # never delivered: counted as wrong
    return n * len(delivered), missing, int(row[0])


def raw_copy_rate(url: str, n_assets: int, rows: int) -> float:
    """Rows/s of plain binary COPY (batches of 5,000) of ``rows`` ticks shaped like the feed's into
    coinpulse.price_ticks itself (same indexes, triggers and policies), an hour back, under other asset ids."""
    start = datetime.fromtimestamp(time.time() - 3600.0, UTC)
    assets = [f"rawcopy-{j:03d}" for j in range(n_assets)]
    ticks = [Tick(start + timedelta(milliseconds=50 * (i // n_assets)), assets[i % n_assets], 1.0 + i / 1e4, "ws")
             for i in range(rows)]
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        started = time.perf_counter()
        for i in range(0, rows, 5000):
            copy_rows(cur, sql.Identifier("coinpulse", "price_ticks"), TABLES[Tick], ticks[i:i + 5000])
            conn.commit()
        return rows / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=5000, help="ticks per second (default 5000)")
    parser.add_argument("--cut", type=float, default=120, help="seconds the database is cut (default 120)")
    parser.add_argument("--assets", type=int, default=250, help="assets per frame (default 250: 20 frames/s)")
    parser.add_argument("--before", type=float, default=10, help="seconds before the cut (default 10)")
    parser.add_argument("--after", type=float, default=5, help="seconds after the drain (default 5)")
    parser.add_argument("--pause-policies", action="store_true",
                        help="unschedule TimescaleDB's refresh/columnstore/retention jobs during the run (to see "
                             "what they cost the drain on a small machine)")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with benchmark_database(args.database_url, "coinpulse_bench_outage") as (url, _):
        tmp = Path(tempfile.mkdtemp(prefix="coinpulse-outage-"))
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE coinpulse.price_ticks")
            conn.execute("SELECT alter_job(job_id, scheduled => %s) FROM timescaledb_information.jobs "
                         "WHERE job_id >= 1000", (not args.pause_policies,))
            port: Any = conn.execute("SELECT inet_server_port()").fetchone()
            host: Any = conn.execute("SELECT coalesce(host(inet_server_addr()), '127.0.0.1')").fetchone()
        return run(args, url, str(host[0]), int(port[0]), tmp)


def run(args: argparse.Namespace, url: str, host: str, port: int, tmp: Path) -> int:
    assets = [f"bench-{j:03d}" for j in range(args.assets)]
    with FakeCoinCap() as fake, TcpProxy(host, port) as proxy:
        proc = CollectorProcess({
            "COINPULSE_DATABASE_URL": proxy.url(url), "COINCAP_API_KEY": DEFAULT_KEY, "COINPULSE_FEED": "ws",
            "COINCAP_WS_URL": fake.ws_url, "COINCAP_REST_URL": fake.rest_url, "COINPULSE_ASSETS": ",".join(assets),
            "COINPULSE_CREDIT_BUDGET": "0", "COINPULSE_BACKFILL": "off", "COINPULSE_WS_WATCHDOG": "30",
        }, tmp).start()
        feed, sampler = Feed(fake, assets, args.rate), Sampler(proc)
        try:
            wait(lambda: fake.ws_open == 1 and proc.metric("coinpulse_database_up") == 1, 60, "the collector")
            sampler.start()
            feed.start()
            print(f"streaming {args.rate:,.0f} ticks/s ({len(assets)} assets x {args.rate / len(assets):.0f} "
                  f"frames/s); database up for {args.before:.0f}s", flush=True)
            time.sleep(args.before)
            rss_before = status(proc)["VmRSS"] / 1024
            proxy.cut()
            cut_at = time.monotonic()
            print(f"database cut for {args.cut:.0f}s (RSS now {rss_before:.0f} MB)", flush=True)
            while time.monotonic() - cut_at < args.cut:
                time.sleep(min(10.0, args.cut - (time.monotonic() - cut_at)))
                spool_mb, spool_rows = proc.metric("coinpulse_spool_bytes") / MB, proc.metric("coinpulse_spool_rows")
                print(f"  +{time.monotonic() - cut_at:4.0f}s  RSS {status(proc)['VmRSS'] / 1024:6.0f} MB  "
                      f"spool {spool_mb:7.1f} MB {spool_rows:>10,.0f} rows", flush=True)
            restored_at = time.monotonic()
            proxy.restore()
            # The writer retries on its backoff (at most 5 s apart): the drain starts when it is back.
            retry_s = wait(lambda: proc.metric("coinpulse_database_up") == 1, 60, "the writer to reconnect")
            backlog = proc.metric("coinpulse_spool_rows")
            load_at_drain = os.getloadavg()
            drained_0 = proc.metric("coinpulse_spool_rows_drained_total")
            written_0 = proc.metric("coinpulse_rows_written_total", table="price_ticks")
            drain_s = wait(lambda: proc.metric("coinpulse_spool_rows") == 0 and proc.metric(
                "coinpulse_spool_bytes") == 0, 600 + args.cut, "the spool to drain")
            drained = proc.metric("coinpulse_spool_rows_drained_total") - drained_0
            written = proc.metric("coinpulse_rows_written_total", table="price_ticks") - written_0
            print(f"restored: reconnected after {retry_s:.1f}s, {drained:,.0f} spooled rows drained in {drain_s:.1f}s",
                  flush=True)
            time.sleep(args.after)
            feed.stop()
            wait(lambda: proc.metric("coinpulse_ticks_received_total", source="ws") == len(feed.delivered) * len(
                assets), 60, "every delivered frame to be received")
            wait(lambda: proc.metric("coinpulse_rows_waiting") == 0, 60, "the queue to be written")
            peak_kb = status(proc)["VmHWM"]
            dropped = sum(v for (name, _), v in proc.metrics().items() if name == "coinpulse_rows_dropped_total")
        finally:
            feed.stop()
            sampler.stop()
            code = proc.stop(timeout=60)
    expected, missing, duplicates = audit(url, feed)
    raw = raw_copy_rate(url, len(assets), int(min(max(drained, 50_000), 300_000)))  # after the audit
    during = sampler.between(cut_at, restored_at)
    rss = [s[1] for s in during]
    spool_peak = max((s[2] for s in sampler.samples), default=0.0)
    third = max(1, len(rss) // 3)
    early, late = sum(rss[:third]) / third, sum(rss[-third:]) / third
    print()
    print(f"ticks delivered by the fake       {expected:>12,}")
    print(f"missing from price_ticks          {missing:>12,}   (must be 0)")
    print(f"stored more than once             {duplicates:>12,}   (must be 0)")
    print(f"rows dropped (any reason)         {dropped:>12,.0f}")
    print(f"collector peak RSS (VmHWM)        {peak_kb / 1024:>12,.0f} MB   (target < 300 MB)")
    print(f"RSS during the cut: first third   {early:>12,.0f} MB, last third {late:,.0f} MB, "
          f"max {max(rss, default=0):,.0f} MB  (growth {late - early:+.0f} MB)")
    print(f"spool when the drain began        {backlog:>12,.0f} rows, peak {spool_peak / MB:,.1f} MB "
          f"({spool_peak / max(backlog, 1):.1f} bytes/row)")
    rate = drained / drain_s if drain_s else float("inf")
    print(f"drain after restore               {rate:>12,.0f} spooled rows/s over {drain_s:.1f}s"
          f"  (target >= 50,000; ratio {rate / 50_000:.2f}); all rows incl. live: {written / drain_s:,.0f}/s")
    print(f"raw binary COPY, same database    {raw:>12,.0f} rows/s just after; drain / raw COPY = {rate / raw:.2f}"
          f" (with live rows: {written / drain_s / raw:.2f})")
    print(f"load average (1, 5, 15 min)       {' '.join(f'{x:.2f}' for x in load_at_drain)} when the drain began, "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print(f"collector exit code               {code:>12}")
    ok = missing == 0 and duplicates == 0 and code == 0
    print("RESULT:", "no loss, no duplicates" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
