"""Database outages against the real TimescaleDB, through a TCP proxy that cuts the link (tests/tcp_proxy.py).

First the writer in-process (spooling, draining in order, live rows flowing during a drain, shutdown, rollups
refreshed after a drain), then `coinpulse run` as a real subprocess against the fake CoinCap's WebSocket: a
cut in the middle of a stream, a restart of the database server, SIGKILL mid-write and restart, SIGTERM under
load with the database away, and SIGTERM while the writer hangs on a silent (frozen) database link.

Exactly once: the feed below sends frames whose prices are unique (frame k, asset j: ``k + 1 + j/10000``), so
every tick the fake delivered can be looked up in ``price_ticks`` by (asset, price) and counted.

Outage length: the issue asks for outages of at least 60 s. ``COINPULSE_TEST_OUTAGE_SECONDS`` sets the cut
(default 10 s, to keep the suite fast). What happens does not depend on the length once it exceeds the
writer's backoff cap (5 s; reached after 0.5 + 1 + 2 + 4 s): from then on every retry is the same, every
batch goes to the spool the same way, and memory is bounded by the queue whatever the length. Run it with
``COINPULSE_TEST_OUTAGE_SECONDS=60`` for the literal case; ``benchmarks/outage.py`` cuts for 120 s at 5,000
ticks/s.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector.backoff import Backoff
from collector.buffer import RecordQueue
from collector.coincap.models import Record, Tick
from collector.metrics import Metrics
from collector.spool import HEADER, MAGIC, Spool, decode_payload
from collector.writer import BatchWriter
from collector_proc import CollectorProcess
from fake_coincap import DEFAULT_KEY, FakeCoinCap
from pgserver import Server
from records import T0, rate_snapshot, ticks
from tcp_proxy import TcpProxy

OUTAGE = float(os.environ.get("COINPULSE_TEST_OUTAGE_SECONDS", "10"))
ASSETS = tuple(f"coin-{j:02d}" for j in range(20))
Key = tuple[str, float]


# -- helpers -------------------------------------------------------------------------------------------------------


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def stored(url: str, source: str = "ws") -> Counter[Key]:
    with psycopg.connect(url) as conn:
        return Counter((str(r[0]), float(r[1])) for r in conn.execute(
            "SELECT asset_id, price_usd FROM coinpulse.price_ticks WHERE source = %s", (source,)))


def tick_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row: Any = conn.execute("SELECT count(*) FROM coinpulse.price_ticks").fetchone()
        return int(row[0])


def assert_exactly_once(got: Counter[Key], expected: Counter[Key]) -> None:
    missing, extra = expected - got, got - expected
    twice = {k: n for k, n in got.items() if n > 1}
    assert not missing and not extra and not twice, (
        f"{len(missing)} missing (e.g. {list(missing)[:3]}), {len(extra)} unexpected (e.g. {list(extra)[:3]}), "
        f"{len(twice)} stored more than once (e.g. {list(twice.items())[:3]})")


def spool_contents(directory: Path) -> list[Record]:
    """Every intact record in a spool directory, read independently of collector.spool's reader (header,
    CRC-32, payload), stopping at a torn or corrupt record as a restarted collector must."""
    out: list[Record] = []
    for seg in sorted(directory.glob("*.seg")):
        data, off = seg.read_bytes(), 0
        while off + HEADER.size <= len(data):
            magic, length, _, _, _, crc = HEADER.unpack_from(data, off)
            payload = data[off + HEADER.size:off + HEADER.size + length]
            if magic != MAGIC or len(payload) != length or \
                    zlib.crc32(payload, zlib.crc32(data[off + 4:off + HEADER.size - 4])) != crc:
                break
            ticks, others = decode_payload(payload)
            out.extend(ticks.ticks() if ticks is not None else ())
            out.extend(others)
            off += HEADER.size + length
    return out


class Feed:
    """Sends price frames through the fake's WebSocket at a steady rate; remembers every frame a client got."""

    def __init__(self, fake: FakeCoinCap, frames_per_second: float, assets: tuple[str, ...] = ASSETS) -> None:
        self.fake = fake
        self.interval = 1.0 / frames_per_second
        self.assets = assets
        self.delivered: list[dict[str, str]] = []  # in the order sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)
        self._k = 0

    def frame(self, k: int) -> dict[str, str]:
        return {a: f"{k + 1}.{j:04d}" for j, a in enumerate(self.assets)}

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            frame = self.frame(self._k)
            self._k += 1
            if self.fake.ws_send(json.dumps(frame)) == 1:
                self.delivered.append(frame)
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> Feed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(10)

    def expected(self, frames: list[dict[str, str]] | None = None) -> Counter[Key]:
        return Counter((a, float(p)) for f in (self.delivered if frames is None else frames) for a, p in f.items())

    @property
    def ticks(self) -> int:
        return len(self.delivered) * len(self.assets)


