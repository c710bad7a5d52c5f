"""User alert thresholds: add, list, remove, enable/disable, and the declarative YAML sync.

All of it works on ``coinpulse.alert_thresholds`` (migration 0005), the same table people edit with psql; the
database refuses nonsense itself (unknown kind or asset, negative window, NaN...) with one clear message,
which is passed on as a ``ThresholdError``. ``alert_threshold_status`` is what Grafana alerts on.

A thresholds file (``alerting/thresholds.yaml`` is the example)::

    source: example            # rows this file owns are marked sync_source = 'example' (default: the file name)
    thresholds:
      - key: btc-below-60k     # optional; default "<kind>:<subject>[:<window>]"
        kind: price_below
        asset: bitcoin         # CoinCap id or a unique symbol; portfolio kinds name a `portfolio:` instead
        value: 60000
        severity: critical     # info | warning (default) | critical
        owner: alice
        note: buy the dip
        enabled: true
      - kind: change_above
        asset: ethereum
        value: 5
        window: 1h

``sync`` makes the rows marked with the file's source equal to its entries (adds, changes, removes), in one
transaction, and never touches rows it does not own (made by hand, with psql, or by another file).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from collector.errors import CoinPulseError

__all__ = [
    "KINDS",
    "Kind",
    "SyncChange",
    "SyncPlan",
    "Threshold",
    "ThresholdError",
    "ThresholdFile",
    "ThresholdSpec",
    "add_threshold",
    "apply_sync",
    "describe",
    "format_number",
    "format_window",
    "list_thresholds",
    "load_file",
    "parse_file",
    "parse_value",
    "parse_window",
    "plan_sync",
    "remove_thresholds",
    "set_enabled",
]

Conn = psycopg.Connection[Any]


class ThresholdError(CoinPulseError):
    """A threshold command cannot be carried out (bad input, unknown asset, a refused row...)."""


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    portfolio: bool  # subject is a portfolio (else an asset)
    value: bool  # takes a value
    window: bool  # takes a window
    what: str  # what is compared, for messages
    op: str  # "<" or ">"
    unit: str  # "USD", "%", "" (stale), "currency"


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("price_above", False, True, False, "price", ">", "USD"),
    Kind("price_below", False, True, False, "price", "<", "USD"),
    Kind("change_above", False, True, True, "price change", ">", "%"),
    Kind("change_below", False, True, True, "price change", "<", "%"),
    Kind("volume_above", False, True, False, "24h volume", ">", "USD"),
    Kind("volume_change_above", False, True, True, "24h volume change", ">", "%"),
    Kind("stale", False, False, True, "no tick", ">", ""),
    Kind("portfolio_value_below", True, True, False, "value", "<", "currency"),
    Kind("portfolio_change_below", True, True, True, "value change", "<", "%"),
)}
SEVERITIES = ("info", "warning", "critical")

_WINDOW = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_WINDOW_UNITS = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1),
                 "d": timedelta(days=1), "w": timedelta(weeks=1)}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,199}$")
_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


# -- parsing user input ------------------------------------------------------------------------------------

def parse_window(text: str) -> timedelta:
    """``90s``, ``10m``, ``1h``, ``24h``, ``7d``, ``2w``."""
    match = _WINDOW.match(str(text).strip())
    if not match:
        raise ValueError(f"window {text!r}: give a duration like 90s, 10m, 1h, 24h or 7d")
    return int(match.group(1)) * _WINDOW_UNITS[match.group(2)]


def parse_value(text: str | float | int) -> float:
    """A plain finite number (``60000``, ``-5``, ``2.5e10``); no NaN, infinities, separators or units."""
    if isinstance(text, bool):
        raise ValueError(f"value {text!r} is not a number")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        raw = text.strip()
        if not _NUMBER.match(raw):
            raise ValueError(f"value {text.strip()!r} is not a number")
        value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"value {text!r} is not a finite number")
    return value


def format_window(window: timedelta | None) -> str:
    """The inverse of parse_window (the largest unit that divides it), as the database's alert_window_text."""
    if window is None:
        return ""
    seconds = round(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_number(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


# -- rows ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ThresholdSpec:
    """A threshold as a person states it (CLI arguments or a file entry); ``subject`` not yet resolved."""

    kind: str
    subject: str
    value: float | None = None
    window: timedelta | None = None
    severity: str = "warning"
    owner: str | None = None
    note: str | None = None
    enabled: bool = True

    def check(self) -> None:
        """Refuse what is wrong before the database is asked (the database checks the same again)."""
        kind = KINDS.get(self.kind)
        if kind is None:
            raise ValueError(f"unknown kind {self.kind!r} (kinds: {', '.join(KINDS)})")
        if kind.value and self.value is None:
            raise ValueError(f"kind {self.kind} needs a value")
        if not kind.value and self.value is not None:
            raise ValueError(f"kind {self.kind} takes a window (no tick for how long), not a value")
        if kind.window and self.window is None:
            raise ValueError(f"kind {self.kind} needs a window (e.g. 1h)")
        if not kind.window and self.window is not None:
            raise ValueError(f"kind {self.kind} takes no window")
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError(f"value {self.value} is not a finite number")
        if self.window is not None and self.window <= timedelta(0):
            raise ValueError(f"the window must be positive, not {self.window}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be info, warning or critical, not {self.severity!r}")


@dataclass(frozen=True, slots=True)
class Threshold:
    """A stored row, with its current state from ``alert_threshold_status`` (None while disabled)."""

    id: int
    kind: str
    asset_id: str | None
    portfolio: str | None
    value: float | None
    window: timedelta | None
    enabled: bool
    severity: str
    owner: str | None
    note: str | None
    sync_source: str | None
    sync_key: str | None
    created_at: datetime
    updated_at: datetime
    current_value: float | None = None
    breached: bool | None = None
    unit: str | None = None

    @property
    def subject(self) -> str:
        return self.portfolio if self.asset_id is None and self.portfolio is not None else str(self.asset_id)


def describe(kind: str, subject: str, value: float | None, window: timedelta | None, unit: str | None = None) -> str:
    """``bitcoin price < 60000 USD``, ``ethereum price change over 1h > +5 %``, ``bitcoin no tick for 10m``."""
    k = KINDS[kind]
    who = f"portfolio {subject}" if k.portfolio else subject
    if kind == "stale":
        return f"{who} no tick for {format_window(window)}"
    over = f" over {format_window(window)}" if window is not None else ""
    shown = format_number(value)
    if k.unit == "%" and value is not None and value > 0:
        shown = "+" + shown
    unit_text = (unit or "") if k.unit == "currency" else k.unit
    return f"{who} {k.what}{over} {k.op} {shown}{' ' + unit_text if unit_text else ''}"


_COLUMNS = """
    SELECT t.id, t.kind, t.asset_id, p.name, t.value, t.time_window, t.enabled, t.severity, t.owner, t.note,
           t.sync_source, t.sync_key, t.created_at, t.updated_at, s.current_value, s.breached, s.unit
    FROM coinpulse.alert_thresholds t
    LEFT JOIN coinpulse.portfolios p ON p.portfolio_id = t.portfolio_id
    LEFT JOIN coinpulse.alert_threshold_status s ON s.threshold_id = t.id::text
"""
_LIST = _COLUMNS + " ORDER BY t.id"
_BY_IDS = _COLUMNS + " WHERE t.id = ANY (%(ids)s) ORDER BY t.id"
_BY_SOURCE = """
    SELECT t.id, t.kind, t.asset_id, p.name, t.value, t.time_window, t.enabled, t.severity, t.owner, t.note,
           t.sync_source, t.sync_key, t.created_at, t.updated_at, NULL, NULL, NULL
    FROM coinpulse.alert_thresholds t
    LEFT JOIN coinpulse.portfolios p ON p.portfolio_id = t.portfolio_id
    WHERE t.sync_source = %(source)s
    ORDER BY t.sync_key
    FOR UPDATE OF t
"""
_INSERT = """
    INSERT INTO coinpulse.alert_thresholds (kind, asset_id, portfolio_id, value, time_window, enabled, severity,
                                            owner, note, sync_source, sync_key)
    VALUES (%(kind)s, %(asset_id)s, %(portfolio_id)s, %(value)s, %(window)s, %(enabled)s, %(severity)s, %(owner)s,
            %(note)s, %(sync_source)s, %(sync_key)s)
    RETURNING id
"""
_UPDATE = """
    UPDATE coinpulse.alert_thresholds
    SET kind = %(kind)s, asset_id = %(asset_id)s, portfolio_id = %(portfolio_id)s, value = %(value)s,
        time_window = %(window)s, enabled = %(enabled)s, severity = %(severity)s, owner = %(owner)s, note = %(note)s
    WHERE id = %(id)s
"""
_DELETE = "DELETE FROM coinpulse.alert_thresholds WHERE id = ANY (%(ids)s) RETURNING id"
_ENABLE = ("UPDATE coinpulse.alert_thresholds SET enabled = %(enabled)s WHERE id = ANY (%(ids)s) "
           "AND enabled IS DISTINCT FROM %(enabled)s RETURNING id")
_SYNC_LOCK = "SELECT pg_advisory_xact_lock(hashtext('coinpulse thresholds sync ' || %(source)s))"
_EXISTING = "SELECT id FROM coinpulse.alert_thresholds WHERE id = ANY (%(ids)s)"
_ASSET_BY_ID = "SELECT asset_id FROM coinpulse.assets WHERE asset_id = %s"
_ASSET_BY_SYMBOL = "SELECT asset_id FROM coinpulse.assets WHERE upper(symbol) = upper(%s) ORDER BY asset_id"
_PORTFOLIO = "SELECT portfolio_id FROM coinpulse.portfolios WHERE name = %s"


def _row(row: Sequence[Any]) -> Threshold:
    return Threshold(
        id=int(row[0]), kind=str(row[1]), asset_id=row[2], portfolio=row[3],
        value=None if row[4] is None else float(row[4]), window=row[5], enabled=bool(row[6]), severity=str(row[7]),
        owner=row[8], note=row[9], sync_source=row[10], sync_key=row[11], created_at=row[12], updated_at=row[13],
        current_value=None if row[14] is None else float(row[14]),
        breached=None if row[15] is None else bool(row[15]), unit=row[16])


def _refused(exc: psycopg.Error) -> ThresholdError:
    """The database's own message (the validation trigger's are written for people), without a traceback."""
    diag = exc.diag
    message = diag.message_primary or str(exc).strip().splitlines()[0]
    if diag.message_hint:
        message += f" ({diag.message_hint})"
    return ThresholdError(message)


@dataclass(frozen=True, slots=True)
class _Resolved:
    kind: str
    asset_id: str | None
    portfolio_id: int | None
    subject: str  # the resolved asset id, or the portfolio name


def _resolve(conn: Conn, spec: ThresholdSpec) -> _Resolved:
    try:
        spec.check()
    except ValueError as exc:
        raise ThresholdError(str(exc)) from None
    kind = KINDS[spec.kind]
    if kind.portfolio:
        row = conn.execute(_PORTFOLIO, (spec.subject.strip(),)).fetchone()
        if row is None:
            raise ThresholdError(f"unknown portfolio {spec.subject!r} (`coinpulse portfolio list` shows them)")
        return _Resolved(spec.kind, None, int(row[0]), spec.subject.strip())
    raw = spec.subject.strip()
    row = conn.execute(_ASSET_BY_ID, (raw.lower(),)).fetchone()
    if row is not None:
        return _Resolved(spec.kind, str(row[0]), None, str(row[0]))
    ids = [str(r[0]) for r in conn.execute(_ASSET_BY_SYMBOL, (raw,)).fetchall()]
    if len(ids) > 1:
        raise ThresholdError(f"symbol {raw!r} names several assets ({', '.join(ids)}): use the asset id")
    if not ids:
        raise ThresholdError(f"unknown asset {raw!r}: CoinPulse has not seen it (use a CoinCap asset id such as "
                             "bitcoin; `coinpulse run` records the assets it polls or streams)")
    return _Resolved(spec.kind, ids[0], None, ids[0])


def _params(resolved: _Resolved, spec: ThresholdSpec) -> dict[str, Any]:
    return {"kind": resolved.kind, "asset_id": resolved.asset_id, "portfolio_id": resolved.portfolio_id,
            "value": spec.value, "window": spec.window, "enabled": spec.enabled, "severity": spec.severity,
            "owner": spec.owner, "note": spec.note}


def add_threshold(conn: Conn, spec: ThresholdSpec) -> Threshold:
    """Store a threshold made by hand (not owned by any file)."""
    resolved = _resolve(conn, spec)
    try:
        with conn.transaction():
            row = conn.execute(_INSERT, {**_params(resolved, spec), "sync_source": None, "sync_key": None}).fetchone()
    except psycopg.errors.IntegrityError as exc:
        raise _refused(exc) from None
    assert row is not None
    (added,) = _by_ids(conn, [int(row[0])])
    return added


def list_thresholds(conn: Conn) -> list[Threshold]:
    return [_row(r) for r in conn.execute(_LIST).fetchall()]


def _by_ids(conn: Conn, ids: Sequence[int]) -> list[Threshold]:
    return [_row(r) for r in conn.execute(_BY_IDS, {"ids": list(ids)}).fetchall()]


def _require(conn: Conn, ids: Sequence[int]) -> None:
    found = {int(r[0]) for r in conn.execute(_EXISTING, {"ids": list(ids)}).fetchall()}
    missing = [i for i in ids if i not in found]
    if missing:
        raise ThresholdError(f"no threshold with id {', '.join(map(str, missing))} (`coinpulse thresholds list` "
                             "shows them)")


def remove_thresholds(conn: Conn, ids: Sequence[int]) -> list[Threshold]:
    """Delete thresholds by id, all or nothing; returns what was deleted."""
    with conn.transaction():
        _require(conn, ids)
        gone = _by_ids(conn, ids)
        conn.execute(_DELETE, {"ids": list(ids)})
    return gone


def set_enabled(conn: Conn, ids: Sequence[int], enabled: bool) -> tuple[list[Threshold], list[int]]:
    """Enable or disable thresholds by id, all or nothing; returns them and the ids that actually changed."""
    with conn.transaction():
        _require(conn, ids)
        changed = [int(r[0]) for r in conn.execute(_ENABLE, {"ids": list(ids), "enabled": enabled}).fetchall()]
    return _by_ids(conn, ids), changed


# -- the declarative file -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FileEntry:
    position: int  # 1-based index in the file's list
    key: str | None  # as written (None: derived once the subject is resolved)
    spec: ThresholdSpec


@dataclass(frozen=True, slots=True)
class ThresholdFile:
    path: str
    source: str
    entries: tuple[FileEntry, ...]


_ENTRY_KEYS = {"key", "kind", "asset", "portfolio", "value", "window", "severity", "owner", "note", "enabled"}


def load_file(path: Path) -> ThresholdFile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ThresholdError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_file(text, str(path), default_source=path.stem)


def parse_file(text: str, name: str, *, default_source: str) -> ThresholdFile:
    """Parse and check a thresholds file; ThresholdError listing every bad entry (nothing is half-read)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ThresholdError(f"{name}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ThresholdError(f"{name}: expected a mapping with `thresholds:` (a list), got {type(data).__name__}")
    unknown = set(data) - {"source", "thresholds", "version"}
    if unknown:
        raise ThresholdError(f"{name}: unknown top-level keys {sorted(unknown)} (source, thresholds)")
    source = str(data.get("source") or default_source)
    if not _SOURCE.match(source):
        raise ThresholdError(f"{name}: source {source!r} must be letters, digits, '.', '_' or '-' (at most 100)")
    items = data.get("thresholds")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise ThresholdError(f"{name}: `thresholds` must be a list")
    errors: list[str] = []
    entries: list[FileEntry] = []
    for i, item in enumerate(items, 1):
        try:
            entries.append(_entry(i, item))
        except ValueError as exc:
            label = item.get("key") if isinstance(item, dict) and item.get("key") else None
            errors.append(f"{name}: entry {i}{f' ({label})' if label else ''}: {exc}")
    keys = [e.key for e in entries if e.key is not None]
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        errors.append(f"{name}: key {key!r} is used by more than one entry")
    if errors:
        raise ThresholdError("; ".join(errors))
    return ThresholdFile(name, source, tuple(entries))


def _entry(position: int, item: Any) -> FileEntry:
    if not isinstance(item, dict):
        raise ValueError("each entry is a mapping (kind:, asset: or portfolio:, value:, ...)")
    unknown = set(item) - _ENTRY_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (allowed: {', '.join(sorted(_ENTRY_KEYS))})")
    kind_name = str(item.get("kind", "")).strip().replace("-", "_")
    kind = KINDS.get(kind_name)
    if kind is None:
        raise ValueError(f"unknown kind {item.get('kind')!r} (kinds: {', '.join(KINDS)})")
    wanted, other = ("portfolio", "asset") if kind.portfolio else ("asset", "portfolio")
    if other in item:
        raise ValueError(f"kind {kind_name} takes `{wanted}:`, not `{other}:`")
    subject = item.get(wanted)
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError(f"kind {kind_name} needs `{wanted}:`")
    key = item.get("key")
    if key is not None and (not isinstance(key, str) or not _KEY.match(key)):
        raise ValueError(f"key {key!r} must be 1-200 letters, digits or _.:/@+- (starting with a letter or digit)")
    value = None if item.get("value") is None else parse_value(item["value"])
    window = None if item.get("window") is None else parse_window(str(item["window"]))
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be true or false, not {enabled!r}")
    owner = item.get("owner")
    note = item.get("note")
    spec = ThresholdSpec(kind_name, subject, value, window, str(item.get("severity", "warning")),
                         None if owner is None else str(owner), None if note is None else str(note), enabled)
    spec.check()
    return FileEntry(position, key, spec)


@dataclass(frozen=True, slots=True)
class Wanted:
    key: str
    spec: ThresholdSpec
    resolved: _Resolved

    def params(self) -> dict[str, Any]:
        return _params(self.resolved, self.spec)


@dataclass(frozen=True, slots=True)
class SyncChange:
    key: str
    before: Threshold
    after: Wanted
    changes: tuple[str, ...]  # "value 150 -> 100", ...


@dataclass(frozen=True, slots=True)
class SyncPlan:
    file: ThresholdFile
    add: tuple[Wanted, ...] = ()
    change: tuple[SyncChange, ...] = ()
    remove: tuple[Threshold, ...] = ()
    unchanged: tuple[Threshold, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.add or self.change or self.remove)

    def lines(self) -> list[str]:
        """The diff, one line per row: ``+`` added, ``~`` changed, ``-`` removed."""
        out = []
        for w in self.add:
            out.append(f"+ {w.key}: {describe(w.spec.kind, w.resolved.subject, w.spec.value, w.spec.window)}"
                       f" [{w.spec.severity}]{'' if w.spec.enabled else ' (disabled)'}")
        for c in self.change:
            out.append(f"~ {c.key} (id {c.before.id}): {'; '.join(c.changes)}")
        for t in self.remove:
            out.append(f"- {t.sync_key} (id {t.id}): {describe(t.kind, t.subject, t.value, t.window)}")
        return out

    def summary(self) -> str:
        return (f"{len(self.add)} to add, {len(self.change)} to change, {len(self.remove)} to remove, "
                f"{len(self.unchanged)} unchanged (source {self.file.source!r}, {self.file.path})")


def _default_key(spec: ThresholdSpec, subject: str) -> str:
    key = f"{spec.kind}:{subject}"
    return f"{key}:{format_window(spec.window)}" if spec.window is not None else key


def _differences(before: Threshold, after: Wanted) -> tuple[str, ...]:
    spec, res = after.spec, after.resolved
    pairs: Iterable[tuple[str, Any, Any, str, str]] = (
        ("kind", before.kind, spec.kind, before.kind, spec.kind),
        ("subject", before.subject, res.subject, before.subject, res.subject),
        ("value", before.value, spec.value, format_number(before.value), format_number(spec.value)),
        ("window", before.window, spec.window, format_window(before.window) or "none",
         format_window(spec.window) or "none"),
        ("severity", before.severity, spec.severity, before.severity, spec.severity),
        ("owner", before.owner, spec.owner, str(before.owner), str(spec.owner)),
        ("note", before.note, spec.note, repr(before.note), repr(spec.note)),
        ("enabled", before.enabled, spec.enabled, str(before.enabled).lower(), str(spec.enabled).lower()),
    )
    return tuple(f"{name} {old_text} -> {new_text}" for name, old, new, old_text, new_text in pairs if old != new)


def plan_sync(conn: Conn, file: ThresholdFile) -> SyncPlan:
    """What ``sync`` would do; reads (and, inside a transaction, locks) the rows the file's source owns."""
    errors: list[str] = []
    wanted: dict[str, Wanted] = {}
    for entry in file.entries:
        try:
            resolved = _resolve(conn, entry.spec)
        except ThresholdError as exc:
            errors.append(f"{file.path}: entry {entry.position}{f' ({entry.key})' if entry.key else ''}: {exc}")
            continue
        key = entry.key or _default_key(entry.spec, resolved.subject)
        if key in wanted:
            errors.append(f"{file.path}: entry {entry.position}: key {key!r} again (two entries for the same "
                          "kind, subject and window: give each a `key:`)")
            continue
        wanted[key] = Wanted(key, entry.spec, resolved)
    if errors:
        raise ThresholdError("; ".join(errors))
    owned = {str(t.sync_key): t for t in (_row(r) for r in conn.execute(_BY_SOURCE, {"source": file.source}))}
    add = tuple(w for k, w in wanted.items() if k not in owned)
    change, unchanged = [], []
    for key, before in owned.items():
        if key not in wanted:
            continue
        diffs = _differences(before, wanted[key])
        if diffs:
            change.append(SyncChange(key, before, wanted[key], diffs))
        else:
            unchanged.append(before)
    remove = tuple(t for k, t in owned.items() if k not in wanted)
    return SyncPlan(file, add, tuple(change), remove, tuple(unchanged))


def apply_sync(conn: Conn, file: ThresholdFile) -> SyncPlan:
    """Make the rows owned by ``file.source`` equal to the file, in one transaction; returns what was done."""
    try:
        with conn.transaction():
            # Two syncs of the same source at once would both add the same keys: the second waits.
            conn.execute(_SYNC_LOCK, {"source": file.source})
            plan = plan_sync(conn, file)
            if plan.remove:
                conn.execute(_DELETE, {"ids": [t.id for t in plan.remove]})
            for c in plan.change:
                conn.execute(_UPDATE, {**c.after.params(), "id": c.before.id})
            for w in plan.add:
                conn.execute(_INSERT, {**w.params(), "sync_source": file.source, "sync_key": w.key})
    except psycopg.errors.IntegrityError as exc:
        raise _refused(exc) from None
    return plan

