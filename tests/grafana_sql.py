"""Expand a Grafana PostgreSQL panel query the way Grafana does before it reaches the database.

Tests import this to run dashboard and alert-rule SQL against the test TimescaleDB. It reproduces the two
stages Grafana applies to a panel's ``rawSql``, read from Grafana's source (grafana/grafana and
grafana/scenes, 2025-2026):

1. **Frontend template variables** (``packages/grafana-sql/src/datasource/SqlDatasource.ts``
   ``interpolateVariable`` and the scenes ``formatRegistry``/``VARIABLE_REGEX``):
   ``$var``, ``${var}``, ``${var:format}``, ``[[var]]``, ``[[var:format]]``.

   - no format (``$var``, ``${var}``, ``[[var]]``): a multi-value variable (a list here) becomes
     ``'a','b'`` (each value single-quoted, quotes doubled, comma-joined); a single value of a variable that
     is neither multi nor include-all has its quotes doubled and is NOT quoted (write ``'$var'``); a single
     value of a multi/include-all variable is quoted.
   - ``sqlstring``: ``'a','b'`` for lists and ``'a'`` for one value; ``'`` -> ``''`` and ``"`` -> ``\\"``.
   - ``csv`` (``a,b``), ``raw``, ``pipe`` (``a|b``), ``singlequote`` (``'a','b'`` with ``\\'``),
     ``doublequote``, ``glob`` (``{a,b}``), ``regex`` (``(a|b)``), ``json``, ``join:sep``, ``text`` (``a + b``).
   - built-ins: ``$__interval`` (e.g. ``5m``), ``$__interval_ms``, ``$__from``/``$__to`` (epoch ms; with
     ``${__from:date}``/``:date:iso``, ``:date:seconds``, ``:date:ms``), ``$__searchFilter`` if given.
   - a custom "All" value (``Variable(..., raw=True)``) is inserted as is, whatever the format.
   - names that are not variables are left alone when they start with ``__`` (the backend macros below);
     any other unknown name raises ``GrafanaSqlError`` (Grafana would pass ``$name`` through and the
     database would fail on it later). Global variables such as ``$__dashboard``, ``$__user``, ``$__org``
     and ``$__timezone`` are not implemented: they stay in the SQL, and the database refuses it.

2. **Backend macros** (``pkg/tsdb/grafana-postgresql-datasource/sqleng/sql_engine.go`` ``Interpolate`` and
   ``macros.go``), datasource with ``timescaledb: true`` unless ``timescaledb=False``:

   ========================================  =================================================================
   ``$__time(c)``                            ``c AS "time"``
   ``$__timeEpoch(c)``                       ``extract(epoch from c) as "time"``
   ``$__timeFilter(c)``                      ``c BETWEEN '<from RFC3339Nano UTC>' AND '<to>'``
   ``$__timeFrom()`` / ``$__timeTo()``       ``'2018-04-12T18:00:00Z'``
   ``$__timeGroup(c, 5m[, fill])``           ``time_bucket('300.000s',c)`` (TimescaleDB) or
                                             ``floor(extract(epoch from c)/300)*300``; followed directly by
                                             ``,`` it gets `` AS "time"`` (Grafana's pre-5.3 compatibility)
   ``$__timeGroupAlias(c, 5m[, fill])``      the same plus `` AS "time"``
   ``$__unixEpochFilter(c)``                 ``c >= <from s> AND c <= <to s>``
   ``$__unixEpochFrom()`` / ``To()``         epoch seconds
   ``$__unixEpochNanoFilter/From/To``        epoch nanoseconds
   ``$__unixEpochGroup(c, 5m[, fill])``      ``floor((c)/300)*300``; ``...Alias`` adds `` AS "time"``
   ``$__interval`` / ``$__interval_ms``      ``5m`` / ``300000``
   ========================================  =================================================================

   Intervals in ``$__timeGroup`` parse as Grafana's ``gtime.ParseInterval`` (Go durations such as
   ``1h30m``, plus ``Nd``/``Nw``/``NM``/``Ny`` measured from the wall clock ``now``). The fill argument
   (``NULL``, ``previous`` or a number) does not change the SQL: Grafana fills missing buckets after the
   query; ``expand_query`` returns it as ``Fill`` so a test can apply or assert it. Any other
   ``$name(...)`` is an unknown macro and raises, as in Grafana. Macro arguments are split on every comma
   and end at the first ``)``, exactly as Grafana's regular expression does, so ``$__timeFilter(f(x))``
   breaks there too.

Public API::

    expand(sql, *, time_from, time_to, interval, variables=None, timescaledb=True, now=None) -> str
    expand_query(...same...) -> Expanded(sql: str, fill: Fill | None)
    Variable(value: str | Sequence[str], multi: bool = ..., include_all: bool = False, raw: bool = False)
    auto_interval(time_from, time_to, *, max_data_points=1000, min_interval="1m") -> timedelta
    panel_interval(target, time_from, time_to, *, width=1000, datasource_min="1m") -> timedelta
    parse_time(expr, *, now, round_up=False) -> datetime       # "now-24h", "now/d", ISO or epoch ms
    time_range(raw_from, raw_to, *, now) -> tuple[datetime, datetime]
    panel_targets(dashboard) -> list[Target]                    # every SQL/PromQL target, rows included
    GrafanaSqlError

``time_from``/``time_to``/``now`` must be timezone-aware. ``variables`` maps names to a ``str`` (one value
of a single-value variable), a list/tuple of ``str`` (the selected values of a multi-value variable; pass
every option for "All" without a custom all value) or a ``Variable``. Grafana's frontend also resolves
``$__interval`` from the panel width; pass the value you want (``auto_interval`` reproduces Grafana's
computation with the SQL datasource's default minimum interval of one minute; ``panel_interval`` applies a
panel's own query options, "Max data points" and "Min interval", as Grafana does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

__all__ = [
    "Expanded",
    "Fill",
    "GrafanaSqlError",
    "Target",
    "Variable",
    "auto_interval",
    "expand",
    "expand_query",
    "go_format_interval",
    "go_parse_interval",
    "panel_interval",
    "panel_targets",
    "parse_time",
    "time_range",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class GrafanaSqlError(ValueError):
    """A query Grafana would refuse (unknown macro, bad interval or fill) or that names an unknown variable."""


@dataclass(frozen=True)
class Variable:
    """A template variable's current value, for the cases a bare ``str``/``list`` cannot express.

    ``multi``/``include_all`` change how a single string value is formatted without a format (quoted when
    either is set). ``raw=True`` marks a custom "All" value, which Grafana inserts verbatim.
    """

    value: str | Sequence[str]
    multi: bool = False
    include_all: bool = False
    raw: bool = False


@dataclass(frozen=True)
class Fill:
    """The fill option of ``$__timeGroup``: mode ``null``, ``previous`` or ``value`` (with ``value``)."""

    mode: str
    interval: timedelta
    value: float | None = None


@dataclass(frozen=True)
class Expanded:
    sql: str
    fill: Fill | None


# --------------------------------------------------------------------------------------------------------
# Go formatting helpers (Grafana's backend is Go; these reproduce its output byte for byte)


def _go_rfc3339nano(t: datetime) -> str:
    """``t.UTC().Format(time.RFC3339Nano)``: trailing zeros of the fraction removed, ``Z`` for UTC."""
    if t.tzinfo is None:
        raise GrafanaSqlError("time range bounds must be timezone-aware datetimes")
    t = t.astimezone(UTC)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += "." + f"{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def _unix(t: datetime) -> int:
    return (t.astimezone(UTC) - _EPOCH) // timedelta(seconds=1)


def _unix_nano(t: datetime) -> int:
    return (t.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1) * 1000


def _ns(d: timedelta) -> int:
    return d // timedelta(microseconds=1) * 1000


def _go_seconds(ns: int) -> float:
    """``time.Duration.Seconds()``: whole seconds plus the nanosecond remainder, as Go computes it."""
    sec, nsec = int(ns / 1_000_000_000), ns - int(ns / 1_000_000_000) * 1_000_000_000
    return float(sec) + float(nsec) / 1e9


def _go_float_v(x: float) -> str:
    """Go's ``fmt.Sprintf("%v", float64)`` (``strconv`` 'g', shortest): exponent form when exp < -4 or >= 6."""
    if x == 0:
        return "0"
    dec = Decimal(repr(x)).normalize()
    sign, digits, exponent = dec.as_tuple()
    assert isinstance(exponent, int)
    text_digits = "".join(str(d) for d in digits)
    exp10 = len(digits) + exponent - 1  # exponent of the leading digit
    prefix = "-" if sign else ""
    if exp10 < -4 or exp10 >= 6:
        mantissa = text_digits[0] + ("." + text_digits[1:] if len(text_digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if exponent >= 0:
        return prefix + text_digits + "0" * exponent
    point = len(text_digits) + exponent
    if point > 0:
        return prefix + text_digits[:point] + "." + text_digits[point:]
    return prefix + "0." + "0" * (-point) + text_digits


_GO_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                "m": 60_000_000_000, "h": 3_600_000_000_000}
_GO_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


def _go_parse_duration(text: str) -> int:
    """Go's ``time.ParseDuration`` in nanoseconds (``1h30m``, ``1.5s``, ``-2m``, ``0``)."""
    s = text
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise GrafanaSqlError(f"invalid duration {text!r}")
    total = Decimal(0)
    pos = 0
    while pos < len(s):
        m = _GO_DURATION_PART.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            raise GrafanaSqlError(f"invalid duration {text!r}")
        total += Decimal(m.group(1)) * _GO_UNITS_NS[m.group(2)]
        pos = m.end()
    return sign * int(total)


_DATE_UNIT = re.compile(r"^(\d+)([dwMy])$")


def _add_months(t: datetime, months: int) -> datetime:
    """Go's ``AddDate(0, months, 0)``: the day overflows into the next month rather than clamping."""
    y, m = divmod(t.month - 1 + months, 12)
    first = t.replace(year=t.year + y, month=m + 1, day=1)
    return first + timedelta(days=t.day - 1)


def go_parse_interval(text: str, *, now: datetime | None = None) -> timedelta:
    """Grafana's ``gtime.ParseInterval``: a Go duration, or ``Nd``/``Nw``/``NM``/``Ny`` from ``now`` (UTC)."""
    m = _DATE_UNIT.match(text)
    if m is None:
        ns = _go_parse_duration(text)
        return timedelta(microseconds=ns / 1000)
    num, unit = int(m.group(1)), m.group(2)
    base = (now or datetime.now(UTC)).astimezone(UTC)
    if unit == "d":
        return timedelta(days=num)
    if unit == "w":
        return timedelta(days=7 * num)
    if unit == "M":
        return _add_months(base, num) - base
    try:
        later = base.replace(year=base.year + num)
    except ValueError:  # 29 February: Go normalises to 1 March
        later = base.replace(year=base.year + num, month=3, day=1)
    return later - base


def go_format_interval(interval: timedelta) -> str:
    """Grafana's ``gtime.FormatInterval`` (``$__interval``): the largest whole unit, truncated."""
    ns = _ns(interval)
    for unit_ns, suffix in ((365 * 86_400 * 10**9, "y"), (86_400 * 10**9, "d"), (3_600 * 10**9, "h"),
                            (60 * 10**9, "m"), (10**9, "s"), (10**6, "ms")):
        if ns >= unit_ns:
            return f"{ns // unit_ns}{suffix}"
    return "1ms"


# --------------------------------------------------------------------------------------------------------
# Stage 1: frontend template variables

_VARIABLE_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''").replace('"', '\\"') + "'"


def _escape_regex(value: str) -> str:
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), value)