@pytest.fixture
def fake() -> Iterator[FakeCoinCap]:
    with FakeCoinCap() as f:
        yield f


@pytest.fixture
def proxy(pg_server: Server) -> Iterator[TcpProxy]:
    assert pg_server.admin_url is not None
    with psycopg.connect(pg_server.admin_url) as conn:
        port: Any = conn.execute("SELECT inet_server_port()").fetchone()
    with TcpProxy("127.0.0.1", int(port[0])) as p:
        yield p


def collector(db_url: str, fake: FakeCoinCap, tmp: Path, **env: str) -> CollectorProcess:
    """`coinpulse run` with its log in a directory of its own and the spool in ``tmp/spool``."""
    logs = tmp / f"run{len(list(tmp.glob('run*')))}"
    logs.mkdir()
    return CollectorProcess({
        "COINPULSE_SPOOL_DIR": str(tmp / "spool"),
        "COINPULSE_DATABASE_URL": db_url, "COINCAP_API_KEY": DEFAULT_KEY, "COINPULSE_FEED": "ws",
        "COINCAP_WS_URL": fake.ws_url, "COINCAP_REST_URL": fake.rest_url, "COINPULSE_ASSETS": ",".join(ASSETS),
        "COINPULSE_CREDIT_BUDGET": "0", "COINPULSE_BACKFILL": "off", "COINPULSE_BATCH_MAX_AGE": "0.1",
        "COINPULSE_SPOOL_MAX_BYTES": str(1 << 20),  # 64 KiB segments: a short outage still spans several
        **env}, logs)


def received(proc: CollectorProcess) -> float:
    return proc.metric("coinpulse_ticks_received_total", source="ws")


def dropped_total(proc: CollectorProcess) -> float:
    return sum(v for (name, _), v in proc.metrics().items() if name == "coinpulse_rows_dropped_total")


# -- the writer in-process -----------------------------------------------------------------------------------------


def run_writer(writer: BatchWriter, stop: threading.Event, deadline: list[float | None]) -> threading.Thread:
    thread = threading.Thread(target=writer.run, args=(stop, lambda: deadline[0]), daemon=True)
    thread.start()
    return thread


