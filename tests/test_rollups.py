"""Rollups against a real TimescaleDB: OHLC equal to raw on every level, real-time, late data, policies, roles.

Expected candles are computed here in Python from the generated ticks, independently of TimescaleDB's
first()/last() and time_bucket().
"""

from __future__ import annotations

import random
import time as clock
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from collector.db.migrate import migrate
from collector.db.rollups import ROLLUPS, align_down, align_up, refresh_window
from collector.errors import DatabaseError
from conftest import pause_policies

pytestmark = pytest.mark.full_edition

Conn = psycopg.Connection[tuple[object, ...]]
Tick = tuple[datetime, str, float]
Candle = tuple[float, float, float, float, int]
LEVELS = {"candles_1m": timedelta(minutes=1), "candles_1h": timedelta(hours=1), "candles_1d": timedelta(days=1)}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PRICES = [100.0, 100.5, 101.0, 99.25, 100.0, 250.125, 0.000123, 42.0]  # few values: many equal prices


# ---------------------------------------------------------------- helpers (also used by other test modules)

def floor_to(moment: datetime, width: timedelta) -> datetime:
    """time_bucket for widths dividing a day, computed on integer microseconds since the Unix epoch."""
    micros = (moment - EPOCH) // timedelta(microseconds=1)
    step = width // timedelta(microseconds=1)
    return EPOCH + timedelta(microseconds=(micros // step) * step)


def expected_candles(ticks: Iterable[Tick], width: timedelta) -> dict[tuple[datetime, str], Candle]:
    groups: dict[tuple[datetime, str], list[tuple[datetime, float]]] = {}
    for time, asset, price in ticks:
        groups.setdefault((floor_to(time, width), asset), []).append((time, price))
    out = {}
    for key, rows in groups.items():
        rows.sort()
        prices = [p for _, p in rows]
        out[key] = (prices[0], max(prices), min(prices), prices[-1], len(prices))
    return out


def stored_candles(conn: Conn, view: str) -> dict[tuple[datetime, str], Candle]:
    rows = conn.execute(f"SELECT bucket, asset_id, open, high, low, close, ticks FROM coinpulse.{view}").fetchall()
    return {(r[0], r[1]): (r[2], r[3], r[4], r[5], r[6]) for r in rows}  # type: ignore[misc]


def assert_candles_equal_raw(conn: Conn, ticks: list[Tick]) -> None:
    for view, width in LEVELS.items():
        expected = expected_candles(ticks, width)
        got = stored_candles(conn, view)
        missing = expected.keys() - got.keys()
        extra = got.keys() - expected.keys()
        wrong = {k: (got[k], expected[k]) for k in expected.keys() & got.keys() if got[k] != expected[k]}
        assert not missing and not extra and not wrong, (
            f"{view}: {len(missing)} missing, {len(extra)} extra, {len(wrong)} wrong buckets; "
            f"e.g. missing {sorted(missing)[:2]}, extra {sorted(extra)[:2]}, wrong {list(wrong.items())[:2]}")


def insert_ticks(conn: Conn, ticks: Iterable[Tick], source: str = "demo") -> None:
    with conn.cursor() as cur, cur.copy(
            "COPY coinpulse.price_ticks (time, asset_id, price_usd, source) FROM STDIN") as copy:
        for time, asset, price in ticks:
            copy.write_row((time, asset, price, source))


def random_ticks(rng: random.Random, assets: list[str], start: datetime, end: datetime, per_asset: int) -> list[Tick]:
    """Ticks in [start, end): random instants, many exactly on minute/hour/day boundaries and on the last
    microsecond before one, instants shared by every asset, and prices from a small pool (equal prices)."""
    span = (end - start) // timedelta(microseconds=1)
    shared = [start + timedelta(microseconds=rng.randrange(span)) for _ in range(per_asset // 5)]
    boundaries = []
    for width in (timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)):
        t = align_up(start, width)
        while t < end:
            boundaries.append(t)
            t += width
    ticks: dict[tuple[str, datetime], float] = {}
    for asset in assets:
        times = list(shared)
        times += rng.sample(boundaries, min(len(boundaries), per_asset // 4))
        times += [b - timedelta(microseconds=1) for b in rng.sample(boundaries, min(len(boundaries), per_asset // 8))]
        times += [start + timedelta(microseconds=rng.randrange(span)) for _ in range(per_asset // 2)]
        for time in times:
            if start <= time < end:
                ticks[(asset, time)] = rng.choice(PRICES)
    out = [(time, asset, price) for (asset, time), price in ticks.items()]
    rng.shuffle(out)
    return out


def server_now(conn: Conn) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None and isinstance(row[0], datetime)
    return row[0]


def job_id(conn: Conn, proc: str, target: str) -> int:
    row = conn.execute(
        "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = %s AND hypertable_name = %s",
        (proc, target)).fetchone()
    assert row is not None, f"no {proc} job for {target}"
    return int(str(row[0]))


def run_job(conn: Conn, proc: str, target: str) -> None:
    """Run a policy now, in the foreground (waiting out a background run of it that may still be going)."""
    job = job_id(conn, proc, target)
    for delay in (0.1, 0.5, 1.0, 2.0, None):
        try:
            conn.execute("CALL run_job(%s)", (job,))
            return
        except psycopg.errors.LockNotAvailable:
            if delay is None:
                raise
            clock.sleep(delay)


def watermark(conn: Conn, view: str) -> datetime | None:
    row = conn.execute(
        "SELECT CASE WHEN w > 0 THEN _timescaledb_functions.to_timestamp(w) END FROM ("
        " SELECT _timescaledb_functions.cagg_watermark(mat_hypertable_id) AS w FROM _timescaledb_catalog.continuous_agg"
        " WHERE user_view_schema = 'coinpulse' AND user_view_name = %s) x", (view,)).fetchone()
    assert row is not None
    return row[0] if isinstance(row[0], datetime) else None


@pytest.fixture
def fresh_url(make_database: Callable[[], str]) -> str:
    """A database of its own, migrated to head, policies paused (tests run jobs explicitly)."""
    url = make_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        pause_policies(conn)
    return url


@pytest.fixture
def fresh(fresh_url: str) -> Iterator[Conn]:
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        yield conn


# ---------------------------------------------------------------- tests

def test_registry_matches_database(db: Conn) -> None:
    rows = db.execute(
        "SELECT c.user_view_name, b.bucket_width::interval, coalesce(p.user_view_name, h.table_name) "
        "FROM _timescaledb_catalog.continuous_agg c "
        "JOIN _timescaledb_catalog.continuous_aggs_bucket_function b USING (mat_hypertable_id) "
        "JOIN _timescaledb_catalog.hypertable h ON h.id = c.raw_hypertable_id "
        "LEFT JOIN _timescaledb_catalog.continuous_agg p ON p.mat_hypertable_id = c.raw_hypertable_id "
        "WHERE c.user_view_schema = 'coinpulse' ORDER BY c.mat_hypertable_id").fetchall()
    assert [(r.name, r.bucket, r.source) for r in ROLLUPS] == [tuple(r) for r in rows]
    names = [r.name for r in ROLLUPS]
    for rollup in ROLLUPS:  # hierarchical order: a rollup after the one it reads
        if rollup.source in names:
            assert names.index(rollup.source) < names.index(rollup.name)


def test_every_level_is_real_time(db: Conn) -> None:
    rows = db.execute("SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates "
                      "WHERE view_schema = 'coinpulse'").fetchall()
    assert len(rows) == len(ROLLUPS) and all(r[1] is False for r in rows), rows


def test_ohlc_equals_raw_on_all_levels(db: Conn) -> None:
    rng = random.Random(20261124)
    now = server_now(db)
    assets = ["bitcoin", "ethereum", "tether", "solana", "dogecoin", "x-tiny"]
    start = align_down(now - timedelta(days=3), timedelta(days=1)) - timedelta(hours=5)
    ticks = random_ticks(rng, assets, start, now - timedelta(minutes=5), per_asset=1500)
    ticks += random_ticks(rng, assets[:3], now - timedelta(minutes=5), now, per_asset=40)
    insert_ticks(db, ticks)
    on_boundary = sum(1 for t, _, _ in ticks if floor_to(t, timedelta(minutes=1)) == t)
    assert on_boundary > 500 and len({p for _, _, p in ticks}) <= len(PRICES)

    # 1. Nothing materialized: every level is computed in real time from the raw ticks.
    assert watermark(db, "candles_1m") is None
    assert_candles_equal_raw(db, ticks)

    # 2. Only the oldest day of candles_1m materialized: materialized and real-time parts meet correctly.
    day = align_down(start, timedelta(days=1)) + timedelta(days=1)
    db.execute("CALL refresh_continuous_aggregate('coinpulse.candles_1m', %s::timestamptz, %s::timestamptz)",
               (start - timedelta(days=1), day))
    # The watermark is the end of the newest materialized bucket: ``day`` unless the random ticks left its last
    # minute empty.
    newest = max(t for t, _, _ in ticks if t < day)
    assert watermark(db, "candles_1m") == floor_to(newest, timedelta(minutes=1)) + timedelta(minutes=1)
    assert_candles_equal_raw(db, ticks)

    # 3. Everything materialized that can be (the open bucket of each level stays real-time).
    refresh_window(db, start, now)
    after = server_now(db)
    for view, width in LEVELS.items():
        materialized = watermark(db, view)
        assert materialized is not None and align_down(now, width) <= materialized <= align_down(after, width), view
    assert_candles_equal_raw(db, ticks)


def test_late_ticks_show_after_refresh_window(db: Conn) -> None:
    rng = random.Random(7)
    now = server_now(db)
    start = align_down(now - timedelta(days=10), timedelta(days=1))
    ticks = random_ticks(rng, ["bitcoin", "ethereum"], start, start + timedelta(days=2), per_asset=800)
    insert_ticks(db, ticks)
    refresh_window(db, start, start + timedelta(days=2))
    assert_candles_equal_raw(db, ticks)
    assert (watermark(db, "candles_1d") or start) >= start + timedelta(days=2)

    # Late ticks (a history import) into the materialized range: a new open at a bucket start, a new close
    # just before a bucket end, a new low and high, a minute that had no tick, and an asset not seen before.
    taken = {(a, t) for t, a, _ in ticks}
    minute = floor_to(ticks[0][0], timedelta(minutes=1)) + timedelta(minutes=1)
    late = [(minute, "bitcoin", 1.5), (minute + timedelta(seconds=59, microseconds=999999), "bitcoin", 3.5),
            (start + timedelta(hours=5, seconds=7), "ethereum", 0.0001),
            (start + timedelta(hours=30, seconds=3), "ethereum", 9e6),
            (start + timedelta(hours=40, minutes=17, seconds=1), "bitcoin", 77.0),
            (start + timedelta(hours=1, seconds=1), "cardano", 0.5)]
    late = [tick for tick in late if (tick[1], tick[0]) not in taken]
    assert len(late) >= 5
    insert_ticks(db, late, source="history")
    with pytest.raises(AssertionError):  # materialized candles do not see them yet
        assert_candles_equal_raw(db, ticks + late)

    # The regular refresh policy only looks back 2 hours (1 day, 3 days above): it does not pick them up.
    for view in LEVELS:
        run_job(db, "policy_refresh_continuous_aggregate", view)
    with pytest.raises(AssertionError):
        assert_candles_equal_raw(db, ticks + late)

    refresh_window(db, min(t for t, _, _ in late), max(t for t, _, _ in late) + timedelta(microseconds=1))
    assert_candles_equal_raw(db, ticks + late)


def test_late_range_ending_on_a_bucket_start_is_fully_refreshed(db: Conn) -> None:
    """Regression guard for timescale/timescaledb#10221 (2.28.x): a batched refresh left the bucket at the
    end of an invalidation that ends exactly on a bucket start unmaterialized. Manual refreshes and the
    policies run in one pass (buckets_per_batch 0)."""
    now = server_now(db)
    day = align_down(now - timedelta(days=6), timedelta(days=1))
    ticks = [(day + timedelta(minutes=m), "bitcoin", 10.0 + m % 5) for m in range(0, 1440, 3)]
    insert_ticks(db, ticks)
    refresh_window(db, day, day + timedelta(days=1))
    late = [(day + timedelta(hours=5, minutes=30, seconds=10), "xrp", 1.0), (day + timedelta(hours=15), "xrp", 2.0)]
    insert_ticks(db, late, source="history")
    refresh_window(db, late[0][0], late[1][0] + timedelta(microseconds=1))
    assert_candles_equal_raw(db, ticks + late)

    recent = [(align_down(now, timedelta(minutes=1)) - timedelta(minutes=m), "bitcoin", 7.0) for m in range(5, 80)]
    insert_ticks(db, recent)
    run_job(db, "policy_refresh_continuous_aggregate", "candles_1m")
    late_recent = [(recent[-1][0] + timedelta(seconds=10), "xrp", 3.0), (recent[1][0], "xrp", 4.0)]
    insert_ticks(db, late_recent, source="history")
    run_job(db, "policy_refresh_continuous_aggregate", "candles_1m")
    assert db.execute("SELECT count(*) FROM coinpulse.candles_1m WHERE asset_id = 'xrp' AND bucket >= %s",
                      (recent[-1][0],)).fetchone() == (2,)
    assert watermark(db, "candles_1m") is not None
    assert_candles_equal_raw(db, ticks + late + recent + late_recent)


def test_real_time_rows_visible_right_after_insert(db: Conn) -> None:
    now = server_now(db)
    insert_ticks(db, [(now - timedelta(minutes=m), "bitcoin", 100.0 + m) for m in range(1, 90)])
    run_job(db, "policy_refresh_continuous_aggregate", "candles_1m")  # materialized up to the last closed minute
    materialized = watermark(db, "candles_1m")
    assert materialized is not None and materialized >= now - timedelta(minutes=3)

    with psycopg.connect(db.info.dsn, autocommit=True) as writer:
        row = writer.execute("INSERT INTO coinpulse.price_ticks VALUES (now(), 'fresh-coin', 12.5, 'ws') "
                             "RETURNING time").fetchone()
    assert row is not None and isinstance(row[0], datetime)
    tick_time = row[0]
    # No wait, no refresh: the committed tick is already in every level.
    for view, width in LEVELS.items():
        got = db.execute(f"SELECT bucket, open, high, low, close, ticks FROM coinpulse.{view} "
                         "WHERE asset_id = 'fresh-coin'").fetchall()
        assert got == [(floor_to(tick_time, width), 12.5, 12.5, 12.5, 12.5, 1)], view


def test_refresh_window_leaves_the_open_bucket_to_real_time(db: Conn) -> None:
    now = server_now(db)
    ticks = [(now - timedelta(seconds=10 * k), "bitcoin", 20.0 + k % 3) for k in range(720)]
    insert_ticks(db, ticks)
    refresh_window(db, now - timedelta(hours=2), now + timedelta(hours=2))
    materialized, after = watermark(db, "candles_1m"), server_now(db)
    assert materialized is not None  # up to the last closed minute, not the open one
    assert align_down(now, timedelta(minutes=1)) <= materialized <= align_down(after, timedelta(minutes=1))
    later = [(server_now(db), "bitcoin", 1.0), (server_now(db), "late-open", 3.0)]
    insert_ticks(db, later)
    assert_candles_equal_raw(db, ticks + later)


def test_refresh_window_arguments(db: Conn, db_url: str) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        refresh_window(db, datetime(2026, 1, 1), datetime(2026, 1, 2))
    with psycopg.connect(db_url) as tx_conn, pytest.raises(ValueError, match="autocommit"):
        refresh_window(tx_conn, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    refresh_window(db, datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))  # empty: no-op


def test_writer_can_refresh_reader_cannot(db: Conn) -> None:
    now = server_now(db)
    day = align_down(now - timedelta(days=5), timedelta(days=1))
    ticks = [(day + timedelta(minutes=m), "bitcoin", 50.0 + m % 7) for m in range(0, 3000, 7)]
    insert_ticks(db, ticks)
    db.execute("SET ROLE coinpulse_reader")
    try:
        with pytest.raises(DatabaseError, match="coinpulse_rollup_owner") as err:
            refresh_window(db, day, day + timedelta(days=3))
        assert "\n" not in str(err.value)
        db.execute("SET ROLE coinpulse_writer")
        refresh_window(db, day, day + timedelta(days=3))
    finally:
        db.execute("RESET ROLE")
    assert watermark(db, "candles_1d") == day + timedelta(days=3)
    assert_candles_equal_raw(db, ticks)


def test_reader_can_select_every_rollup_and_view(db: Conn) -> None:
    db.execute("SET ROLE coinpulse_reader")
    try:
        for name in [r.name for r in ROLLUPS] + ["latest_prices", "asset_overview"]:
            db.execute(f"SELECT * FROM coinpulse.{name} LIMIT 1").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.execute("INSERT INTO coinpulse.price_ticks VALUES (now(), 'x', 1, 'ws')")
    finally:
        db.execute("RESET ROLE")


def test_volume_rollups_report_values_as_of_bucket_end(db: Conn) -> None:
    now = server_now(db)
    day = align_down(now - timedelta(days=4), timedelta(days=1))
    rows = []
    for asset, base in (("bitcoin", 1e9), ("ethereum", 5e8)):
        for i in range(0, 48 * 12):  # every 5 minutes for two days
            t = day + timedelta(minutes=5 * i)
            volume = None if i % 12 == 11 else base + i  # the hour's last snapshot has no volume
            rows.append((t, asset, 1 + i % 50, volume, base * 10 + i, 19e6 + i, 100.0 + i))
    with db.cursor() as cur, cur.copy(
            "COPY coinpulse.asset_snapshots (time, asset_id, rank, volume_usd_24hr, market_cap_usd, supply, "
            "price_usd, source) FROM STDIN") as copy:
        for r in rows:
            copy.write_row((*r, "rest"))
    ex_rows = [(day + timedelta(minutes=15 * i), ex, 1e8 * (k + 1) + i, 10.0 * (k + 1), 100 + k, k + 1)
               for i in range(8) for k, ex in enumerate(("binance", "kraken"))]
    with db.cursor() as cur, cur.copy(
            "COPY coinpulse.exchange_snapshots (time, exchange_id, volume_usd, percent_total_volume, "
            "trading_pairs, rank, source) FROM STDIN") as copy:
        for e in ex_rows:
            copy.write_row((*e, "rest"))

    def expected(width: timedelta) -> dict[tuple[datetime, str], tuple[object, ...]]:
        out: dict[tuple[datetime, str], tuple[object, ...]] = {}
        for t, asset, rank, volume, cap, supply, price in sorted(rows, key=lambda r: r[0]):
            key = (floor_to(t, width), asset)
            old = out.get(key, (None, None, None, None, None, None, 0))
            out[key] = (volume if volume is not None else old[0], cap, supply, rank, price, t, int(str(old[6])) + 1)
        return out

    def stored(view: str) -> dict[tuple[datetime, str], tuple[object, ...]]:
        got = db.execute(f"SELECT bucket, asset_id, volume_usd_24hr, market_cap_usd, supply, rank, price_usd, as_of, "
                         f"snapshots FROM coinpulse.{view}").fetchall()
        return {(r[0], r[1]): tuple(r[2:]) for r in got}  # type: ignore[misc]

    for _ in ("real-time", "materialized"):
        assert stored("asset_volume_1h") == expected(timedelta(hours=1))
        assert stored("asset_volume_1d") == expected(timedelta(days=1))
        hour = db.execute("SELECT volume_usd, percent_total_volume, trading_pairs, rank, as_of, snapshots "
                          "FROM coinpulse.exchange_volume_1h WHERE exchange_id = 'kraken' AND bucket = %s",
                          (day,)).fetchone()
        assert hour == (2e8 + 3, 20.0, 101, 2, day + timedelta(minutes=45), 4)
        refresh_window(db, day, day + timedelta(days=2))
    # The hour's last snapshot had no volume: the bucket keeps the latest non-null one, 5 minutes earlier.
    first_hour = stored("asset_volume_1h")[(day, "bitcoin")]
    assert first_hour[0] == 1e9 + 10 and first_hour[5] == day + timedelta(minutes=55)


EXPECTED_POLICIES = {  # rollup: (start_offset, end_offset, schedule_interval) -- README "Rollups and data lifecycle"
    "candles_1m": (timedelta(hours=2), timedelta(minutes=1), timedelta(minutes=1)),
    "candles_1h": (timedelta(days=1), timedelta(hours=1), timedelta(minutes=30)),
    "candles_1d": (timedelta(days=3), timedelta(hours=1), timedelta(hours=1)),
    "asset_volume_1h": (timedelta(days=1), timedelta(hours=1), timedelta(minutes=30)),
    "asset_volume_1d": (timedelta(days=3), timedelta(hours=1), timedelta(hours=1)),
    "exchange_volume_1h": (timedelta(days=1), timedelta(hours=1), timedelta(minutes=30)),
}


def test_refresh_policies_have_the_configured_offsets(fresh: Conn) -> None:
    rows = fresh.execute(
        "SELECT hypertable_name, (config ->> 'start_offset')::interval, (config ->> 'end_offset')::interval, "
        "schedule_interval FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_refresh_continuous_aggregate' AND hypertable_schema = 'coinpulse'").fetchall()
    assert {r[0]: tuple(r[1:]) for r in rows} == EXPECTED_POLICIES
    batches = fresh.execute("SELECT DISTINCT config ->> 'buckets_per_batch' FROM timescaledb_information.jobs "
                            "WHERE proc_name = 'policy_refresh_continuous_aggregate'").fetchall()
    assert batches == [("0",)]  # one pass per run: timescale/timescaledb#10221
    assert set(EXPECTED_POLICIES) == {r.name for r in ROLLUPS}
    for name, (start, end, _) in EXPECTED_POLICIES.items():  # the open bucket is never materialized
        bucket = next(r.bucket for r in ROLLUPS if r.name == name)
        assert end >= min(bucket, timedelta(hours=1)) and start - end >= 2 * bucket


def test_upgrade_keeps_history_collected_before_the_rollups(make_database: Callable[[], str]) -> None:
    """Upgrading a database that already holds ticks materializes them once, so they stay visible after the
    refresh policy moves the watermark past them."""
    from conftest import alembic_to

    url = make_database()
    migrate(url)  # creates the extension and schema; then go back to 0001 and load history
    alembic_to(url, "downgrade", "0001")
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('coinpulse.candles_1m')").fetchone() == (None,)
        now = server_now(conn)
        ticks = [(now - timedelta(days=20, minutes=m), "bitcoin", 10.0 + m % 13) for m in range(0, 4000, 3)]
        insert_ticks(conn, ticks)
    alembic_to(url, "upgrade", "head")
    with psycopg.connect(url, autocommit=True) as conn:
        pause_policies(conn)
        for view in LEVELS:
            run_job(conn, "policy_refresh_continuous_aggregate", view)
        assert watermark(conn, "candles_1m") is not None
        assert_candles_equal_raw(conn, ticks)
