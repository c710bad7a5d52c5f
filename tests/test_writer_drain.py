"""The writer's drain path against a real TimescaleDB: COPY-ready tick rows (byte for byte what PostgreSQL
itself produces), spooled batches of both record formats, replays, refused rows, the gaps of rows the spool
dropped at its cap, and the connection's TCP keepalives."""

from __future__ import annotations

import os
import socket
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.buffer import RecordQueue
from collector.coincap.models import Record, Tick
from collector.metrics import Metrics
from collector.spool import DroppedSpan, Spool, encode_ticks
from collector.writer import BatchWriter, writer_connect_params
from records import T0, asset_snapshot, exchange_snapshot, market_snapshot, rate_snapshot, ticks

Conn = psycopg.Connection[tuple[object, ...]]
ROOT = Path(__file__).resolve().parents[1]
PG_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)


def count(db: Conn, table: str) -> int:
    row = db.execute(f"SELECT count(*) FROM coinpulse.{table}").fetchone()
    assert row is not None
    return int(str(row[0]))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def drain_all(writer: BatchWriter, spool: Spool) -> None:
    for _ in range(10_000):
        if spool.empty:
            return
        writer._drain_one()
    raise AssertionError("the spool does not drain")


def tick_values(db: Conn) -> list[tuple[object, ...]]:
    """Every stored tick as (time, asset_id, price_usd, source), sorted."""
    return sorted(db.execute("SELECT time, asset_id, price_usd, source FROM coinpulse.price_ticks"))


# -- the bytes ----------------------------------------------------------------------------------------------------


def test_tick_rows_are_byte_for_byte_what_postgres_copies_out(db_url: str, db: Conn) -> None:
    """The encoder's rows equal PostgreSQL's own binary COPY output of the stored rows: same types, same
    encoding of every field (so COPY FROM takes them, and a replay carries exactly the same keys)."""
    sent = [Tick(T0 + timedelta(microseconds=7), "bitcoin", 97_123.456789, "ws"),
            Tick(datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), "bitcoin", 5e-324, "history"),
            Tick(T0, "ünïcødé-€", 1.7976931348623157e308, "rest"),
            Tick(datetime(2199, 1, 1, tzinfo=UTC), "z" * 300, 0.1 + 0.2, "demo")]
    writer = BatchWriter(db_url, RecordQueue(10), Metrics())
    assert writer.write([], encode_ticks(sent)) == {"price_ticks": 4}  # COPY of the encoder's bytes
    writer.close()
    expected = sorted(sent, key=lambda t: (t.asset_id, t.time))
    rows = encode_ticks(expected)
    assert rows is not None
    out = bytearray()
    with db.cursor() as cur, cur.copy("COPY (SELECT time, asset_id, price_usd, source FROM coinpulse.price_ticks "
                                      "ORDER BY asset_id COLLATE \"C\", time) TO STDOUT (FORMAT BINARY)") as copy:
        for block in copy:
            out += block
    assert bytes(out) == PG_SIGNATURE + rows.data + b"\xff\xff"
    assert tick_values(db) == sorted(tuple(t) for t in sent)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
            max_size=10)), min_size=1, max_size=20, unique_by=lambda r: (r[2], r[0])))
def test_any_tick_round_trips_through_copy_exactly(db_url: str, rows: list[tuple[datetime, float, str]]) -> None:
    sent = [Tick(at, asset_id, price, "ws") for at, price, asset_id in rows]
    with psycopg.connect(db_url, autocommit=True) as db:
        db.execute("TRUNCATE coinpulse.price_ticks")
        writer = BatchWriter(db_url, RecordQueue(10), Metrics())
        assert writer.write([], encode_ticks(sent)) == {"price_ticks": len(sent)}
        assert writer.write([], encode_ticks(sent)) == {"price_ticks": 0}  # again: the replay path, nothing added
        assert writer.write(sent) == {"price_ticks": 0}  # psycopg's own rows: the same keys
        writer.close()
        assert tick_values(db) == sorted(tuple(t) for t in sent)


# -- draining ------------------------------------------------------------------------------------------------------