def test_writer_spools_while_cut_and_drains_in_order_once_restored(db_url: str, proxy: TcpProxy,
                                                                   tmp_path: Path) -> None:
    metrics = Metrics()
    spool = Spool(tmp_path / "spool", max_bytes=1 << 24, segment_bytes=4096, metrics=metrics)
    queue = RecordQueue(10_000, overflow=spool.append)
    writer = BatchWriter(proxy.url(db_url), queue, metrics, batch_size=200, batch_max_age=0.02, spool=spool,
                         backoff=Backoff(initial=0.1, cap=0.3))
    stop, deadline = threading.Event(), [None]
    thread = run_writer(writer, stop, deadline)
    first = ticks(300)
    queue.put(first)
    wait_until(lambda: tick_count(db_url) == 300, 20, "the first rows")
    proxy.cut()
    during = ticks(3000, start=T0.replace(hour=13))
    for i in range(0, 3000, 100):
        queue.put(during[i:i + 100])
    wait_until(lambda: spool.rows == 3000, 20, "every row of the outage in the spool")
    assert len(list((tmp_path / "spool").glob("*.seg"))) > 1
    assert tick_count(db_url) == 300 and writer.database_down and not writer.connected
    proxy.restore()
    wait_until(lambda: spool.empty, 30, "the spool to drain")
    stop.set()
    thread.join(20)
    assert not thread.is_alive()
    with psycopg.connect(db_url) as conn:
        rows = [(r[0], r[1], r[2]) for r in conn.execute(
            "SELECT time, asset_id, price_usd FROM coinpulse.price_ticks ORDER BY time")]
    assert rows == [(t.time, t.asset_id, t.price_usd) for t in first + during]  # all of them, once each
    assert metrics.registry.get_sample_value("coinpulse_spool_rows_spooled_total") == 3000
    assert metrics.registry.get_sample_value("coinpulse_spool_rows_drained_total") == 3000
    assert metrics.registry.get_sample_value("coinpulse_spool_bytes") == 0
    assert list((tmp_path / "spool").glob("*.seg")) == []


def test_live_rows_keep_flowing_while_the_spool_drains(db_url: str, tmp_path: Path) -> None:
    """A spool left by an earlier run is drained in spool order; a live batch queued meanwhile is committed
    before the drain is over, not after it."""
    spool = Spool(tmp_path, max_bytes=1 << 26)
    for i in range(100):  # 20,000 rows from "an earlier run"
        spool.append(ticks(200, start=T0.replace(day=2) + i * (T0.replace(second=50) - T0)))
    spool.close()
    spool = Spool(tmp_path, max_bytes=1 << 26)
    commits: list[tuple[dict[str, int], int]] = []
    queue = RecordQueue(1000, overflow=spool.append)
    writer = BatchWriter(db_url, queue, Metrics(), batch_size=200, batch_max_age=0.01, spool=spool,
                         drain_rows=1000, on_committed=lambda written: commits.append((written, spool.rows)))
    queue.put([rate_snapshot()])  # the live batch: the only one that writes rate_snapshots
    stop, deadline = threading.Event(), [None]
    thread = run_writer(writer, stop, deadline)
    wait_until(lambda: spool.empty, 60, "the spool to drain")
    stop.set()
    thread.join(20)
    (live,) = [left for written, left in commits if "rate_snapshots" in written]
    assert live > 0  # committed while spooled rows were still waiting
    assert tick_count(db_url) == 20_000
    drained = [left for written, left in commits if "price_ticks" in written]
    assert drained == sorted(drained, reverse=True)  # the backlog only shrinks, batch by batch