def _format_value(name: str, var: Variable, fmt: str | None) -> str:
    value = var.value
    if var.raw:
        return str(value)
    is_list = not isinstance(value, str)
    values = [str(v) for v in value] if is_list else [str(value)]
    if fmt is None:  # the SQL datasource's interpolateVariable
        if is_list:
            return ",".join(_quote_literal(v) for v in values)
        if var.multi or var.include_all:
            return _quote_literal(values[0])
        return values[0].replace("'", "''")
    fmt_name, *args = fmt.split(":")
    single = values[0] if not is_list else None
    if fmt_name == "sqlstring":
        return ",".join(_sql_string(v) for v in values)
    if fmt_name in ("csv", "join"):
        sep = args[0] if fmt_name == "join" and args else ","
        return sep.join(values)
    if fmt_name == "raw":
        return single if single is not None else ",".join(values)
    if fmt_name == "text":  # the value's text; tests pass values whose text is the value itself
        return single if single is not None else " + ".join(values)
    if fmt_name == "pipe":
        return "|".join(values)
    if fmt_name == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt_name == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    if fmt_name == "glob":
        return "{" + ",".join(values) + "}" if is_list and len(values) > 1 else (single or ",".join(values))
    if fmt_name == "regex":
        escaped = [_escape_regex(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt_name == "json":
        return single if single is not None else json.dumps(values, separators=(",", ":"))
    raise GrafanaSqlError(f"variable format {fmt!r} of ${{{name}}} is not supported by tests/grafana_sql.py")


def _format_time_macro(name: str, ms: int, fmt: str | None) -> str:
    if fmt is None:
        return str(ms)
    fmt_name, *args = fmt.split(":")
    if fmt_name != "date":
        raise GrafanaSqlError(f"format {fmt!r} of ${{{name}}} is not supported by tests/grafana_sql.py")
    arg = args[0] if args else "iso"
    if arg == "ms":
        return str(ms)
    if arg == "seconds":
        return str(round(ms / 1000))
    if arg == "iso":
        t = _EPOCH + timedelta(milliseconds=ms)
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    raise GrafanaSqlError(f"date format {fmt!r} of ${{{name}}} is not supported by tests/grafana_sql.py")


def _as_variable(value: str | Sequence[str] | Variable) -> Variable:
    if isinstance(value, Variable):
        return value
    if isinstance(value, str):
        return Variable(value)
    return Variable(list(value), multi=True)


def _interpolate_variables(sql: str, variables: Mapping[str, Variable], time_from: datetime, time_to: datetime,
                           interval: timedelta) -> str:
    builtins = {
        "__interval": Variable(go_format_interval(interval)),
        "__interval_ms": Variable(str(_ns(interval) // 1_000_000)),
    }
    times = {"__from": _unix_nano(time_from) // 1_000_000, "__to": _unix_nano(time_to) // 1_000_000}

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if m.group(5):
            raise GrafanaSqlError(f"field paths (${{{name}.{m.group(5)}}}) are not supported")
        if name in variables:
            return _format_value(name, variables[name], fmt)
        if name in builtins:
            return _format_value(name, builtins[name], fmt)
        if name in times:
            return _format_time_macro(name, times[name], fmt)
        if name.startswith("__"):
            return m.group(0)  # a backend macro, or a Grafana built-in we leave for the backend
        raise GrafanaSqlError(f"unknown template variable {m.group(0)!r}; pass it in variables=")

    return _VARIABLE_RE.sub(replace, sql)


# --------------------------------------------------------------------------------------------------------
# Stage 2: backend macros


_MACRO_RE = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")


def _fill(args: list[str], interval_ns: int) -> Fill | None:
    if len(args) != 3:
        return None
    interval = timedelta(microseconds=interval_ns / 1000)
    mode = args[2]
    if mode == "NULL":
        return Fill("null", interval)
    if mode == "previous":
        return Fill("previous", interval)
    try:
        return Fill("value", interval, float(mode))
    except ValueError:
        raise GrafanaSqlError(f"error parsing fill value {mode}") from None


class _MacroEngine:
    def __init__(self, time_from: datetime, time_to: datetime, timescaledb: bool, now: datetime | None) -> None:
        self.time_from = time_from
        self.time_to = time_to
        self.timescaledb = timescaledb
        self.now = now
        self.fill: Fill | None = None

    def _interval_ns(self, name: str, args: list[str]) -> int:
        if len(args) < 2:
            raise GrafanaSqlError(f"macro {name} needs time column and interval and optional fill value")
        try:
            return _ns(go_parse_interval(args[1].strip("'"), now=self.now))
        except GrafanaSqlError:
            raise GrafanaSqlError(f"error parsing interval {args[1]}") from None

    def evaluate(self, name: str, args: list[str]) -> str:
        f, t = self.time_from, self.time_to
        # Grafana's "missing time column argument" checks never fire: splitting "" gives one empty argument.
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_go_rfc3339nano(f)}' AND '{_go_rfc3339nano(t)}'"
        if name == "__timeFrom":
            return f"'{_go_rfc3339nano(f)}'"
        if name == "__timeTo":
            return f"'{_go_rfc3339nano(t)}'"
        if name == "__timeGroup":
            ns = self._interval_ns(name, args)
            fill = _fill(args, ns)
            if fill is not None:
                self.fill = fill
            secs = _go_seconds(ns)
            if self.timescaledb:
                return f"time_bucket('{secs:.3f}s',{args[0]})"
            return f"floor(extract(epoch from {args[0]})/{_go_float_v(secs)})*{_go_float_v(secs)}"
        if name == "__timeGroupAlias":
            return self.evaluate("__timeGroup", args) + ' AS "time"'
        if name == "__unixEpochFilter":
            return f"{args[0]} >= {_unix(f)} AND {args[0]} <= {_unix(t)}"
        if name == "__unixEpochNanoFilter":
            return f"{args[0]} >= {_unix_nano(f)} AND {args[0]} <= {_unix_nano(t)}"
        if name == "__unixEpochNanoFrom":
            return str(_unix_nano(f))
        if name == "__unixEpochNanoTo":
            return str(_unix_nano(t))
        if name == "__unixEpochGroup":
            ns = self._interval_ns(name, args)
            fill = _fill(args, ns)
            if fill is not None:
                self.fill = fill
            secs = _go_float_v(_go_seconds(ns))
            return f"floor(({args[0]})/{secs})*{secs}"
        if name == "__unixEpochGroupAlias":
            return self.evaluate("__unixEpochGroup", args) + ' AS "time"'
        raise GrafanaSqlError(f'unknown macro "{name}"')

    def interpolate(self, sql: str) -> str:
        out: list[str] = []
        last = 0
        for m in _MACRO_RE.finditer(sql):
            name = m.group(1)
            if name == "__timeGroup":
                # Grafana checks the character after the FIRST occurrence of this exact macro text.
                index = sql.find(m.group(0))
                if index >= 0 and sql[index + len(m.group(0)):index + len(m.group(0)) + 1] == ",":
                    name = "__timeGroupAlias"
            args = [a.strip(" ") for a in m.group(2).split(",")]
            out.append(sql[last:m.start()])
            out.append(self.evaluate(name, args))
            last = m.end()
        out.append(sql[last:])
        return "".join(out)


def _global_interpolate(sql: str, time_from: datetime, time_to: datetime, interval: timedelta) -> str:
    sql = sql.replace("$__interval_ms", str(_ns(interval) // 1_000_000))
    sql = sql.replace("$__interval", go_format_interval(interval))
    sql = sql.replace("$__unixEpochFrom()", str(_unix(time_from)))
    return sql.replace("$__unixEpochTo()", str(_unix(time_to)))


def expand_query(sql: str, *, time_from: datetime, time_to: datetime, interval: timedelta,
                 variables: Mapping[str, str | Sequence[str] | Variable] | None = None,
                 timescaledb: bool = True, now: datetime | None = None) -> Expanded:
    """Expand template variables, then Grafana's global substitutions and PostgreSQL macros."""
    for bound in (time_from, time_to):
        if bound.tzinfo is None:
            raise GrafanaSqlError("time_from and time_to must be timezone-aware")
    if interval <= timedelta(0):
        raise GrafanaSqlError("interval must be positive")
    resolved = {name: _as_variable(v) for name, v in (variables or {}).items()}
    text = _interpolate_variables(sql, resolved, time_from, time_to, interval)
    text = _global_interpolate(text, time_from, time_to, interval)
    engine = _MacroEngine(time_from, time_to, timescaledb, now)
    text = engine.interpolate(text)
    return Expanded(text, engine.fill)


def expand(sql: str, *, time_from: datetime, time_to: datetime, interval: timedelta,
           variables: Mapping[str, str | Sequence[str] | Variable] | None = None,
           timescaledb: bool = True, now: datetime | None = None) -> str:
    """The SQL Grafana sends to PostgreSQL for ``sql`` (see the module docstring)."""
    return expand_query(sql, time_from=time_from, time_to=time_to, interval=interval, variables=variables,
                        timescaledb=timescaledb, now=now).sql


# --------------------------------------------------------------------------------------------------------
# Time ranges and intervals as the Grafana frontend computes them


def _round_interval(ms: float) -> int:
    """``rangeutil.roundInterval`` from @grafana/data."""
    ladder = ((10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
              (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000),
              (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000),
              (1500000, 1200000), (2700000, 1800000), (5400000, 3600000), (9000000, 7200000),
              (16200000, 10800000), (32400000, 21600000), (86400000, 43200000), (604800000, 86400000),
              (1814400000, 604800000), (3628800000, 2592000000))
    for limit, rounded in ladder:
        if ms < limit:
            return rounded
    return 31536000000


_INTERVAL_UNITS_MS = {"y": 31536000000, "M": 2592000000, "w": 604800000, "d": 86400000, "h": 3600000,
                      "m": 60000, "s": 1000, "ms": 1}


def auto_interval(time_from: datetime, time_to: datetime, *, max_data_points: int = 1000,
                  min_interval: str | None = "1m") -> timedelta:
    """Grafana's ``$__interval`` for a panel: ``rangeutil.calculateInterval`` with the datasource's minimum
    (the SQL datasources default to ``1m`` when ``timeInterval`` is not set)."""
    span_ms = (time_to - time_from) / timedelta(milliseconds=1)
    ms = _round_interval(span_ms / max_data_points)
    if min_interval:
        m = re.fullmatch(r"(\d+)(ms|[yMwdhms])", min_interval)
        if m is None:
            raise GrafanaSqlError(f"bad min interval {min_interval!r}")
        ms = max(ms, int(m.group(1)) * _INTERVAL_UNITS_MS[m.group(2)])
    return timedelta(milliseconds=ms)


def panel_interval(target: Target, time_from: datetime, time_to: datetime, *, width: int = 1000,
                   datasource_min: str | None = "1m") -> timedelta:
    """``$__interval`` of a panel's query: the panel's "Max data points" when set, else its ``width`` in pixels,
    and its "Min interval" when set, else the datasource's (``SceneQueryRunner``: ``minInterval ?? ds.interval``)."""
    return auto_interval(time_from, time_to, max_data_points=target.max_data_points or width,
                         min_interval=target.min_interval or datasource_min)


_RELATIVE = re.compile(r"^now(?P<ops>(?:[+-]\d+(?:ms|[smhdwMy]))*)(?:/(?P<round>[smhdwMy]))?$")
_OP = re.compile(r"([+-])(\d+)(ms|[smhdwMy])")


def _shift(t: datetime, sign: int, n: int, unit: str) -> datetime:
    if unit == "M":
        return _month_shift(t, sign * n)
    if unit == "y":
        return _month_shift(t, sign * 12 * n)
    per = {"ms": timedelta(milliseconds=1), "s": timedelta(seconds=1), "m": timedelta(minutes=1),
           "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}[unit]
    return t + sign * n * per


def _month_shift(t: datetime, months: int) -> datetime:
    """moment's add/subtract of months: the day is clamped to the target month's last day."""
    y, m = divmod(t.month - 1 + months, 12)
    year, month = t.year + y, m + 1
    for day in (t.day, 30, 29, 28):
        try:
            return t.replace(year=year, month=month, day=min(t.day, day))
        except ValueError:
            continue
    raise AssertionError("unreachable")


def _round(t: datetime, unit: str, up: bool) -> datetime:
    if unit == "s":
        start = t.replace(microsecond=0)
        nxt = start + timedelta(seconds=1)
    elif unit == "m":
        start = t.replace(second=0, microsecond=0)
        nxt = start + timedelta(minutes=1)
    elif unit == "h":
        start = t.replace(minute=0, second=0, microsecond=0)
        nxt = start + timedelta(hours=1)
    elif unit == "d":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        nxt = start + timedelta(days=1)
    elif unit == "w":  # moment's locale week; Grafana's default locale starts weeks on Sunday
        day = t.replace(hour=0, minute=0, second=0, microsecond=0)
        start = day - timedelta(days=(day.weekday() + 1) % 7)
        nxt = start + timedelta(weeks=1)
    elif unit == "M":
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = _month_shift(start, 1)
    else:
        start = t.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = start.replace(year=start.year + 1)
    return nxt - timedelta(milliseconds=1) if up else start


def parse_time(expr: str, *, now: datetime, round_up: bool = False) -> datetime:
    """A dashboard ``time.from``/``time.to`` value (``now-24h``, ``now-1d/d``, ISO 8601, epoch ms) in UTC.

    ``round_up`` is Grafana's ``roundUp`` for ``to``: ``now/d`` then means the last millisecond of today.
    Dashboards here use the browser's time zone; tests use UTC.
    """
    if now.tzinfo is None:
        raise GrafanaSqlError("now must be timezone-aware")
    m = _RELATIVE.match(expr.strip())
    if m is None:
        if expr.isdigit():
            return _EPOCH + timedelta(milliseconds=int(expr))
        t = datetime.fromisoformat(expr.replace("Z", "+00:00"))
        return t if t.tzinfo else t.replace(tzinfo=UTC)
    t = now.astimezone(UTC)
    for sign, n, unit in _OP.findall(m.group("ops") or ""):
        t = _shift(t, -1 if sign == "-" else 1, int(n), unit)
    if m.group("round"):
        t = _round(t, m.group("round"), round_up)
    return t


def time_range(raw_from: str, raw_to: str, *, now: datetime) -> tuple[datetime, datetime]:
    """Both ends of a dashboard time range, as Grafana resolves them (``to`` rounded up)."""
    return parse_time(raw_from, now=now), parse_time(raw_to, now=now, round_up=True)


# --------------------------------------------------------------------------------------------------------
# Walking dashboards


@dataclass(frozen=True)
class Target:
    """One query of a dashboard: a panel target (``panel`` set) or a template variable's query."""

    dashboard_uid: str
    panel_id: int | None
    panel_title: str
    ref_id: str
    datasource_uid: str
    language: str  # "sql" or "promql"
    text: str
    format: str | None  # "table" | "time_series" for SQL panels
    raw: Mapping[str, Any]
    # the panel's query options: "Max data points" (else the panel's width in pixels) and "Min interval" (else
    # the datasource's timeInterval)
    max_data_points: int | None = None
    min_interval: str | None = None


def _panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _ds_uid(ds: Any, fallback: str | None) -> str | None:
    if isinstance(ds, Mapping):
        uid = ds.get("uid")
        return str(uid) if uid is not None else fallback
    return fallback


def panel_targets(dashboard: Mapping[str, Any]) -> list[Target]:
    """Every SQL and PromQL query of a dashboard: panel targets (rows' nested panels too) and query variables.

    A target's datasource is its own ``datasource.uid`` or, failing that, its panel's. SQL is ``rawSql``
    (datasource uid ``coinpulse-tsdb``), PromQL is ``expr`` (``coinpulse-prom``). Hidden targets are kept.
    """
    uid = str(dashboard.get("uid", ""))
    out: list[Target] = []
    for panel in _panels(dashboard.get("panels", [])):
        panel_ds = _ds_uid(panel.get("datasource"), None)
        for target in panel.get("targets", []) or []:
            ds = _ds_uid(target.get("datasource"), panel_ds)
            if "rawSql" in target:
                language, text, fmt = "sql", str(target["rawSql"]), target.get("format")
            elif "expr" in target:
                language, text, fmt = "promql", str(target["expr"]), None
            else:
                continue
            out.append(Target(uid, panel.get("id"), str(panel.get("title", "")), str(target.get("refId", "")),
                              str(ds), language, text, fmt, target, max_data_points=panel.get("maxDataPoints"),
                              min_interval=panel.get("interval") or None))
    for var in (dashboard.get("templating") or {}).get("list", []) or []:
        if var.get("type") != "query":
            continue
        ds = _ds_uid(var.get("datasource"), None)
        query = var.get("query")
        text = query.get("rawSql") or query.get("query") if isinstance(query, Mapping) else query
        if isinstance(query, Mapping) and "expr" in query:
            text = query["expr"]
        language = "promql" if ds == "coinpulse-prom" else "sql"
        out.append(Target(uid, None, f"variable {var.get('name')}", str(var.get("name")), str(ds), language,
                          str(text or var.get("definition", "")), "table", var))
    return out