def test_a_spooled_mix_drains_once_with_its_dimensions(db_url: str, db: Conn, tmp_path: Path) -> None:
    metrics = Metrics()
    spool = Spool(tmp_path, max_bytes=1 << 24, metrics=metrics)
    early = ticks(100, ("bitcoin", "ethereum"))
    late = ticks(50, ("solana",), start=T0 + timedelta(hours=2))
    spool.append(early[:60])
    spool.append([*early[60:], asset_snapshot(), exchange_snapshot(), market_snapshot("coinbase"), rate_snapshot()])
    spool.append(late)
    writer = BatchWriter(db_url, RecordQueue(10), metrics, spool=spool, refresh_rollups=False)
    assert writer.write(early[:30]) == {"price_ticks": 30}  # some were committed before the spool got them
    drain_all(writer, spool)
    writer.close()
    assert count(db, "price_ticks") == 150
    assert tick_values(db) == sorted(tuple(t) for t in early + late)
    assert (count(db, "asset_snapshots"), count(db, "exchange_snapshots"), count(db, "market_snapshots"),
            count(db, "rate_snapshots")) == (1, 1, 1, 1)
    assets = {str(r[0]): (r[1], r[2]) for r in db.execute(
        "SELECT asset_id, first_seen, last_seen FROM coinpulse.assets")}
    assert assets["solana"] == (late[0].time, late[-1].time)  # the dimension row, from the tick rows' meta
    assert assets["ethereum"] == (early[1].time, early[29].time)  # known since the first write: not touched again
    assert {str(r[0]) for r in db.execute("SELECT exchange_id FROM coinpulse.exchanges")} == {"binance", "coinbase"}
    assert sample(metrics, "coinpulse_spool_rows_drained_total") == 154
    assert sample(metrics, "coinpulse_rows_written_total", table="price_ticks") == 150