def test_rows_dropped_at_the_spool_cap_during_an_outage_become_gaps_per_asset(db_url: str, proxy: TcpProxy,
                                                                             tmp_path: Path) -> None:
    """A spool with a tiny cap under an outage drops its oldest rows; once the database is back, ingest_gaps
    holds, per asset, the time range that was dropped (reason spool_cap), for the gap worker to backfill."""
    metrics = Metrics()
    spool = Spool(tmp_path / "spool", max_bytes=16384, segment_bytes=2048, metrics=metrics)
    queue = RecordQueue(10_000, overflow=spool.append)
    woken: list[bool] = []
    writer = BatchWriter(proxy.url(db_url), queue, metrics, batch_size=200, batch_max_age=0.02, spool=spool,
                         backoff=Backoff(initial=0.1, cap=0.3), on_gaps=lambda: woken.append(True),
                         refresh_rollups=False)
    spool.on_drop = writer.note_dropped  # as collector/app.py wires them
    assets = ("bitcoin", "ethereum", "solana")
    sent = [Tick(T0 + timedelta(seconds=k), asset, float(k * 100 + j + 1), "ws")
            for k in range(2000) for j, asset in enumerate(assets)]
    proxy.cut()
    stop, deadline = threading.Event(), [None]
    thread = run_writer(writer, stop, deadline)
    for i in range(0, len(sent), 60):
        queue.put(sent[i:i + 60])

    def lost() -> float:
        return metrics.registry.get_sample_value("coinpulse_rows_dropped_total", {"reason": "spool_cap"}) or 0.0

    wait_until(lambda: len(queue) == 0 and spool.rows + lost() == len(sent), 30, "every row spooled or dropped")
    assert lost() > 0 and writer.database_down
    proxy.restore()
    wait_until(lambda: spool.empty and bool(woken), 30, "the spool to drain and the gaps to be recorded")
    stop.set()
    thread.join(20)
    assert not thread.is_alive()
    with psycopg.connect(db_url) as conn:
        kept = {(str(r[0]), r[1]) for r in conn.execute("SELECT asset_id, time FROM coinpulse.price_ticks")}
        gaps = {str(r[0]): (r[1], r[2], str(r[3])) for r in conn.execute(
            "SELECT asset_id, gap_start, gap_end, reason FROM coinpulse.ingest_gaps WHERE status = 'open'")}
    assert len(kept) + lost() == len(sent)
    assert set(gaps) == set(assets)  # one gap per asset: the drops of one outage merged
    for asset in assets:
        start, end, reason = gaps[asset]
        missing = [t.time for t in sent if t.asset_id == asset and (asset, t.time) not in kept]
        assert missing and reason == "spool_cap"
        assert (start, end) == (min(missing), max(missing) + timedelta(microseconds=1))
        assert not [t for a, t in kept if a == asset and start <= t < end]  # nothing stored inside the gap
    assert woken == [True]


def test_shutdown_with_the_database_away_spools_everything_queued(db_url: str, proxy: TcpProxy,
                                                                  tmp_path: Path) -> None:
    metrics = Metrics()
    spool = Spool(tmp_path, max_bytes=1 << 24, metrics=metrics)
    queue = RecordQueue(100_000, overflow=spool.append)
    writer = BatchWriter(proxy.url(db_url), queue, metrics, batch_size=500, batch_max_age=0.05, spool=spool)
    proxy.cut()
    stop, deadline = threading.Event(), [None]
    thread = run_writer(writer, stop, deadline)
    wait_until(lambda: writer.database_down, 20, "the writer to notice the database is away")
    rows = ticks(20_000)
    for i in range(0, len(rows), 1000):
        queue.put(rows[i:i + 1000])
    deadline[0] = time.monotonic() + 30
    stop.set()
    thread.join(30)
    assert not thread.is_alive() and len(queue) == 0
    spool.close()
    assert sorted(spool_contents(tmp_path)) == sorted(rows)
    proxy.restore()
    assert tick_count(db_url) == 0
    again = Spool(tmp_path, max_bytes=1 << 24)  # the next run drains it
    writer2 = BatchWriter(db_url, RecordQueue(10), Metrics(), spool=again)
    stop2 = threading.Event()
    thread2 = run_writer(writer2, stop2, [None])
    wait_until(lambda: again.empty, 30, "the next run to drain the spool")
    stop2.set()
    thread2.join(20)
    assert tick_count(db_url) == 20_000


def candle_ticks(url: str, asset: str, bucket: datetime) -> int:
    with psycopg.connect(url) as conn:
        row: Any = conn.execute("SELECT ticks FROM coinpulse.candles_1m WHERE asset_id = %s AND bucket = %s",
                                (asset, bucket)).fetchone()
        return int(row[0]) if row else 0


