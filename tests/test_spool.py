"""The on-disk spool alone (no database): exact round trips, order, torn and corrupt records, the cap, restarts,
the lock, concurrent writers, and a real SIGKILL in the middle of appending."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.buffer import RecordQueue
from collector.coincap.models import ExchangeSnapshot, MarketSnapshot, Record, Tick
from collector.metrics import Metrics
from collector.spool import (
    HEADER,
    DroppedSpan,
    Spool,
    SpoolError,
    TickRows,
    decode_payload,
    decode_payload_v1,
    decode_tick_rows,
    encode_payload,
    encode_payload_v1,
    encode_ticks,
)
from records import T0, asset_snapshot, exchange_snapshot, market_snapshot, rate_snapshot, ticks

ROOT = Path(__file__).resolve().parents[1]


def batch(i: int, n: int = 10) -> list[Tick]:
    """Batch ``i``: ``n`` ticks whose prices say which batch and row they are (i * 1000 + row)."""
    return [Tick(T0 + timedelta(seconds=i, microseconds=k), "bitcoin", float(i * 1000 + k), "ws") for k in range(n)]


def drain(spool: Spool, max_rows: int = 1_000_000) -> list[Record]:
    out: list[Record] = []
    while (got := spool.read(max_rows)) is not None:
        out.extend(got.all_records())
        spool.ack(got)
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def dropped(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("coinpulse_rows_dropped_total", {"reason": reason}) or 0.0


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


# -- the payload ---------------------------------------------------------------------------------------------------


def test_every_record_kind_round_trips_exactly() -> None:
    others: list[Record] = [
        asset_snapshot(), asset_snapshot("ethereum", price=0.1), exchange_snapshot(), market_snapshot(),
        rate_snapshot(),
        ExchangeSnapshot(T0, "tiny", None, None, None, None, None, None, None, None, "rest"),
        MarketSnapshot(T0, "kraken", "bitcoin", "euro", None, None, None, None, None, None, None, None, None, "rest"),
    ]
    records: list[Record] = [*ticks(3), *others[:2], *ticks(2, start=T0 + timedelta(hours=1)), *others[2:]]
    payload, lo, hi = encode_payload(records)
    rows, decoded = decode_payload(payload)
    assert rows is not None and rows.ticks() == [r for r in records if type(r) is Tick]  # ticks as COPY rows
    assert decoded == others and [type(r) for r in decoded] == [type(r) for r in others]
    assert (lo, hi) == (int(min(r.time for r in records).timestamp() * 1e6),
                        int(max(r.time for r in records).timestamp() * 1e6))
    # the previous format (format 1), still read: every row as JSON columns, in order
    payload_v1, lo_v1, hi_v1 = encode_payload_v1(records)
    assert decode_payload_v1(payload_v1) == records and (lo_v1, hi_v1) == (lo, hi)


def test_tick_rows_carry_what_the_writer_needs() -> None:
    sent = [*ticks(6, ("bitcoin", "ethereum", "solana")), Tick(T0 - timedelta(days=1), "bitcoin", 5.0, "history")]
    rows = encode_ticks(sent)
    assert rows is not None and rows.rows == 7 and rows.ticks() == sent
    us = [int(t.time.timestamp() * 1e6) for t in sent]
    assert rows.assets == {"bitcoin": (us[6], us[3], 3), "ethereum": (us[1], us[4], 2), "solana": (us[2], us[5], 2)}
    assert (rows.lo, rows.hi, rows.live_lo) == (us[6], us[5], us[0])  # live_lo: the oldest non-history tick
    joined = TickRows.join([rows, encode_ticks(ticks(2, ("dogecoin",))) or rows])
    assert joined is not None and joined.rows == 9 and joined.ticks() == [*sent, *ticks(2, ("dogecoin",))]
    assert encode_ticks([]) is None


def test_ticks_the_columns_cannot_hold_fall_back_to_format_1_columns() -> None:
    odd = [Tick(T0, "bitcoin", None, "ws"), *ticks(2)]  # type: ignore[arg-type]  # a None the database refuses
    with pytest.raises(ValueError, match="not encodable"):
        encode_ticks(odd)
    rows, decoded = decode_payload(encode_payload(odd)[0])
    assert rows is None and decoded == odd


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    st.floats(min_value=1e-12, max_value=1e15, allow_nan=False, allow_infinity=False),
    st.text(min_size=1, max_size=12)), min_size=1, max_size=30))
def test_times_and_prices_round_trip_bit_for_bit(rows: list[tuple[datetime, float, str]]) -> None:
    """A replay must carry exactly the keys of the original rows, or idempotency would not hold."""
    records = [Tick(at, asset_id, price, "ws") for at, price, asset_id in rows]
    got, others = decode_payload(encode_payload(records)[0])
    assert got is not None and got.ticks() == records and others == []
    assert decode_payload_v1(encode_payload_v1(records)[0]) == records


def test_garbage_is_not_a_payload() -> None:
    with pytest.raises(ValueError, match="not a spool payload"):
        decode_payload(b"\x00not zlib")
    with pytest.raises(ValueError, match="not a spool payload"):
        decode_payload_v1(b"\x00not zlib")
    with pytest.raises(ValueError, match="not tick rows"):
        decode_tick_rows(b"\x00\x04\x00")


# -- appending and draining ----------------------------------------------------------------------------------------


def test_nothing_touches_the_disk_until_something_is_spooled(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    assert spool.empty and spool.read(100) is None
    assert not (tmp_path / "spool").exists()
    assert spool.append(batch(0))
    assert len(segments(tmp_path / "spool")) == 1


def test_drains_in_order_across_segments_and_removes_what_is_done(tmp_path: Path) -> None:
    metrics = Metrics()
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=600, metrics=metrics)
    sent = [batch(i) for i in range(40)]
    for b in sent:
        assert spool.append(b)
    assert len(segments(tmp_path)) > 3  # the small segment size forced several
    assert spool.rows == 400 and sample(metrics, "coinpulse_spool_rows") == 400
    assert sample(metrics, "coinpulse_spool_bytes") == sum(p.stat().st_size for p in segments(tmp_path))
    assert sample(metrics, "coinpulse_spool_rows_spooled_total") == 400
    got = drain(spool, max_rows=25)
    assert got == [t for b in sent for t in b]
    assert spool.empty and segments(tmp_path) == []
    assert sample(metrics, "coinpulse_spool_bytes") == 0 and sample(metrics, "coinpulse_spool_rows") == 0
    assert sample(metrics, "coinpulse_spool_rows_drained_total") == 400


def test_reads_whole_records_up_to_max_rows(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(5):
        spool.append(batch(i, n=10))
    first = spool.read(25)
    assert first is not None and len(first.all_records()) == 20  # two whole records; a third would exceed 25
    again = spool.read(25)
    assert again is not None and again.all_records() == first.all_records()  # not acked: the same rows again
    spool.ack(first)
    one = spool.read(5)
    assert one is not None and one.all_records() == batch(2)  # at least one record, even if it exceeds max_rows


def test_appends_while_draining_keep_their_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    got: list[Record] = []
    for i in range(30):
        spool.append(batch(i, n=3))
        if i % 3 == 0:
            part = spool.read(4)
            assert part is not None
            got.extend(part.all_records())
            spool.ack(part)
    got.extend(drain(spool))
    assert got == [t for i in range(30) for t in batch(i, n=3)]
    assert segments(tmp_path) == []


def test_concurrent_writers_and_one_drainer_lose_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 24, segment_bytes=4096)
    done = threading.Event()
    got: list[Record] = []

    def drainer() -> None:
        while not done.is_set() or not spool.empty:
            part = spool.read(50)
            if part is None:
                time.sleep(0.001)
                continue
            got.extend(part.all_records())
            spool.ack(part)

    def writer(w: int) -> None:
        for i in range(60):
            spool.append(batch(w * 100 + i, n=5))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    reader = threading.Thread(target=drainer)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join(30)
    assert not reader.is_alive()
    assert sorted(t.price_usd for t in got) == sorted(float(t.price_usd) for w in range(4) for i in range(60)
                                                      for t in batch(w * 100 + i, n=5))
    for w in range(4):  # each writer's batches come out in the order it wrote them
        mine = [t.price_usd for t in got if w * 100 <= t.price_usd // 1000 < w * 100 + 60]
        assert mine == sorted(mine)


# -- crashes: torn and corrupt records ---------------------------------------------------------------------------


def write_three(directory: Path) -> tuple[Path, list[int]]:
    """Three batches of 10, 20 and 30 rows in one segment; the offsets where each record starts."""
    spool = Spool(directory, max_bytes=1 << 20)
    for i, n in enumerate((10, 20, 30)):
        spool.append(batch(i, n=n))
    spool.close()
    (seg,) = segments(directory)
    data = seg.read_bytes()
    starts, off = [], 0
    while off < len(data):
        starts.append(off)
        off += HEADER.size + HEADER.unpack_from(data, off)[1]
    return seg, starts


@pytest.mark.parametrize("cut", ["mid_payload", "mid_header", "only_magic", "one_byte_short"])
def test_torn_last_record_is_dropped_and_everything_before_kept(tmp_path: Path, cut: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    seg, starts = write_three(tmp_path)
    size = seg.stat().st_size
    keep = {"mid_payload": starts[2] + HEADER.size + 7, "mid_header": starts[2] + 12, "only_magic": starts[2] + 4,
            "one_byte_short": size - 1}[cut]
    with seg.open("r+b") as f:
        f.truncate(keep)
    metrics = Metrics()
    spool = Spool(tmp_path, max_bytes=1 << 20, metrics=metrics)  # a restart after the crash
    with caplog.at_level(logging.ERROR, logger="collector.spool"):
        got = drain(spool)
    assert got == batch(0, n=10) + batch(1, n=20)
    claimed = 30 if keep >= starts[2] + HEADER.size else 0  # the header says how many rows were lost, if whole
    assert dropped(metrics, "spool_torn") == claimed
    assert "torn record" in caplog.text and "everything before it kept" in caplog.text
    assert segments(tmp_path) == [] and spool.empty


def test_checksum_mismatch_drops_only_that_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seg, starts = write_three(tmp_path)
    with seg.open("r+b") as f:  # one bit flipped in the middle record's payload
        f.seek(starts[1] + HEADER.size + 5)
        byte = f.read(1)
        f.seek(starts[1] + HEADER.size + 5)
        f.write(bytes([byte[0] ^ 0x10]))
    metrics = Metrics()
    spool = Spool(tmp_path, max_bytes=1 << 20, metrics=metrics)
    with caplog.at_level(logging.ERROR, logger="collector.spool"):
        got = drain(spool)
    assert got == batch(0, n=10) + batch(2, n=30)
    assert dropped(metrics, "spool_corrupt") == 20
    assert "corrupt record" in caplog.text


def test_a_smashed_header_is_skipped_by_resynchronising(tmp_path: Path) -> None:
    seg, starts = write_three(tmp_path)
    with seg.open("r+b") as f:  # the middle record's magic and length overwritten
        f.seek(starts[1])
        f.write(b"\xff" * 10)
    metrics = Metrics()
    got = drain(Spool(tmp_path, max_bytes=1 << 20, metrics=metrics))
    assert got == batch(0, n=10) + batch(2, n=30)
    assert dropped(metrics, "spool_corrupt") == 0  # the header naming the rows is gone: bytes dropped, logged


def test_a_valid_checksum_over_an_undecodable_payload_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(batch(0))
    import collector.spool as module

    blob = module._frame(b"not zlib at all", 7, 0, 0)
    spool.append(batch(1))
    spool.close()
    (seg,) = segments(tmp_path)
    with seg.open("ab") as f:
        f.write(blob)
    metrics = Metrics()
    assert drain(Spool(tmp_path, max_bytes=1 << 20, metrics=metrics)) == batch(0) + batch(1)
    assert dropped(metrics, "spool_corrupt") == 7


# -- the cap -------------------------------------------------------------------------------------------------------


def test_cap_drops_oldest_segments_first_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    spool = Spool(tmp_path, max_bytes=8192, segment_bytes=1024, metrics=metrics)
    with caplog.at_level(logging.ERROR, logger="collector.spool"):
        for i in range(200):
            assert spool.append(batch(i))
            assert spool.size_bytes <= 8192
    assert sum(p.stat().st_size for p in segments(tmp_path)) <= 8192
    lost = dropped(metrics, "spool_cap")
    got = drain(spool)
    assert lost > 0 and lost + len(got) == 2000  # every row is either kept or counted as dropped
    # the newest rows were kept, in order: what is left is a contiguous run ending with the last batch
    prices = [t.price_usd for t in got]
    assert prices == [float(i * 1000 + k) for i in range(200 - len(got) // 10, 200) for k in range(10)]
    assert "over COINPULSE_SPOOL_MAX_BYTES=8192: dropped its oldest segment" in caplog.text
    assert "from=2026-11-01T12:00:00" in caplog.text  # the time range lost, for a backfill


def test_a_batch_bigger_than_the_cap_is_refused(tmp_path: Path) -> None:
    metrics = Metrics()
    spool = Spool(tmp_path, max_bytes=4096, metrics=metrics)
    huge = [Tick(T0 + timedelta(microseconds=i), f"asset-{i}", 1.0 + i / 7, "ws") for i in range(5000)]
    assert spool.append(huge) is False
    assert dropped(metrics, "spool_cap") == 5000
    assert spool.append(batch(1))  # smaller ones still fit


# -- restarts and ownership ----------------------------------------------------------------------------------------


def test_a_restart_continues_where_the_drain_stopped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    for i in range(10):
        spool.append(batch(i))
    part = spool.read(30)
    assert part is not None
    spool.ack(part)
    unacked = spool.read(20)  # read but never acknowledged (a crash before the commit)
    assert unacked is not None
    spool.close()
    metrics = Metrics()
    again = Spool(tmp_path, max_bytes=1 << 20, metrics=metrics)
    assert sample(metrics, "coinpulse_spool_rows") == 100  # headers counted before anything is opened
    got = drain(again)
    assert got == [t for i in range(3, 10) for t in batch(i)]  # acked rows are not replayed; unacked ones are
    assert sample(metrics, "coinpulse_spool_rows") == 0


def test_a_lost_drain_position_replays_rather_than_loses(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for i in range(4):
        spool.append(batch(i))
    part = spool.read(10)
    assert part is not None
    spool.ack(part)
    spool.close()
    (tmp_path / "drain.pos").unlink()
    assert drain(Spool(tmp_path, max_bytes=1 << 20)) == [t for i in range(4) for t in batch(i)]


def test_new_segments_never_reuse_names_an_earlier_run_left(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(batch(0))
    spool.append(batch(1))
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20)
    again.append(batch(2))
    assert [p.name for p in segments(tmp_path)] == ["0000000000000001.seg", "0000000000000002.seg"]
    assert drain(again) == batch(0) + batch(1) + batch(2)


def test_two_collectors_cannot_share_a_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path, max_bytes=1 << 20)
    first.append(batch(0))
    second = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(SpoolError, match="in use by another collector"):
        second.append(batch(1))
    first.close()
    second.append(batch(1))  # free once the owner is gone
    assert drain(second) == batch(0) + batch(1)


def test_an_unusable_directory_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match=r"^COINPULSE_SPOOL_DIR: cannot read .*file/spool: Not a directory$"):
        Spool(blocker / "spool", max_bytes=1 << 20)
    spool = Spool(blocker.with_name("elsewhere"), max_bytes=1 << 20)
    blocker.rename(blocker.with_name("elsewhere"))  # the path turns into a file after the start
    with pytest.raises(SpoolError, match=r"^COINPULSE_SPOOL_DIR: cannot use .*elsewhere: "):
        spool.append(batch(0))


_CHILD = """
import sys
from pathlib import Path
sys.path[:0] = [{root!r}, {tests!r}]
from test_spool import batch
from collector.spool import Spool
spool = Spool(Path({dir!r}), max_bytes=1 << 30, segment_bytes=1 << 14)
i = 0
while True:
    spool.append(batch(i, n=200))
    sys.stdout.write(f"{{i}}\\n")
    sys.stdout.flush()
    i += 1