def test_a_spool_the_previous_version_left_lands_in_the_database(db_url: str, db: Conn, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    for seg in (ROOT / "tests" / "fixtures" / "spool_v1").glob("*.seg"):
        (spool_dir / seg.name).write_bytes(seg.read_bytes())
    spool = Spool(spool_dir, max_bytes=1 << 20)
    spool.append(ticks(5, ("cardano",), start=T0 + timedelta(days=1)))  # and one record of the new format
    writer = BatchWriter(db_url, RecordQueue(10), Metrics(), spool=spool, refresh_rollups=False)
    drain_all(writer, spool)
    writer.close()
    v1_ticks = [*ticks(40), *ticks(3, ("solana",)), *ticks(7, ("dogecoin", "bitcoin"), source="rest")]
    new_ticks = ticks(5, ("cardano",), start=T0 + timedelta(days=1))
    assert tick_values(db) == sorted(tuple(t) for t in [*v1_ticks, *new_ticks])
    assert (count(db, "asset_snapshots"), count(db, "exchange_snapshots"), count(db, "market_snapshots"),
            count(db, "rate_snapshots")) == (1, 1, 1, 1)


def test_a_row_the_database_refuses_in_spooled_tick_rows_keeps_the_others(db_url: str, db: Conn,
                                                                          tmp_path: Path) -> None:
    metrics = Metrics()
    spool = Spool(tmp_path, max_bytes=1 << 20)
    good = ticks(20)
    spool.append([*good[:10], Tick(T0 - timedelta(seconds=1), "bitcoin", -1.0, "ws"), *good[10:]])  # CHECK refuses
    writer = BatchWriter(db_url, RecordQueue(10), metrics, spool=spool, refresh_rollups=False)
    drain_all(writer, spool)
    writer.close()
    assert tick_values(db) == sorted(tuple(t) for t in good)
    assert sample(metrics, "coinpulse_rows_rejected_total", reason="db_23514") == 1


def test_spooled_ticks_with_a_none_are_refused_by_the_database_not_the_writer(db_url: str, db: Conn,
                                                                              tmp_path: Path) -> None:
    metrics = Metrics()
    spool = Spool(tmp_path, max_bytes=1 << 20)
    odd: list[Record] = [*ticks(3), Tick(T0 - timedelta(seconds=1), "bitcoin", None, "ws")]  # type: ignore[arg-type]
    spool.append(odd)  # the encoder cannot take the None: the batch is spooled as JSON columns
    writer = BatchWriter(db_url, RecordQueue(10), metrics, spool=spool, refresh_rollups=False)
    drain_all(writer, spool)
    writer.close()
    assert count(db, "price_ticks") == 3
    assert sample(metrics, "coinpulse_rows_rejected_total", reason="db_23502") == 1  # not_null_violation


# -- gaps of rows dropped at the spool cap ---------------------------------------------------------------------------


def test_dropped_spans_become_one_gap_per_asset_once_the_database_answers(db_url: str, db: Conn) -> None:
    woken: list[bool] = []
    writer = BatchWriter(db_url, RecordQueue(100), Metrics(), on_gaps=lambda: woken.append(True))
    t = T0
    writer.note_dropped([DroppedSpan("bitcoin", t, t + timedelta(seconds=10), 40),
                         DroppedSpan("ethereum", t, t + timedelta(seconds=9), 40)])
    writer.note_dropped([DroppedSpan("bitcoin", t + timedelta(seconds=10), t + timedelta(seconds=20), 40)])
    writer.write(ticks(2))
    writer._record_dropped()
    writer.close()
    gaps = [tuple(r) for r in db.execute(
        "SELECT asset_id, gap_start, gap_end, reason, status FROM coinpulse.ingest_gaps ORDER BY asset_id")]
    us = timedelta(microseconds=1)
    assert gaps == [("bitcoin", t, t + timedelta(seconds=20) + us, "spool_cap", "open"),
                    ("ethereum", t, t + timedelta(seconds=9) + us, "spool_cap", "open")]
    assert woken == [True]


def test_spans_an_earlier_run_dropped_are_recorded_after_a_restart(db_url: str, db: Conn, tmp_path: Path) -> None:
    """The collector died while the database was away, after the spool dropped rows at its cap: the next run's
    writer records those spans from the spool directory (dropped.spans) as soon as it reaches the database."""
    first = Spool(tmp_path / "spool", max_bytes=8192, segment_bytes=1024, on_drop=lambda spans: None)
    sent = [Tick(T0 + timedelta(seconds=k), asset, float(k + 1), "ws")
            for k in range(400) for asset in ("bitcoin", "ethereum")]
    for i in range(0, len(sent), 20):
        assert first.append(sent[i:i + 20])
    stored, _ = first.pending_drops()
    assert stored
    first.close()  # no writer ever saw these spans: only the spool's file has them

    spool = Spool(tmp_path / "spool", max_bytes=8192, segment_bytes=1024)
    woken: list[bool] = []
    writer = BatchWriter(db_url, RecordQueue(100), Metrics(), spool=spool, on_gaps=lambda: woken.append(True),
                         refresh_rollups=False)
    spool.on_drop = writer.note_dropped
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
    thread.start()
    for _ in range(200):
        if woken and spool.empty:
            break
        stop.wait(0.05)
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and woken == [True]
    gaps = {str(r[0]): (r[1], r[2], str(r[3])) for r in db.execute(
        "SELECT asset_id, gap_start, gap_end, reason FROM coinpulse.ingest_gaps")}
    us = timedelta(microseconds=1)
    for asset in ("bitcoin", "ethereum"):
        mine = [s for s in stored if s.asset_id == asset]
        assert gaps[asset] == (min(s.first for s in mine), max(s.last for s in mine) + us, "spool_cap")
        kept = {r[0] for r in db.execute("SELECT time FROM coinpulse.price_ticks WHERE asset_id = %s", (asset,))}
        assert not [t for t in kept if gaps[asset][0] <= t < gaps[asset][1]]  # the gap is exactly what is missing
        assert len(kept) + sum(s.rows for s in mine) == 400
    assert not spool.drops_pending and not (tmp_path / "spool" / "dropped.spans").exists()
    spool.close()


# -- the connection --------------------------------------------------------------------------------------------------


def _sockopt(sock: socket.socket, level: int, name: int) -> int:
    return sock.getsockopt(level, name)


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="needs Linux TCP_KEEPIDLE to read the socket options")
def test_the_writer_connection_has_tcp_keepalives_and_utf8(db_url: str) -> None:
    writer = BatchWriter(db_url, RecordQueue(10), Metrics())
    conn = writer._connection()
    sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        assert _sockopt(sock, socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert _sockopt(sock, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert _sockopt(sock, socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
        assert _sockopt(sock, socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert _sockopt(sock, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 60_000
    finally:
        sock.detach()
    row = conn.execute("SHOW client_encoding").fetchone()
    assert row == ("UTF8",)
    writer.close()


def test_keepalive_settings_in_the_url_win() -> None:
    params = writer_connect_params("postgresql://u@h/db?keepalives_idle=7&tcp_user_timeout=0&client_encoding=LATIN1")
    assert "keepalives_idle" not in params and "tcp_user_timeout" not in params
    assert params["keepalives_count"] == "3" and params["client_encoding"] == "UTF8"