@pytest.mark.full_edition
@pytest.mark.parametrize("refresh", [True, False])
def test_drained_rows_in_materialized_buckets_reach_the_candles(db_url: str, proxy: TcpProxy, tmp_path: Path,
                                                                refresh: bool) -> None:
    """Rows that come out of the spool late, into candles_1m buckets already materialized, show in the candles
    because the drain refreshes the rollups over the drained range (without it they would not)."""
    spool = Spool(tmp_path, max_bytes=1 << 24)
    queue = RecordQueue(10_000, overflow=spool.append)
    writer = BatchWriter(proxy.url(db_url), queue, Metrics(), batch_size=500, batch_max_age=0.02, spool=spool,
                         backoff=Backoff(initial=0.1, cap=0.3), refresh_rollups=refresh)
    stop = threading.Event()
    thread = run_writer(writer, stop, [None])
    queue.put(ticks(240))  # one minute: 120 bitcoin + 120 ethereum ticks in the bucket T0
    wait_until(lambda: tick_count(db_url) == 240, 20, "the first minute")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CALL refresh_continuous_aggregate('coinpulse.candles_1m', %s, %s)",
                     (T0 - timedelta(hours=1), T0 + timedelta(hours=1)))
    assert candle_ticks(db_url, "bitcoin", T0) == 120
    proxy.cut()
    queue.put(ticks(240, start=T0 + timedelta(milliseconds=125)))  # late rows, same bucket, spooled
    wait_until(lambda: spool.rows == 240, 20, "the late rows spooled")
    proxy.restore()
    wait_until(lambda: spool.empty and tick_count(db_url) == 480, 30, "the drain")
    if refresh:
        wait_until(lambda: candle_ticks(db_url, "bitcoin", T0) == 240, 30, "the candles to include the late rows")
        with psycopg.connect(db_url) as conn:
            hourly: Any = conn.execute("SELECT ticks FROM coinpulse.candles_1h WHERE asset_id = 'bitcoin' "
                                       "AND bucket = %s", (T0,)).fetchone()
        assert hourly == (240,)
    else:
        time.sleep(1.0)
        assert candle_ticks(db_url, "bitcoin", T0) == 120  # materialized before, not refreshed: stale
    stop.set()
    thread.join(20)


# -- `coinpulse run` as a subprocess -------------------------------------------------------------------------------


@pytest.mark.slow
def test_database_cut_mid_stream_loses_and_duplicates_nothing(db_url: str, fake: FakeCoinCap, proxy: TcpProxy,
                                                             tmp_path: Path) -> None:
    proc = collector(proxy.url(db_url), fake, tmp_path).start()
    feed = Feed(fake, frames_per_second=20)
    try:
        proc.wait_for(lambda: proc.health()[0] == 200 and fake.ws_open == 1, timeout=30, what="healthy, streaming")
        feed.start()
        proc.wait_for(lambda: tick_count(db_url) >= 400, timeout=30, what="ticks before the cut")
        proxy.cut()
        cut_at = time.monotonic()
        proc.wait_for(lambda: proc.metric("coinpulse_spool_rows") > 0, timeout=30, what="spooling")
        before = tick_count(db_url)
        code, body = proc.health()
        assert code == 503 and "database" in body["failing"] and body["spool"]["state"] == "spooling", body
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - cut_at)))
        assert tick_count(db_url) == before  # the outage was real: nothing reached the database
        spooled = proc.metric("coinpulse_spool_rows")
        assert spooled >= 0.5 * OUTAGE * 20 * len(ASSETS)  # the outage's ticks are on disk, not in memory
        proxy.restore()
        proc.wait_for(lambda: proc.health()[1]["spool"]["state"] == "empty", timeout=60, what="the spool drained")
        time.sleep(1.0)  # more live frames after the drain
        feed.stop()
        proc.wait_for(lambda: received(proc) == feed.ticks, timeout=20, what="every frame received")
        proc.wait_for(lambda: sum(stored(db_url).values()) >= feed.ticks, timeout=20, what="every tick stored")
        assert proc.metric("coinpulse_spool_rows_drained_total") == proc.metric("coinpulse_spool_rows_spooled_total")
        assert proc.metric("coinpulse_spool_bytes") == 0
        assert dropped_total(proc) == 0
        assert proc.health()[0] == 200
    finally:
        feed.stop()
        code = proc.stop()
    assert code == 0, proc.log
    assert_exactly_once(stored(db_url), feed.expected())
    assert "database back after" in proc.log and "spool drained" in proc.log
    assert "Traceback" not in proc.log


