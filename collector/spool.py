"""The on-disk spool: where batches go while the database is away, until the writer drains them.

Append-only and crash-safe. ``COINPULSE_SPOOL_DIR`` holds::

    0000000000000001.seg   segments, oldest first; only the newest one of this process is appended to
    drain.pos              how far the drain has got in the oldest segment ("<segment> <offset>"), a hint
    spool.lock             flock'd by the process that owns the spool (two collectors never share one)
    dropped.spans          what the cap dropped, per asset and time range, until the writer has recorded it
                           in ingest_gaps (JSON lines, fsync'd: it survives a crash while the database is away)

A segment is a sequence of records, one per batch of rows, each written whole and then fsync'd before
``append`` returns (a new segment's directory entry is fsync'd too), so a batch the spool accepted survives
a crash of the process or the machine. A record is a 32-byte little-endian header and a payload::

    magic | payload length u32 | rows u32 | min time i64 | max time i64 | CRC-32 u32

The CRC-32 (zlib) covers the header fields after the magic and the payload. Times are integer microseconds
since the epoch, so a replay carries exactly the same keys. The magic says the record's format:

- ``b"\\xc5CP2"`` (format 2, written since the drain was made COPY-ready): the payload is zlib'd::

      meta length u32 (big-endian) | meta (JSON) | tick rows | other rows (JSON columns, possibly empty)

  *tick rows* are the ticks of the batch exactly as PostgreSQL's binary COPY takes them into ``price_ticks
  (time, asset_id, price_usd, source)``: per row a field count (int16 4), then each field as int32 length and
  bytes (timestamptz as int64 microseconds since 2000-01-01, text in UTF-8, float8 IEEE big-endian), without
  the COPY signature and trailer, which the writer adds, so rows of several records join into one COPY.
  *meta* is ``{"n": tick rows, "c": bytes of tick rows, "a": [[asset_id, first time, last time, rows], ...],
  "l": earliest time of a non-history tick or null}``: what the writer needs besides the bytes (the asset
  dimension rows to touch, the commit lag), and what a drop at the cap records as gaps. A drain therefore
  does no work per row: it decompresses and hands the bytes to COPY. The other kinds (snapshots, a few rows
  a minute) are the JSON columns of format 1, and so are ticks the tick encoder cannot take (a None where a
  value belongs; the database then refuses the row as it would have).
- ``b"\\xc5CPR"`` (format 1, written by earlier versions, still read): the payload is zlib'd JSON of all the
  rows, column by column (``encode_payload_v1``); a spool an earlier version left drains as it is.

Reading is strict: a record cut short at the end of a segment (a crash in the middle of a write) is a
*torn* record, dropped with everything before it kept; a record whose checksum does not match is *corrupt*,
dropped, and reading goes on at the next record that checks out. Both are counted in
``coinpulse_rows_dropped_total{reason="spool_torn"|"spool_corrupt"}``.

**Cap** (``max_bytes``, ``COINPULSE_SPOOL_MAX_BYTES``): before a record that would take the spool over its
cap is written, whole segments are deleted **oldest first** until it fits: the newest data is kept (it is
what dashboards and alerts look at, and older holes can be backfilled from CoinCap's history). Every drop
is logged at ERROR with the rows and time range lost, counted in
``coinpulse_rows_dropped_total{reason="spool_cap"}``, and handed to ``on_drop`` as one ``DroppedSpan`` per
asset (first and last dropped tick): the collector records them in ``ingest_gaps`` (reason ``spool_cap``)
once the database answers, and the gap worker backfills them.

**Drain**: ``read(max_rows)`` returns the oldest records not yet drained (whole records, up to
``max_rows`` rows, at least one; their tick rows joined into one ``TickRows``); after the rows are committed
the writer calls ``ack(batch)``, which moves the drain position past them and deletes segments that are
done. Until then the same rows are read again, so a crash between commit and ack replays rows the database
already has: the writer's ``ON CONFLICT DO NOTHING`` path makes that harmless. A restarted collector drains
what an earlier run left.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from collector.coincap.models import AssetSnapshot, ExchangeSnapshot, MarketSnapshot, RateSnapshot, Record, Tick
from collector.errors import CoinPulseError
from collector.metrics import Metrics

__all__ = [
    "HEADER",
    "MAGIC",
    "MAGIC_V1",
    "DroppedSpan",
    "Spool",
    "SpoolError",
    "SpooledBatch",
    "TickRows",
    "decode_payload",
    "decode_payload_v1",
    "decode_tick_rows",
    "encode_payload",
    "encode_payload_v1",
    "encode_ticks",
    "utc_from_micros",
]

log = logging.getLogger(__name__)

MAGIC = b"\xc5CP2"  # format 2: ticks as binary COPY rows
MAGIC_V1 = b"\xc5CPR"  # format 1: every row as JSON columns (read only)
_MAGIC_PREFIX = b"\xc5CP"
HEADER = struct.Struct("<4sIIqqI")  # magic, payload length, rows, min time us, max time us, crc32
_CHECKED = slice(4, HEADER.size - 4)  # the header bytes the CRC covers (after the magic, before the CRC)
_MAX_PAYLOAD = 256 * 1024 * 1024  # a record claiming more is not one of ours
_SEGMENT = re.compile(r"^(\d{16})\.seg$")
_CURSOR = "drain.pos"
_DROPS = "dropped.spans"
_LOCK = "spool.lock"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01, PostgreSQL's epoch, in microseconds since 1970-01-01

# -- the rows of other kinds: JSON columns (all of format 1) -------------------------------------------------

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


def utc_from_micros(us: int) -> datetime:
    """The UTC datetime ``us`` microseconds after the epoch (exact)."""
    return _datetime(us)


def _datetime(us: int) -> datetime:
    try:
        value = datetime.fromtimestamp(us / 1e6, UTC)
    except (OverflowError, OSError, ValueError):
        return _EPOCH + timedelta(microseconds=us)
    return value if value.microsecond == us % 1_000_000 else _EPOCH + timedelta(microseconds=us)


def _encode_columns(records: Sequence[Record]) -> tuple[bytes, int | None, int | None]:
    """JSON, column-wise: ``[[kind, [column, ...]], ...]``, one entry per run of records of one kind, times as
    integer microseconds (columns decode several times faster than rows, and compress better); with the min
    and max ``time``."""
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
    text = json.dumps(out, separators=(",", ":")).encode()
    return text, min(stamps, default=None), max(stamps, default=None)


def _decode_columns(text: bytes) -> list[Record]:
    runs = json.loads(text)
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


def encode_payload_v1(records: Sequence[Record]) -> tuple[bytes, int, int]:
    """Format 1 (what versions before format 2 wrote; kept to write such records in tests): the compressed
    JSON columns of ``records`` and their min and max ``time`` in microseconds."""
    text, lo, hi = _encode_columns(records)
    return zlib.compress(text, 1), lo or 0, hi or 0


def decode_payload_v1(payload: bytes) -> list[Record]:
    """The records of a format-1 payload; ValueError if it is not one."""
    try:
        return _decode_columns(zlib.decompress(payload))
    except (zlib.error, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"not a spool payload: {type(exc).__name__}: {exc}") from None


# -- ticks as binary COPY rows (format 2) ---------------------------------------------------------------------

_ROW_HEAD = struct.Struct(">hiq")  # field count (4), length of the timestamptz (8), microseconds since 2000
_PRICE = struct.Struct(">id")  # length of the float8 (8), the price
_LENGTH = struct.Struct(">i")
_META_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class TickRows:
    """Ticks as the rows of a binary COPY into ``price_ticks (time, asset_id, price_usd, source)`` (no COPY
    signature or trailer), with what the writer needs besides them. Times in microseconds since 1970."""

    data: bytes
    rows: int
    assets: dict[str, tuple[int, int, int]]  # asset_id -> (first time, last time, rows)
    lo: int
    hi: int
    live_lo: int | None  # the earliest time of a tick whose source is not "history"

    @staticmethod
    def join(parts: Sequence[TickRows]) -> TickRows | None:
        """One TickRows of ``parts``, in order (None for none)."""
        if len(parts) <= 1:
            return parts[0] if parts else None
        assets: dict[str, tuple[int, int, int]] = {}
        for part in parts:
            for asset_id, (t0, t1, n) in part.assets.items():
                had = assets.get(asset_id)
                assets[asset_id] = (t0, t1, n) if had is None else (min(had[0], t0), max(had[1], t1), had[2] + n)
        lives = [p.live_lo for p in parts if p.live_lo is not None]
        return TickRows(b"".join(p.data for p in parts), sum(p.rows for p in parts), assets,
                        min(p.lo for p in parts), max(p.hi for p in parts), min(lives) if lives else None)

    def ticks(self) -> list[Tick]:
        return decode_tick_rows(self.data)


def encode_ticks(ticks: Iterable[Tick]) -> TickRows | None:
    """The binary COPY rows of ``ticks`` (None for none). ValueError when a tick holds something the columns
    cannot (a None, a naive time, a non-string id): such ticks are written the slow way."""
    heads: dict[datetime, tuple[bytes, int]] = {}  # the ticks of one frame share one receipt time
    texts: dict[str, bytes] = {}
    spans: dict[str, list[int]] = {}
    parts: list[bytes] = []
    put = parts.append
    live_lo: int | None = None
    rows = 0
    try:
        for when, asset_id, price, source in ticks:
            head = heads.get(when)
            if head is None:
                if when.tzinfo is None:
                    raise TypeError("naive datetime")
                us = _micros(when)
                head = heads[when] = (_ROW_HEAD.pack(4, 8, us - _PG_EPOCH_US), us)
            us = head[1]
            put(head[0])
            text = texts.get(asset_id)
            if text is None:
                encoded = asset_id.encode()
                text = texts[asset_id] = _LENGTH.pack(len(encoded)) + encoded
            put(text)
            put(_PRICE.pack(8, price))
            text = texts.get(source)
            if text is None:
                encoded = source.encode()
                text = texts[source] = _LENGTH.pack(len(encoded)) + encoded
            put(text)
            span = spans.get(asset_id)
            if span is None:
                spans[asset_id] = [us, us, 1]
            else:
                span[2] += 1
                if us > span[1]:
                    span[1] = us
                elif us < span[0]:
                    span[0] = us
            if source != "history" and (live_lo is None or us < live_lo):
                live_lo = us
            rows += 1
    except (TypeError, AttributeError, ValueError, OverflowError, struct.error) as exc:
        raise ValueError(f"tick not encodable as COPY rows: {type(exc).__name__}: {exc}") from None
    if not rows:
        return None
    assets = {a: (s[0], s[1], s[2]) for a, s in spans.items()}
    return TickRows(b"".join(parts), rows, assets, min(s[0] for s in assets.values()),
                    max(s[1] for s in assets.values()), live_lo)


def _text_at(data: bytes, off: int, texts: dict[bytes, str]) -> tuple[str, int]:
    (length,) = _LENGTH.unpack_from(data, off)
    off += _LENGTH.size
    if not 0 <= length <= len(data) - off:
        raise ValueError(f"text of {length} bytes at offset {off - _LENGTH.size}")
    raw = data[off:off + length]
    text = texts.get(raw)
    if text is None:
        text = texts[raw] = raw.decode()
    return text, off + length


def decode_tick_rows(data: bytes) -> list[Tick]:
    """The ticks of binary COPY rows written by ``encode_ticks``; ValueError if they are not such rows."""
    out: list[Tick] = []
    texts: dict[bytes, str] = {}
    off, end = 0, len(data)
    try:
        while off < end:
            fields, length, us = _ROW_HEAD.unpack_from(data, off)
            if fields != 4 or length != 8:
                raise ValueError(f"row at offset {off}: {fields} fields, a time of {length} bytes")
            asset_id, off = _text_at(data, off + _ROW_HEAD.size, texts)
            length, price = _PRICE.unpack_from(data, off)
            if length != 8:
                raise ValueError(f"a price of {length} bytes at offset {off}")
            source, off = _text_at(data, off + _PRICE.size, texts)
            out.append(Tick(_datetime(us + _PG_EPOCH_US), asset_id, price, source))
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"not tick rows: {type(exc).__name__}: {exc}") from None
    return out


# -- the payload of format 2 ----------------------------------------------------------------------------------


def encode_payload(records: Sequence[Record]) -> tuple[bytes, int, int]:
    """The format-2 payload of ``records`` and their min and max ``time`` in microseconds."""
    ticks = [r for r in records if type(r) is Tick]
    others = [r for r in records if type(r) is not Tick] if len(ticks) != len(records) else []
    try:
        rows = encode_ticks(ticks)
    except ValueError:
        rows, others = None, list(records)  # ticks the columns cannot hold go the way of format 1
    text, lo, hi = _encode_columns(others) if others else (b"", None, None)
    lows = [t for t in (lo, None if rows is None else rows.lo) if t is not None]
    highs = [t for t in (hi, None if rows is None else rows.hi) if t is not None]
    meta: dict[str, Any] = {"n": 0, "c": 0, "a": [], "l": None}
    if rows is not None:
        meta = {"n": rows.rows, "c": len(rows.data), "a": [[a, *s] for a, s in rows.assets.items()],
                "l": rows.live_lo}
    head = json.dumps(meta, separators=(",", ":")).encode()
    body = b"".join((_META_LENGTH.pack(len(head)), head, rows.data if rows is not None else b"", text))
    return zlib.compress(body, 1), min(lows, default=0), max(highs, default=0)


def _tick_rows_from_meta(meta: Any, data: bytes) -> TickRows | None:
    if meta["n"] == 0:
        return None
    assets = {str(a): (int(t0), int(t1), int(n)) for a, t0, t1, n in meta["a"]}
    return TickRows(data, int(meta["n"]), assets, min(s[0] for s in assets.values()),
                    max(s[1] for s in assets.values()), None if meta["l"] is None else int(meta["l"]))


def decode_payload(payload: bytes) -> tuple[TickRows | None, list[Record]]:
    """The tick rows and the other records of a format-2 payload; ValueError if it is not one."""
    try:
        body = zlib.decompress(payload)
        (length,) = _META_LENGTH.unpack_from(body, 0)
        start = _META_LENGTH.size + length
        meta = json.loads(body[_META_LENGTH.size:start])
        data = body[start:start + int(meta["c"])]
        if len(data) != meta["c"]:
            raise ValueError(f"{len(data)} bytes of tick rows where the meta says {meta['c']}")
        rest = body[start + len(data):]
        return _tick_rows_from_meta(meta, data), _decode_columns(rest) if rest else []
    except (zlib.error, ValueError, TypeError, KeyError, struct.error) as exc:
        raise ValueError(f"not a spool payload: {type(exc).__name__}: {exc}") from None


def _payload_meta(payload: bytes) -> Any:
    """The meta of a format-2 payload, decompressing no more than it takes."""
    inflate = zlib.decompressobj()
    head = inflate.decompress(payload, _META_LENGTH.size)
    (length,) = _META_LENGTH.unpack_from(head, 0)
    meta = b""
    while len(meta) < length:
        more = inflate.decompress(inflate.unconsumed_tail, length - len(meta))
        if not more:
            raise ValueError("payload ends inside its meta")
        meta += more
    return json.loads(meta)


@dataclass(frozen=True, slots=True)
class DroppedSpan:
    """Ticks of ``asset_id`` the spool dropped at its cap: ``rows`` of them, from ``first`` to ``last``."""

    asset_id: str
    first: datetime
    last: datetime
    rows: int


def _spans(payload: bytes, v1: bool) -> dict[str, tuple[int, int, int]]:
    """Per asset, the (first, last, rows) of the ticks of a record."""
    if not v1:
        return {str(a): (int(t0), int(t1), int(n)) for a, t0, t1, n in _payload_meta(payload)["a"]}
    ticks = [r for r in decode_payload_v1(payload) if type(r) is Tick]
    out: dict[str, tuple[int, int, int]] = {}
    for tick in ticks:
        us = _micros(tick.time)
        had = out.get(tick.asset_id)
        out[tick.asset_id] = (us, us, 1) if had is None else (min(had[0], us), max(had[1], us), had[2] + 1)
    return out


def _frame(payload: bytes, rows: int, lo: int, hi: int, magic: bytes = MAGIC) -> bytes:
    fields = HEADER.pack(magic, len(payload), rows, lo, hi, 0)[_CHECKED]
    crc = zlib.crc32(payload, zlib.crc32(fields))
    return HEADER.pack(magic, len(payload), rows, lo, hi, crc) + payload


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
    """Rows read from the spool; hand it back to ``Spool.ack`` once they are committed.

    ``ticks``: the ticks of format-2 records, ready for COPY; ``records``: every other row (and all the rows of
    format-1 records)."""

    records: list[Record]
    segment: int
    start: int
    end: int
    rows: int  # rows the acknowledged records hold (records that failed to decode are already counted)
    ticks: TickRows | None = None

    @property
    def count(self) -> int:
        """Rows to write."""
        return len(self.records) + (self.ticks.rows if self.ticks is not None else 0)

    def all_records(self) -> list[Record]:
        """Every row as a record: the ticks first (decoded, in order), then the others."""
        return [*(self.ticks.ticks() if self.ticks is not None else ()), *self.records]


@dataclass(frozen=True, slots=True)
class _RawRecord:
    offset: int
    rows: int
    payload: bytes
    v1: bool


_Raw = tuple[int, int, int, list[_RawRecord]]
"""Undecoded records read from one segment: (segment, start, end, records)."""


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
                 metrics: Metrics | None = None,
                 on_drop: Callable[[list[DroppedSpan]], object] | None = None) -> None:
        if max_bytes < 4096:
            raise ValueError("max_bytes must be at least 4096")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(64 * 1024, min(16 * 1024 * 1024, max_bytes // 16))
        self._metrics = metrics
        self.on_drop = on_drop
        """Called (outside the spool's lock, in the appending thread) with the ticks each drop at the cap lost,
        one span per asset; it must not block."""
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
        self._drops_lock = threading.Lock()
        drops = self.directory / _DROPS
        self._drops_pending = drops.exists() and drops.stat().st_size > 0  # an earlier run's, not yet recorded
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
        lost: list[dict[str, tuple[int, int, int]]] = []  # per drop at the cap: its ticks' spans
        try:
            return self._append(records, blob, lo, hi, payload, lost)
        finally:
            self._report(lost)

    def _append(self, records: Sequence[Record], blob: bytes, lo: int, hi: int, payload: bytes,
                lost: list[dict[str, tuple[int, int, int]]]) -> bool:
        with self._lock:
            self.open()
            if len(blob) > self.max_bytes:
                self._count_drop("spool_cap", len(records))
                log.error("spool: one batch of rows=%d (%d bytes) exceeds COINPULSE_SPOOL_MAX_BYTES=%d: dropped",
                          len(records), len(blob), self.max_bytes)
                lost.append(_spans(payload, v1=False))
                return False
            self._make_room(len(blob), lost)
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

    def _make_room(self, needed: int, lost: list[dict[str, tuple[int, int, int]]]) -> None:
        """Oldest-first: delete whole segments until ``needed`` more bytes fit under the cap; the spans of the
        ticks dropped go to ``lost``."""
        while self._segments and sum(s.size for s in self._segments) + needed > self.max_bytes:
            seg = self._segments[0]
            if self.on_drop is not None:
                lost.append(self._segment_spans(seg, self._position()))
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

    def _segment_spans(self, seg: _Segment, off: int) -> dict[str, tuple[int, int, int]]:
        """Per asset, the (first, last, rows) of the ticks in ``seg`` from ``off`` on (bad records skipped)."""
        out: dict[str, tuple[int, int, int]] = {}
        try:
            with seg.path.open("rb") as f:
                while off < seg.size:
                    f.seek(off)
                    problem, _, payload, v1 = _check(f, seg.size - off)
                    if problem is not None:
                        resume = _resync(f, off + 1, seg.size)
                        if resume is None:
                            break
                        off = resume
                        continue
                    off += HEADER.size + len(payload)
                    try:
                        spans = _spans(payload, v1)
                    except (ValueError, KeyError, TypeError, zlib.error, struct.error):
                        continue
                    for asset_id, (t0, t1, n) in spans.items():
                        had = out.get(asset_id)
                        out[asset_id] = (t0, t1, n) if had is None else (min(had[0], t0), max(had[1], t1), had[2] + n)
        except OSError as exc:
            log.error("spool: cannot read the segment being dropped %s: %s", seg.path, exc.strerror)
        return out

    def _report(self, lost: list[dict[str, tuple[int, int, int]]]) -> None:
        """Record the spans of ticks dropped at the cap (``dropped.spans``) and hand them to ``on_drop``."""
        if not lost or self.on_drop is None:
            return
        spans = [DroppedSpan(asset_id, _datetime(t0), _datetime(t1), n)
                 for drop in lost for asset_id, (t0, t1, n) in drop.items()]
        if not spans:
            return
        self._persist_drops(spans)
        try:
            self.on_drop(spans)
        except Exception:  # the spool must go on whatever the listener does
            log.exception("spool: the on_drop callback failed; dropped spans=%d not recorded", len(spans))

    # -- the record of what the cap dropped ------------------------------------------------------------------------
    # ``dropped.spans`` holds one JSON line per span ([asset, first us, last us, rows]), appended and fsync'd before
    # ``on_drop`` is called, so the time ranges to backfill survive a crash while the database is still away; the
    # writer reads them with ``pending_drops`` and, once they are in ingest_gaps, removes them with ``forget_drops``.

    @property
    def drops_pending(self) -> bool:
        """Spans dropped at the cap (by this run or an earlier one) that are not yet forgotten."""
        return self._drops_pending

    def _persist_drops(self, spans: list[DroppedSpan]) -> None:
        lines = "".join(json.dumps([s.asset_id, _micros(s.first), _micros(s.last), s.rows]) + "\n" for s in spans)
        path = self.directory / _DROPS
        with self._drops_lock:
            try:
                new = not path.exists()
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    _write_all(fd, lines.encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if new:
                    _fsync_dir(self.directory)
                self._drops_pending = True
            except OSError as exc:
                log.error("spool: cannot record the dropped spans=%d in %s: %s (they are logged above; a crash "
                          "before the database answers loses them)", len(spans), path, exc.strerror)

    def pending_drops(self) -> tuple[list[DroppedSpan], int]:
        """The spans recorded in ``dropped.spans`` (oldest first) and how many lines that took (for
        ``forget_drops``); a line that cannot be read is logged, counted and skipped."""
        if not self._drops_pending:
            return [], 0
        self.open()
        with self._drops_lock:
            try:
                lines = (self.directory / _DROPS).read_text(encoding="utf-8").splitlines(keepends=True)
            except FileNotFoundError:
                self._drops_pending = False
                return [], 0
            except OSError as exc:
                log.error("spool: cannot read the dropped spans in %s: %s", self.directory / _DROPS, exc.strerror)
                return [], 0
        spans = []
        for i, line in enumerate(lines):
            if not line.endswith("\n"):  # a crash while appending: the torn tail
                lines = lines[:i]
                break
            try:
                asset_id, first, last, rows = json.loads(line)
                spans.append(DroppedSpan(str(asset_id), _datetime(int(first)), _datetime(int(last)), int(rows)))
            except (ValueError, TypeError) as exc:
                log.error("spool: unreadable dropped span line=%d in %s: %s", i + 1, self.directory / _DROPS, exc)
        return spans, len(lines)

    def forget_drops(self, lines: int) -> None:
        """The first ``lines`` lines of ``dropped.spans`` are recorded elsewhere: remove them."""
        if lines <= 0:
            return
        path = self.directory / _DROPS
        with self._drops_lock:
            try:
                rest = path.read_text(encoding="utf-8").splitlines(keepends=True)[lines:]
                rest = [line for line in rest if line.endswith("\n")]
                if not rest:
                    path.unlink()
                    self._drops_pending = False
                    return
                tmp = self.directory / (_DROPS + ".tmp")
                tmp.write_text("".join(rest), encoding="utf-8")
                with tmp.open("rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except FileNotFoundError:
                self._drops_pending = False
            except OSError as exc:
                log.error("spool: cannot update the dropped spans in %s: %s (they may be recorded twice)", path,
                          exc.strerror)

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
        ticks: list[TickRows] = []
        rows = 0
        for rec in payloads:
            rows += rec.rows
            try:
                if rec.v1:
                    decoded, tick_rows = decode_payload_v1(rec.payload), None
                else:
                    tick_rows, decoded = decode_payload(rec.payload)
                got = len(decoded) + (tick_rows.rows if tick_rows is not None else 0)
                if got != rec.rows:
                    raise ValueError(f"{got} rows where the header says {rec.rows}")
            except ValueError as exc:
                log.error("spool record undecodable segment=%d offset=%d rows=%d: dropped: %s", seq, rec.offset,
                          rec.rows, exc)
                self._count_drop("spool_corrupt", rec.rows)
                continue
            records.extend(decoded)
            if tick_rows is not None:
                ticks.append(tick_rows)
        return SpooledBatch(records, seq, start, end, rows, TickRows.join(ticks))

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
            return seg.seq, self._read_off, got[-1].offset + HEADER.size + len(got[-1].payload), got
        return None

    def _read_records(self, seg: _Segment, f: BinaryIO, off: int, max_rows: int) -> list[_RawRecord]:
        """Whole valid records from ``off`` on, up to the first bad one."""
        got: list[_RawRecord] = []
        rows = 0
        while off < seg.size:
            f.seek(off)
            problem, claimed, payload, v1 = _check(f, seg.size - off)
            if problem is not None or (got and rows + claimed > max_rows):
                break
            got.append(_RawRecord(off, claimed, payload, v1))
            rows += claimed
            off += HEADER.size + len(payload)
            if rows >= max_rows:
                break
        return got

    def _skip_bad(self, seg: _Segment, f: BinaryIO, off: int) -> None:
        """A torn or corrupt record at the read position: drop it and resume at the next valid record, if any."""
        f.seek(off)
        problem, claimed, _, _ = _check(f, seg.size - off)
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
            self._metrics.spool_rows_drained.inc(batch.count)

    def _save_cursor(self) -> None:
        """A hint only (no fsync): if it is lost, the segment is read again and the replay changes nothing."""
        tmp = self.directory / (_CURSOR + ".tmp")
        try:
            tmp.write_text(f"{self._read_seq} {self._read_off}\n", encoding="ascii")
            os.replace(tmp, self.directory / _CURSOR)
        except OSError as exc:
            log.warning("spool: cannot save the drain position: %s", exc.strerror)


# -- reading helpers ---------------------------------------------------------------------------------------------


_MAGICS = (MAGIC, MAGIC_V1)


def _check(f: BinaryIO, left: int) -> tuple[str | None, int, bytes, bool]:
    """Is a valid record at ``f``'s position (``left`` bytes from there to the end of the segment)?
    (None, rows, payload, format 1?) if so, else ("torn" | "corrupt", claimed rows, b"", False)."""
    head = f.read(min(HEADER.size, left))
    if len(head) < HEADER.size:  # the end of the segment in the middle of a header
        torn = any(m.startswith(head[:4]) or head.startswith(m) for m in _MAGICS)
        return ("torn" if torn else "corrupt"), 0, b"", False
    magic, length, rows, _, _, crc = HEADER.unpack(head)
    if magic not in _MAGICS or length > _MAX_PAYLOAD:
        return "corrupt", 0, b"", False
    if HEADER.size + length > left:
        return "torn", rows, b"", False
    payload = f.read(length)
    if len(payload) != length or zlib.crc32(payload, zlib.crc32(head[_CHECKED])) != crc:
        return "corrupt", rows, b"", False
    return None, rows, payload, magic == MAGIC_V1


def _resync(f: BinaryIO, start: int, end: int) -> int | None:
    """The offset of the next valid record at or after ``start`` (before ``end``), or None."""
    f.seek(start)
    data = f.read(max(0, end - start))
    at = data.find(_MAGIC_PREFIX)
    while at >= 0:
        f.seek(start + at)
        if _check(f, end - start - at)[0] is None:
            return start + at
        at = data.find(_MAGIC_PREFIX, at + 1)
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
                if magic not in _MAGICS or length > _MAX_PAYLOAD or off + HEADER.size + length > size:
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