"""


@pytest.mark.slow
def test_sigkill_while_appending_keeps_every_acknowledged_batch(tmp_path: Path) -> None:
    """A real process appends as fast as it can and is killed with SIGKILL at an arbitrary moment; every batch
    it saw acknowledged is read back intact and in order, and the spool ends in a consistent state."""
    for attempt in range(2):
        directory = tmp_path / f"run{attempt}"
        code = _CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), dir=str(directory))
        with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            acked = -1
            for line in child.stdout:  # let it run until a few segments exist, then kill it mid-stride
                acked = int(line)
                if acked >= 60 + 23 * attempt:
                    break
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            rest = child.stdout.read().split()
        if rest:
            acked = int(rest[-1])
        got = drain(Spool(directory, max_bytes=1 << 30))
        n = len(got) // 200
        assert len(got) == 200 * n and n >= acked + 1  # whole batches only, every acknowledged one
        assert got == [t for i in range(n) for t in batch(i, n=200)]  # in order, nothing invented
        assert segments(directory) == []


# -- the queue's overflow ------------------------------------------------------------------------------------------


def test_full_queue_overflows_into_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    queue = RecordQueue(15, overflow=spool.append)
    assert queue.put(batch(0))
    assert queue.put(batch(1))  # does not fit: spooled instead of refused
    assert len(queue) == 10 and spool.rows == 10
    assert drain(spool) == batch(1)


def test_overflow_failure_is_a_refusal(tmp_path: Path) -> None:
    holder = Spool(tmp_path, max_bytes=1 << 20)
    holder.append(batch(0))
    other = Spool(tmp_path, max_bytes=1 << 20)  # locked out: its appends fail
    queue = RecordQueue(5, overflow=other.append)
    assert queue.put(batch(1)) is False


def test_take_due_never_waits() -> None:
    now = [0.0]
    queue = RecordQueue(100, clock=lambda: now[0])
    queue.put(batch(0, n=3))
    assert queue.take_due(10, max_age=0.5) == []  # neither full nor old enough
    now[0] = 0.6
    assert len(queue.take_due(10, max_age=0.5)) == 3
    queue.put(batch(1, n=12))
    assert len(queue.take_due(10, max_age=0.5)) == 10  # full enough
    assert len(queue.take_all(100)) == 2


# -- the previous format, and what the cap drops ----------------------------------------------------------------------

V1_FIXTURE = ROOT / "tests" / "fixtures" / "spool_v1"


def v1_records() -> list[Record]:
    """What tests/fixtures/spool_v1 holds (see its README)."""
    return [*ticks(40), *ticks(3, ("solana",)), asset_snapshot(), exchange_snapshot(), market_snapshot(),
            rate_snapshot(), *ticks(7, ("dogecoin", "bitcoin"), source="rest")]


def copy_v1_fixture(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for seg in V1_FIXTURE.glob("*.seg"):
        (directory / seg.name).write_bytes(seg.read_bytes())
    return directory


def test_a_spool_the_previous_version_left_drains_then_new_records_after_it(tmp_path: Path) -> None:
    spool_dir = copy_v1_fixture(tmp_path / "spool")
    assert (spool_dir / "0000000000000001.seg").read_bytes()[:4] == b"\xc5CPR"  # really the old format
    metrics = Metrics()
    spool = Spool(spool_dir, max_bytes=1 << 20, metrics=metrics)
    assert spool.rows == 54 and not spool.empty
    first = spool.read(1000)
    assert first is not None and first.ticks is None  # format 1: every row decoded as a record
    assert first.all_records() == v1_records() and first.count == 54
    # a new run appends format-2 records to a new segment: the drain reads the old ones first, then these
    for i in range(3):
        spool.append(batch(i))
    spool.ack(first)
    assert drain(spool) == [t for i in range(3) for t in batch(i)]
    assert spool.empty and segments(spool_dir) == []
    assert sample(metrics, "coinpulse_spool_rows_drained_total") == 54 + 30
    assert dropped(metrics, "spool_corrupt") == 0


def test_reads_join_the_tick_rows_of_several_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    sent = [ticks(10, ("bitcoin",)), [asset_snapshot(), *ticks(5, ("ethereum",))], ticks(10, ("solana",))]
    for b in sent:
        spool.append(b)
    got = spool.read(100)
    assert got is not None and got.ticks is not None and got.count == 26 and got.rows == 26
    assert got.ticks.ticks() == [*sent[0], *sent[1][1:], *sent[2]]  # one COPY for all of them, in order
    assert got.records == [asset_snapshot()]
    assert set(got.ticks.assets) == {"bitcoin", "ethereum", "solana"}


def multi_asset_batch(i: int) -> list[Tick]:
    """Batch ``i``: one frame a second, 3 assets, 4 frames: 12 ticks."""
    return [Tick(T0 + timedelta(seconds=4 * i + f), asset, float(i * 100 + f * 10 + j + 1), "ws")
            for f in range(4) for j, asset in enumerate(("bitcoin", "ethereum", "solana"))]


def test_drops_at_the_cap_are_handed_to_on_drop_per_asset(tmp_path: Path) -> None:
    metrics = Metrics()
    calls: list[list[DroppedSpan]] = []
    spool = Spool(tmp_path, max_bytes=8192, segment_bytes=1024, metrics=metrics, on_drop=calls.append)
    for i in range(120):
        assert spool.append(multi_asset_batch(i))
    kept = drain(spool)
    assert calls and dropped(metrics, "spool_cap") == sum(s.rows for c in calls for s in c)
    assert len(kept) + sum(s.rows for c in calls for s in c) == 120 * 12
    oldest_kept = min(t.time for t in kept)
    for spans in calls:
        assert {s.asset_id for s in spans} == {"bitcoin", "ethereum", "solana"}  # one span per asset per drop
        assert all(s.first <= s.last < oldest_kept for s in spans)
    # together the spans cover every dropped tick: from the first tick ever spooled to just before the kept ones
    for asset in ("bitcoin", "ethereum", "solana"):
        mine = sorted((s.first, s.last) for c in calls for s in c if s.asset_id == asset)
        assert mine[0][0] == T0
        assert mine[-1][1] == max(t.time for i in range(120) for t in multi_asset_batch(i)
                                  if t.asset_id == asset and t.time < oldest_kept)


def test_a_format_1_segment_dropped_at_the_cap_is_reported_too(tmp_path: Path) -> None:
    spool_dir = copy_v1_fixture(tmp_path / "spool")
    calls: list[list[DroppedSpan]] = []
    spool = Spool(spool_dir, max_bytes=4096, segment_bytes=1024, on_drop=calls.append)
    while not calls:
        assert spool.append(batch(len(calls)))
    spans = {s.asset_id: s for s in calls[0]}
    v1_ticks = [r for r in v1_records() if type(r) is Tick]
    assert set(spans) == {t.asset_id for t in v1_ticks}
    for asset_id, span in spans.items():
        times = [t.time for t in v1_ticks if t.asset_id == asset_id]
        assert (span.first, span.last, span.rows) == (min(times), max(times), len(times))


def test_a_batch_bigger_than_the_cap_is_reported_as_dropped(tmp_path: Path) -> None:
    calls: list[list[DroppedSpan]] = []
    spool = Spool(tmp_path, max_bytes=4096, on_drop=calls.append)
    huge = [Tick(T0 + timedelta(microseconds=i), f"asset-{i % 50}", 1.0 + i / 7, "ws") for i in range(5000)]
    assert spool.append(huge) is False
    assert len(calls) == 1 and sum(s.rows for s in calls[0]) == 5000 and len(calls[0]) == 50


def test_a_failing_on_drop_does_not_stop_the_spool(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def boom(spans: list[DroppedSpan]) -> None:
        raise RuntimeError("listener broken")

    spool = Spool(tmp_path, max_bytes=8192, segment_bytes=1024, on_drop=boom)
    with caplog.at_level(logging.ERROR, logger="collector.spool"):
        for i in range(120):
            assert spool.append(multi_asset_batch(i))
    assert "on_drop callback failed" in caplog.text
    assert drain(spool)  # the newest rows are still there


def test_drops_at_the_cap_are_kept_on_disk_until_forgotten(tmp_path: Path) -> None:
    calls: list[list[DroppedSpan]] = []
    spool = Spool(tmp_path, max_bytes=8192, segment_bytes=1024, on_drop=calls.append)
    for i in range(120):
        assert spool.append(multi_asset_batch(i))
    given = [s for c in calls for s in c]
    assert given and spool.drops_pending
    spool.close()  # a crash or restart before the writer recorded them as gaps

    again = Spool(tmp_path, max_bytes=8192, segment_bytes=1024)
    assert again.drops_pending
    stored, lines = again.pending_drops()
    assert stored == given and lines == len(given)
    with (tmp_path / "dropped.spans").open("a", encoding="utf-8") as f:
        f.write('["bitcoin", 1, 2')  # a torn last line (a crash while appending): not a span, left alone
    stored, lines = again.pending_drops()
    assert stored == given and lines == len(given)
    again.forget_drops(2)
    assert again.pending_drops() == (given[2:], len(given) - 2)
    again.forget_drops(len(given) - 2)
    assert not again.drops_pending and again.pending_drops() == ([], 0)
    assert not (tmp_path / "dropped.spans").exists()
    again.close()