def restart_database(server: Server, down_for: float) -> None:
    """Stop the harness's own PostgreSQL (fast: sessions are terminated), wait, start it with its options."""
    if server.admin_url is None or not server.how.startswith("throwaway local cluster"):
        pytest.skip(f"restarting the database needs the throwaway local cluster the harness starts; "
                    f"the test server ({server.how}) is not ours to stop")
    with psycopg.connect(server.admin_url) as conn:
        data: Any = conn.execute("SHOW data_directory").fetchone()
        bindir: Any = conn.execute("SELECT setting FROM pg_config WHERE name = 'BINDIR'").fetchone()
    datadir, pg_ctl = str(data[0]), str(Path(bindir[0]) / "pg_ctl")
    args = shlex.split(Path(datadir, "postmaster.opts").read_text())[1:]
    at = args.index("-D")
    options = shlex.join(args[:at] + args[at + 2:])
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*run_as, pg_ctl, "-D", datadir, "-m", "fast", "-w", "stop"], check=True, capture_output=True)
    try:
        time.sleep(down_for)
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", datadir, "-w", "-l", str(Path(datadir).parent / "log"),
                        "-o", options, "start"], check=True, capture_output=True)


@pytest.mark.slow
def test_database_restart_mid_stream_loses_and_duplicates_nothing(db_url: str, fake: FakeCoinCap,
                                                                 pg_server: Server, tmp_path: Path) -> None:
    proc = collector(db_url, fake, tmp_path).start()
    feed = Feed(fake, frames_per_second=20)
    try:
        proc.wait_for(lambda: proc.health()[0] == 200 and fake.ws_open == 1, timeout=30, what="healthy, streaming")
        feed.start()
        proc.wait_for(lambda: tick_count(db_url) >= 400, timeout=30, what="ticks before the restart")
        restart_database(pg_server, down_for=3.0)
        proc.wait_for(lambda: proc.metric("coinpulse_spool_rows_spooled_total") > 0, timeout=30,
                      what="batches spooled during the restart")
        proc.wait_for(lambda: proc.health()[1]["spool"]["state"] == "empty" and proc.metric(
            "coinpulse_database_up") == 1, timeout=60, what="the spool drained after the restart")
        time.sleep(1.0)
        feed.stop()
        proc.wait_for(lambda: received(proc) == feed.ticks, timeout=20, what="every frame received")
        proc.wait_for(lambda: sum(stored(db_url).values()) >= feed.ticks, timeout=20, what="every tick stored")
        assert dropped_total(proc) == 0
    finally:
        feed.stop()
        code = proc.stop()
    assert code == 0, proc.log
    assert_exactly_once(stored(db_url), feed.expected())
    assert "database back after" in proc.log


def db_and_spool(db_url: str, spool_dir: Path) -> Counter[Key]:
    """What has reached the database or the spool (live ticks), as (asset, price) keys."""
    keys = stored(db_url)
    keys.update((t.asset_id, t.price_usd) for t in spool_contents(spool_dir) if type(t) is Tick)
    return Counter(dict.fromkeys(keys, 1))


