"""The on-disk spool: where batches go while the database is away, until the writer drains them.

Append-only and crash-safe. ``COINPULSE_SPOOL_DIR`` holds::

    0000000000000001.seg   segments, oldest first; only the newest one of this process is appended to
    drain.pos              how far the drain has got in the oldest segment ("<segment> <offset>"), a hint
    spool.lock             flock'd by the process that owns the spool (two collectors never share one)

A segment is a sequence of records, one per batch of rows, each written whole and then fsync'd before
``append`` returns (a new segment's directory entry is fsync'd too), so a batch the spool accepted survives
a crash of the process or the machine. A record is a 32-byte little-endian header and a payload::

    magic b"\\xc5CPR" | payload length u32 | rows u32 | min time i64 | max time i64 | CRC-32 u32

The CRC-32 (zlib) covers the header fields after the magic and the payload, which is zlib-compressed JSON
of the rows, column by column (times as integer microseconds since the epoch, so a replay carries exactly
the same keys).

Reading is strict: a record cut short at the end of a segment (a crash in the middle of a write) is a
*torn* record, dropped with everything before it kept; a record whose checksum does not match is *corrupt*,
dropped, and reading goes on at the next record that checks out. Both are counted in
``coinpulse_rows_dropped_total{reason="spool_torn"|"spool_corrupt"}``.

**Cap** (``max_bytes``, ``COINPULSE_SPOOL_MAX_BYTES``): before a record that would take the spool over its
cap is written, whole segments are deleted **oldest first** until it fits: the newest data is kept (it is
what dashboards and alerts look at, and older holes can be backfilled from CoinCap's history). Every drop
is logged at ERROR with the rows and time range lost, and counted in
``coinpulse_rows_dropped_total{reason="spool_cap"}``.

**Drain**: ``read(max_rows)`` returns the oldest records not yet drained (whole records, up to
``max_rows`` rows, at least one); after the rows are committed the writer calls ``ack(batch)``, which
moves the drain position past them and deletes segments that are done. Until then the same rows are read
again, so a crash between commit and ack replays rows the database already has: the writer's
``ON CONFLICT DO NOTHING`` path makes that harmless. A restarted collector drains what an earlier run left.

Nothing is written to disk until something is spooled (a collector whose database never goes away never
creates the directory); the lock is taken then, or when rows an earlier run left are first read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import struct
import threading
import typing
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from collector.coincap.models import AssetSnapshot, ExchangeSnapshot, MarketSnapshot, RateSnapshot, Record, Tick
from collector.errors import CoinPulseError
from collector.metrics import Metrics

__all__ = ["HEADER", "MAGIC", "Spool", "SpoolError", "SpooledBatch", "decode_payload", "encode_payload"]

log = logging.getLogger(__name__)

MAGIC = b"\xc5CPR"
HEADER = struct.Struct("<4sIIqqI")  # magic, payload length, rows, min time us, max time us, crc32
_CHECKED = slice(4, HEADER.size - 4)  # the header bytes the CRC covers (after the magic, before the CRC)
_MAX_PAYLOAD = 256 * 1024 * 1024  # a record claiming more is not one of ours
_SEGMENT = re.compile(r"^(\d{16})\.seg$")
_CURSOR = "drain.pos"
_LOCK = "spool.lock"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

# -- the payload: rows as JSON, grouped by kind --------------------------------------------------------------

_KINDS: dict[str, type[Any]] = {"t": Tick, "a": AssetSnapshot, "e": ExchangeSnapshot, "m": MarketSnapshot,
                                "r": RateSnapshot}
_KIND_OF: dict[type[Any], str] = {cls: kind for kind, cls in _KINDS.items()}


def _datetime_fields(cls: type[Any]) -> tuple[int, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(i for i, name in enumerate(cls._fields) if datetime in (hints[name], *typing.get_args(hints[name])))


_TIMES: dict[str, tuple[int, ...]] = {kind: _datetime_fields(cls) for kind, cls in _KINDS.items()}


def _micros(value: datetime) -> int:
    """Exact microseconds since the epoch (the float fast path, checked, else integer arithmetic)."""
    us = round(value.timestamp() * 1e6)
    return us if us % 1_000_000 == value.microsecond else (value - _EPOCH) // _US


def _datetime(us: int) -> datetime:
    try:
        value = datetime.fromtimestamp(us / 1e6, UTC)
    except (OverflowError, OSError, ValueError):
        return _EPOCH + timedelta(microseconds=us)
    return value if value.microsecond == us % 1_000_000 else _EPOCH + timedelta(microseconds=us)


def encode_payload(records: Sequence[Record]) -> tuple[bytes, int, int]:
    """The compressed payload of ``records`` (in their order) and their min and max ``time`` in microseconds.

    JSON, column-wise: ``[[kind, [column, ...]], ...]``, one entry per run of records of one kind, times as
    integer microseconds. Columns decode several times faster than rows, and compress better.
    """
    runs: list[tuple[str, list[Record]]] = []
    for record in records:
        kind = _KIND_OF[type(record)]
        if not runs or runs[-1][0] != kind:
            runs.append((kind, []))
        runs[-1][1].append(record)
    memo: dict[datetime, int] = {}  # the ticks of one frame share one receipt time

    def micros(value: datetime | None) -> int | None:
        if value is None:
            return None
        us = memo.get(value)
        if us is None:
            us = memo[value] = _micros(value)
        return us

    out: list[tuple[str, list[list[Any]]]] = []
    for kind, rows in runs:
        columns: list[list[Any]] = [list(column) for column in zip(*rows, strict=True)]
        for i in _TIMES[kind]:
            columns[i] = [micros(v) for v in columns[i]]
        out.append((kind, columns))
    stamps = [us for _, columns in out for us in columns[0]]
    text = json.dumps(out, separators=(",", ":"))
    return zlib.compress(text.encode(), 1), min(stamps, default=0), max(stamps, default=0)


def decode_payload(payload: bytes) -> list[Record]:
    """The records of a payload written by ``encode_payload``; ValueError if it is not one."""
    try:
        runs = json.loads(zlib.decompress(payload))
        memo: dict[int, datetime] = {}

        def when(us: int | None) -> datetime | None:
            if us is None:
                return None
            value = memo.get(us)
            if value is None:
                value = memo[us] = _datetime(us)
            return value

        out: list[Record] = []
        for kind, columns in runs:
            cls, times = _KINDS[kind], _TIMES[kind]
            if len(columns) != len(cls._fields) or len({len(c) for c in columns}) != 1:
                raise ValueError(f"{kind}: {len(columns)} columns of unequal or wrong length")
            for i in times:
                columns[i] = [when(v) for v in columns[i]]
            out.extend(map(cls._make, zip(*columns, strict=True)))
        return out
    except (zlib.error, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"not a spool payload: {type(exc).__name__}: {exc}") from None


def _frame(payload: bytes, rows: int, lo: int, hi: int) -> bytes:
    fields = HEADER.pack(MAGIC, len(payload), rows, lo, hi, 0)[_CHECKED]
    crc = zlib.crc32(payload, zlib.crc32(fields))
    return HEADER.pack(MAGIC, len(payload), rows, lo, hi, crc) + payload


# -- the spool -------------------------------------------------------------------------------------------------


class SpoolError(CoinPulseError):
    """The spool directory cannot be used (not writable, disk full, owned by another collector)."""


@dataclass(eq=False)
class _Segment:
    seq: int
    path: Path
    size: int = 0  # bytes on disk
    rows: int = 0  # rows not yet drained (from record headers)
    lo: int | None = None  # time range of its rows, microseconds
    hi: int | None = None

    def note(self, rows: int, lo: int, hi: int) -> None:
        self.rows += rows
        if rows:
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)


@dataclass(frozen=True)
class SpooledBatch:
    """Rows read from the spool; hand it back to ``Spool.ack`` once they are committed."""

    records: list[Record]
    segment: int
    start: int
    end: int
    rows: int  # rows the acknowledged records hold (records that failed to decode are already counted)


_Raw = tuple[int, int, int, list[tuple[int, int, bytes]]]
"""Undecoded records read from one segment: (segment, start, end, [(offset, rows, payload), ...])."""


@dataclass
class _Scan:
    rows: int = 0
    records: int = 0
    end: int = 0  # offset after the last record that looks whole
    lo: int | None = None
    hi: int | None = None
    extent: list[tuple[int, int, int, int]] = field(default_factory=list)  # (offset, rows, lo, hi) per record


class Spool:
    """Thread-safe: any thread may ``append`` (the writer, and sources whose queue is full); one thread drains."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int | None = None,
                 metrics: Metrics | None = None) -> None:
        if max_bytes < 4096:
            raise ValueError("max_bytes must be at least 4096")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(64 * 1024, min(16 * 1024 * 1024, max_bytes // 16))
        self._metrics = metrics
        self._lock = threading.RLock()
        self._opened = False
        self._lock_fd: int | None = None
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None  # the segment this process appends to
        self._active_fd: int | None = None
        self._read_seq: int | None = None
        self._read_off = 0
        self._next_seq = 1
        self._closed = False
        self._load_segments()  # read-only: what an earlier run left, for ``empty`` and the metrics

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes the spool takes on disk (what the cap limits)."""
        with self._lock:
            return sum(s.size for s in self._segments)

    @property
    def rows(self) -> int:
        """Rows waiting to be drained (as the record headers count them)."""
        with self._lock:
            return sum(s.rows for s in self._segments)

    @property
    def empty(self) -> bool:
        with self._lock:
            return not self._segments

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.spool_bytes.set(sum(s.size for s in self._segments))
            self._metrics.spool_rows.set(sum(s.rows for s in self._segments))

    def _load_segments(self) -> None:
        self._segments = []
        for seq, path in self._segment_files():
            scan = _scan_headers(path)
            seg = _Segment(seq, path, path.stat().st_size, scan.rows, scan.lo, scan.hi)
            self._segments.append(seg)
            self._next_seq = max(self._next_seq, seq + 1)
        self._publish()

    def _segment_files(self) -> list[tuple[int, Path]]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SpoolError(f"COINPULSE_SPOOL_DIR: cannot read {self.directory}: {exc.strerror}") from None
        found = [(int(m.group(1)), self.directory / n) for n in names if (m := _SEGMENT.match(n))]
        return sorted(found)

    # -- opening -----------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory, take its lock and load what an earlier run left. Idempotent; ``append`` and
        ``read`` call it. Raises SpoolError (one line) when the directory cannot be used."""
        with self._lock:
            if self._opened:
                return
            if self._closed:
                raise SpoolError("the spool is closed")
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise SpoolError(f"COINPULSE_SPOOL_DIR: cannot use {self.directory}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise SpoolError(f"COINPULSE_SPOOL_DIR {self.directory} is in use by another collector: give "
                                 "each collector its own spool directory") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock_fd = fd
            self._load_segments()
            self._load_cursor()
            self._opened = True
            self._publish()
            if self._segments:
                log.warning("spool holds rows=%d bytes=%d segments=%d from an earlier run dir=%s: they are "
                            "written to the database as soon as it answers", sum(s.rows for s in self._segments),
                            sum(s.size for s in self._segments), len(self._segments), self.directory)

    def _load_cursor(self) -> None:
        self._read_seq, self._read_off = None, 0
        try:
            seq_text, off_text = (self.directory / _CURSOR).read_text(encoding="ascii").split()
            seq, off = int(seq_text), int(off_text)
        except (OSError, ValueError):
            return
        self._next_seq = max(self._next_seq, seq + 1)  # never reuse a segment name the hint may refer to
        if not self._segments:
            return
        oldest = self._segments[0]
        if seq != oldest.seq or not 0 <= off <= oldest.size:
            return
        scan = _scan_headers(oldest.path)
        behind = [e for e in scan.extent if e[0] < off]
        if off != scan.end and off not in {e[0] for e in scan.extent}:
            return  # not a record boundary: ignore the hint, read the segment from its start
        self._read_seq, self._read_off = seq, off
        oldest.rows -= sum(e[1] for e in behind)

    def close(self) -> None:
        with self._lock:
            if self._active_fd is not None:
                os.close(self._active_fd)
                self._active_fd, self._active = None, None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None
            self._opened = False
            self._closed = True

    # -- appending ---------------------------------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> bool:
        """Write ``records`` as one record, durably; True once it is on disk. False (logged, counted) when the
        batch alone exceeds the cap. Raises SpoolError when the disk refuses the write."""
        if not records:
            return True
        payload, lo, hi = encode_payload(records)
        blob = _frame(payload, len(records), lo, hi)
        with self._lock:
            self.open()
            if len(blob) > self.max_bytes:
                self._count_drop("spool_cap", len(records))
                log.error("spool: one batch of rows=%d (%d bytes) exceeds COINPULSE_SPOOL_MAX_BYTES=%d: dropped",
                          len(records), len(blob), self.max_bytes)
                return False
            self._make_room(len(blob))
            seg = self._active
            if seg is None or (seg.size > 0 and seg.size + len(blob) > self.segment_bytes):
                seg = self._rotate()
            assert self._active_fd is not None
            try:
                _write_all(self._active_fd, blob)
                os.fsync(self._active_fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._active_fd, seg.size)  # no half record left behind
                raise SpoolError(f"spool write to {seg.path} failed: {exc.strerror}") from None
            seg.size += len(blob)
            seg.note(len(records), lo, hi)
            self._publish()
        if self._metrics is not None:
            self._metrics.spool_rows_spooled.inc(len(records))
        return True

    def _rotate(self) -> _Segment:
        if self._active_fd is not None:
            os.close(self._active_fd)
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        path = self.directory / f"{seq:016d}.seg"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            _fsync_dir(self.directory)
        except OSError as exc:
            self._active_fd, self._active = None, None
            raise SpoolError(f"cannot create spool segment {path}: {exc.strerror}") from None
        seg = _Segment(seq, path)
        self._segments.append(seg)
        self._active, self._active_fd = seg, fd
        return seg

    def _make_room(self, needed: int) -> None:
        """Oldest-first: delete whole segments until ``needed`` more bytes fit under the cap."""
        while self._segments and sum(s.size for s in self._segments) + needed > self.max_bytes:
            seg = self._segments[0]
            lo = None if seg.lo is None else _EPOCH + timedelta(microseconds=seg.lo)
            hi = None if seg.hi is None else _EPOCH + timedelta(microseconds=seg.hi)
            log.error("spool over COINPULSE_SPOOL_MAX_BYTES=%d: dropped its oldest segment rows=%d bytes=%d "
                      "from=%s to=%s; fill the hole with `coinpulse backfill` once the database is back",
                      self.max_bytes, seg.rows, seg.size, lo.isoformat() if lo else "-",
                      hi.isoformat() if hi else "-")
            self._count_drop("spool_cap", seg.rows)
            self._delete(seg)

    def _delete(self, seg: _Segment) -> None:
        if seg is self._active:
            if self._active_fd is not None:
                os.close(self._active_fd)
            self._active, self._active_fd = None, None
        self._segments.remove(seg)
        if self._read_seq == seg.seq:
            self._read_seq, self._read_off = None, 0
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()
        if not self._segments:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / _CURSOR).unlink()
        self._publish()

    def _count_drop(self, reason: str, rows: int) -> None:
        if self._metrics is not None:
            self._metrics.rows_dropped.labels(reason=reason).inc(rows)

    # -- draining ----------------------------------------------------------------------------------------------

    def read(self, max_rows: int) -> SpooledBatch | None:
        """The oldest rows not yet acknowledged: whole records, at least one, up to ``max_rows`` rows; None when
        the spool is empty. Torn and corrupt records on the way are dropped (logged, counted)."""
        with self._lock:
            if not self._segments:
                return None
            self.open()
            raw = self._read_raw(max_rows)
        if raw is None:
            return None
        seq, start, end, payloads = raw
        records: list[Record] = []
        rows = 0
        for offset, claimed, payload in payloads:
            try:
                decoded = decode_payload(payload)
                if len(decoded) != claimed:
                    raise ValueError(f"{len(decoded)} rows where the header says {claimed}")
            except ValueError as exc:
                log.error("spool record undecodable segment=%d offset=%d rows=%d: dropped: %s", seq, offset,
                          claimed, exc)
                self._count_drop("spool_corrupt", claimed)
                rows += claimed
                continue
            records.extend(decoded)
            rows += claimed
        return SpooledBatch(records, seq, start, end, rows)

    def _position(self) -> int:
        """Where the drain stands in the oldest segment."""
        return self._read_off if self._segments and self._read_seq == self._segments[0].seq else 0

    def _read_raw(self, max_rows: int) -> _Raw | None:
        while self._segments:
            seg = self._segments[0]
            self._read_seq, self._read_off = seg.seq, self._position()
            if self._read_off >= seg.size:
                self._delete(seg)  # done (only reached when it was drained up to its end)
                continue
            with seg.path.open("rb") as f:
                got = self._read_records(seg, f, self._read_off, max_rows)
                if not got:  # a bad record at the read position: drop it, then try again from where that leaves us
                    self._skip_bad(seg, f, self._read_off)
                    continue
            return seg.seq, self._read_off, got[-1][0] + HEADER.size + len(got[-1][2]), got
        return None

    def _read_records(self, seg: _Segment, f: BinaryIO, off: int, max_rows: int) -> list[tuple[int, int, bytes]]:
        """Whole valid records from ``off`` on, up to the first bad one."""
        got: list[tuple[int, int, bytes]] = []
        rows = 0
        while off < seg.size:
            f.seek(off)
            problem, claimed, payload = _check(f, seg.size - off)
            if problem is not None or (got and rows + claimed > max_rows):
                break
            got.append((off, claimed, payload))
            rows += claimed
            off += HEADER.size + len(payload)
            if rows >= max_rows:
                break
        return got

    def _skip_bad(self, seg: _Segment, f: BinaryIO, off: int) -> None:
        """A torn or corrupt record at the read position: drop it and resume at the next valid record, if any."""
        f.seek(off)
        problem, claimed, _ = _check(f, seg.size - off)
        assert problem is not None
        resume = _resync(f, off + 1, seg.size)
        if resume is None:  # nothing valid after it: a torn last record (a crash mid-write), or garbage
            log.error("spool segment=%d: %s record at offset=%d (claimed rows=%d, %d bytes to the end): dropped, "
                      "everything before it kept", seg.seq, problem, off, claimed, seg.size - off)
            self._count_drop(f"spool_{problem}", claimed)
            seg.rows = max(0, seg.rows - claimed)
            if seg is self._active:
                self._read_off = seg.size
            else:
                self._delete(seg)
            self._publish()
            return
        log.error("spool segment=%d: corrupt record at offset=%d (claimed rows=%d): dropped %d bytes, reading on "
                  "at offset=%d", seg.seq, off, claimed, resume - off, resume)
        self._count_drop("spool_corrupt", claimed)
        seg.rows = max(0, seg.rows - claimed)
        self._read_off = resume
        self._save_cursor()
        self._publish()

    def ack(self, batch: SpooledBatch) -> None:
        """The rows of ``batch`` are committed: move past them (deleting the segment when it is done)."""
        with self._lock:
            seg = self._segments[0] if self._segments else None
            if seg is None or seg.seq != batch.segment or self._position() != batch.start:
                return  # dropped by the cap in the meantime
            self._read_seq, self._read_off = seg.seq, batch.end
            seg.rows = max(0, seg.rows - batch.rows)
            if self._read_off >= seg.size:
                self._delete(seg)
            else:
                self._save_cursor()
            self._publish()
        if self._metrics is not None:
            self._metrics.spool_rows_drained.inc(len(batch.records))

    def _save_cursor(self) -> None:
        """A hint only (no fsync): if it is lost, the segment is read again and the replay changes nothing."""
        tmp = self.directory / (_CURSOR + ".tmp")
        try:
            tmp.write_text(f"{self._read_seq} {self._read_off}\n", encoding="ascii")
            os.replace(tmp, self.directory / _CURSOR)
        except OSError as exc:
            log.warning("spool: cannot save the drain position: %s", exc.strerror)


# -- reading helpers ---------------------------------------------------------------------------------------------


def _check(f: BinaryIO, left: int) -> tuple[str | None, int, bytes]:
    """Is a valid record at ``f``'s position (``left`` bytes from there to the end of the segment)?
    (None, rows, payload) if so, else ("torn" | "corrupt", claimed rows, b"")."""
    head = f.read(min(HEADER.size, left))
    if len(head) < HEADER.size:  # the end of the segment in the middle of a header
        return ("torn" if MAGIC.startswith(head[:4]) or head.startswith(MAGIC) else "corrupt"), 0, b""
    magic, length, rows, _, _, crc = HEADER.unpack(head)
    if magic != MAGIC or length > _MAX_PAYLOAD:
        return "corrupt", 0, b""
    if HEADER.size + length > left:
        return "torn", rows, b""
    payload = f.read(length)
    if len(payload) != length or zlib.crc32(payload, zlib.crc32(head[_CHECKED])) != crc:
        return "corrupt", rows, b""
    return None, rows, payload


def _resync(f: BinaryIO, start: int, end: int) -> int | None:
    """The offset of the next valid record at or after ``start`` (before ``end``), or None."""
    f.seek(start)
    data = f.read(max(0, end - start))
    at = data.find(MAGIC)
    while at >= 0:
        f.seek(start + at)
        if _check(f, end - start - at)[0] is None:
            return start + at
        at = data.find(MAGIC, at + 1)
    return None


def _scan_headers(path: Path) -> _Scan:
    """Rows and time range of a segment from its record headers (no checksums: that is the drain's job)."""
    scan = _Scan()
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            off = 0
            while off + HEADER.size <= size:
                f.seek(off)
                magic, length, rows, lo, hi, _ = HEADER.unpack(f.read(HEADER.size))
                if magic != MAGIC or length > _MAX_PAYLOAD or off + HEADER.size + length > size:
                    break
                scan.extent.append((off, rows, lo, hi))
                scan.rows += rows
                scan.records += 1
                if rows:
                    scan.lo = lo if scan.lo is None else min(scan.lo, lo)
                    scan.hi = hi if scan.hi is None else max(scan.hi, hi)
                off += HEADER.size + length
            scan.end = off
    except OSError as exc:
        log.error("spool: cannot read %s: %s", path, exc.strerror)
    return scan


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