def backlog(rows: int) -> list[Tick]:
    """Ticks of an earlier, longer outage (prices above anything the feed sends)."""
    return [Tick(T0 + timedelta(milliseconds=i // len(ASSETS)), ASSETS[i % len(ASSETS)], 1e6 + i, "ws")
            for i in range(rows)]


def kill(proc: CollectorProcess) -> None:
    assert proc.proc is not None
    proc.proc.kill()  # SIGKILL: no handler runs, nothing is flushed
    proc.proc.wait()
    proc._log.close()


@pytest.mark.slow
def test_sigkill_mid_write_then_restart_keeps_everything_that_reached_disk_or_database(
        db_url: str, fake: FakeCoinCap, proxy: TcpProxy, tmp_path: Path) -> None:
    """Killed twice with SIGKILL: once while spooling (database cut, the stream running), once in the middle of
    the next run's drain of that spool (plus a 120,000-row backlog, so the drain lasts long enough to be
    interrupted at an arbitrary point). Whatever had reached the spool or the database before each kill is in
    price_ticks afterwards, exactly once; the third run drains the rest."""
    url = proxy.url(db_url)
    spool_dir = tmp_path / "spool"
    feed = Feed(fake, frames_per_second=40)
    first = collector(url, fake, tmp_path, COINPULSE_BATCH_MAX_AGE="0.05").start()
    try:
        first.wait_for(lambda: fake.ws_open == 1 and first.metric("coinpulse_database_up") == 1, timeout=30,
                       what="streaming")
        feed.start()
        first.wait_for(lambda: tick_count(db_url) >= 400, timeout=30, what="ticks in the database")
        proxy.cut()
        first.wait_for(lambda: first.metric("coinpulse_spool_rows") > 3000, timeout=60, what="a spool to kill in")
    finally:
        kill(first)
    reached_1 = db_and_spool(db_url, spool_dir)
    in_db = stored(db_url)
    assert sum(1 for k in reached_1 if k not in in_db) > 3000  # a real spool was left behind
    older = Spool(spool_dir, max_bytes=1 << 30)
    extra = backlog(120_000)
    for i in range(0, len(extra), 5000):
        older.append(extra[i:i + 5000])
    older.close()
    reached_1.update(dict.fromkeys(((t.asset_id, t.price_usd) for t in extra), 1))
    proxy.restore()

    second = collector(url, fake, tmp_path, COINPULSE_SPOOL_MAX_BYTES=str(1 << 30)).start()
    try:  # it drains the spool while the stream goes on; killed in the middle of that
        second.wait_for(lambda: second.metric("coinpulse_spool_rows_drained_total") > 30_000, timeout=60,
                        what="the drain to be well under way")
        left_at_kill = second.metric("coinpulse_spool_rows")
    finally:
        kill(second)
    assert left_at_kill > 0  # it really was killed mid-drain
    reached_2 = db_and_spool(db_url, spool_dir)
    assert set(reached_1) <= set(reached_2)  # nothing lost by the second kill either

    third = collector(url, fake, tmp_path, COINPULSE_SPOOL_MAX_BYTES=str(1 << 30)).start()
    try:
        third.wait_for(lambda: fake.ws_open == 1, timeout=30, what="streaming again")
        third.wait_for(lambda: third.health()[1]["spool"]["state"] == "empty", timeout=120, what="the spool drained")
        feed.stop()
        third.wait_for(lambda: third.metric("coinpulse_rows_waiting") == 0, timeout=20, what="the queue written")
    finally:
        feed.stop()
        code = third.stop()
    assert code == 0, third.log
    final = stored(db_url)
    missing = set(reached_2) - set(final)
    assert not missing, f"{len(missing)} ticks that had reached the spool or the database are gone"
    assert not {k: n for k, n in final.items() if n > 1}, "a tick stored twice"
    assert set(final) <= set(feed.expected()) | {(t.asset_id, t.price_usd) for t in extra}  # nothing invented
    assert "from an earlier run" in second.log and "from an earlier run" in third.log


@pytest.mark.slow
def test_sigterm_under_load_with_the_database_down_spools_and_the_next_run_drains(
        db_url: str, fake: FakeCoinCap, proxy: TcpProxy, tmp_path: Path) -> None:
    grace = 5.0
    url = proxy.url(db_url)
    feed = Feed(fake, frames_per_second=50, assets=tuple(f"coin-{j:02d}" for j in range(40)))  # 2,000 ticks/s
    proc = collector(url, fake, tmp_path, COINPULSE_SHUTDOWN_GRACE=str(grace),
                     COINPULSE_ASSETS=",".join(feed.assets)).start()
    try:
        proc.wait_for(lambda: fake.ws_open == 1 and proc.metric("coinpulse_database_up") == 1, timeout=30,
                      what="streaming")
        feed.start()
        proc.wait_for(lambda: tick_count(db_url) >= 1000, timeout=30, what="ticks in the database")
        proxy.cut()
        proc.wait_for(lambda: proc.metric("coinpulse_spool_rows") > 5000, timeout=30, what="spooling")
        seen = received(proc)
    finally:
        assert proc.proc is not None
        started = time.monotonic()
        code = proc.stop(timeout=grace + 5)  # SIGTERM while the feed is still sending
        took = time.monotonic() - started
        feed.stop()
    assert code == 0, proc.log
    assert took < grace + 5
    assert "collector stopped rows_left=0" in proc.log  # nothing left behind in memory
    on_disk = spool_contents(tmp_path / "spool")
    assert len(on_disk) > 5000

    proxy.restore()
    fake.ws_silent()  # the next run gets no new prices: what it writes is what the first run left
    nxt = collector(url, fake, tmp_path, COINPULSE_ASSETS=",".join(feed.assets)).start()
    try:
        nxt.wait_for(lambda: nxt.health()[1]["spool"]["state"] == "empty", timeout=60, what="the spool drained")
    finally:
        code = nxt.stop()
    assert code == 0, nxt.log
    # The first run received a prefix of the frames sent (one connection, in order), and every one of them
    # is stored once: no gap inside, nothing after the prefix, at least what it had received at SIGTERM.
    got = stored(db_url)
    n = len(got) // len(feed.assets)
    assert len(got) == n * len(feed.assets) and n * len(feed.assets) >= seen
    assert_exactly_once(got, feed.expected(feed.delivered[:n]))


@pytest.mark.slow
def test_sigterm_while_the_writer_hangs_on_a_silent_database_still_exits_within_the_grace(
        db_url: str, fake: FakeCoinCap, proxy: TcpProxy, tmp_path: Path) -> None:
    """The database link goes silent (packets dropped: no error, no answer), so the writer hangs in a database
    call with rows piling up behind it. SIGTERM still ends the process with 0 within COINPULSE_SHUTDOWN_GRACE:
    the main thread spools what the stuck writer holds and what is queued, and the next run stores it once."""
    grace = 4.0
    url = proxy.url(db_url)
    feed = Feed(fake, frames_per_second=20)
    proc = collector(url, fake, tmp_path, COINPULSE_SHUTDOWN_GRACE=str(grace)).start()
    try:
        proc.wait_for(lambda: fake.ws_open == 1 and proc.metric("coinpulse_database_up") == 1, timeout=30,
                      what="streaming")
        feed.start()
        proc.wait_for(lambda: tick_count(db_url) >= 400, timeout=30, what="ticks in the database")
        proxy.hold()
        proc.wait_for(lambda: proc.metric("coinpulse_rows_waiting") > 1000, timeout=30, what="rows piling up")
        assert proc.metric("coinpulse_spool_rows") == 0  # no error to react to: the writer is simply stuck
        seen = received(proc)
    finally:
        started = time.monotonic()
        code = proc.stop(timeout=grace + 10)
        took = time.monotonic() - started
        feed.stop()
    assert code == 0, proc.log
    assert took < grace + 3, f"exit took {took:.1f}s with COINPULSE_SHUTDOWN_GRACE={grace}"
    assert "the writer is stuck in a database call" in proc.log
    assert "collector stopped rows_left=0" in proc.log
    assert len(spool_contents(tmp_path / "spool")) >= 1000

    proxy.restore()
    fake.ws_silent()
    nxt = collector(url, fake, tmp_path).start()
    try:
        nxt.wait_for(lambda: nxt.health()[1]["spool"]["state"] == "empty", timeout=60, what="the spool drained")
    finally:
        code = nxt.stop()
    assert code == 0, nxt.log
    got = stored(db_url)
    n = len(got) // len(ASSETS)
    assert len(got) == n * len(ASSETS) and n * len(ASSETS) >= seen
    assert_exactly_once(got, feed.expected(feed.delivered[:n]))
