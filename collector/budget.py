"""The API credit budget: how often each REST poll may run so a month's polling fits COINPULSE_CREDIT_BUDGET.

CoinCap bills 1 credit per call plus 1 per further 2,500 bytes of response, and 1 credit per minute of
WebSocket connection (../shared/coincap-v3.md). A plan is simple on purpose: the WebSocket's cost is fixed,
and if the configured poll intervals would spend more than the rest of the budget, every interval is
stretched by the same factor until they fit; an interval never grows past a day (``MAX_INTERVAL``), and what
that costs is taken from the others, which stretch further. If even that cannot fit, the plan says so (and
polls run once a day). A month is counted as 31 days, so every month fits.

Credits per call start from estimates (``ESTIMATED_BYTES``) and are replaced by what calls really cost
(``observe``, fed by the scheduler from the REST client's credit counter), smoothed so one odd response does
not swing the plan. Pure: no I/O, no clock; the scheduler asks ``interval(name)`` before each wait.

**Gap backfills** (collector/gaps.py) have a reserve of their own: ``backfill_share`` of what the budget
leaves after the WebSocket, ``backfill_per_day`` = share x (budget / 31 - the stream's daily cost), taken off
before the polls are planned. The gap worker asks ``backfill_wait(now, credits)`` before each history request
and reports what it really cost with ``charge_backfill(at, credits, points)``; a request runs only when the
credits charged in the 24 hours before ``now`` plus its estimate stay within ``backfill_per_day``. A sliding
24-hour window makes the monthly bound exact: any month (31 days at most) is covered by 31 such windows, so
backfills never spend more than their share of it. Times are passed in; the worker loads the last day's
charges from the database at start (``load_backfill``), so a restart does not reset the window.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from collector.coincap.rest import credits_for

__all__ = [
    "BACKFILL_WINDOW",
    "DAYS_PER_MONTH",
    "DEFAULT_BACKFILL_SHARE",
    "ESTIMATED_BYTES",
    "MAX_INTERVAL",
    "CreditPlanner",
    "PlanLine",
    "PollSpec",
    "history_credits",
]

DAYS_PER_MONTH = 31
WS_CREDITS_PER_DAY = 24 * 60
MAX_INTERVAL = 86_400.0
"""A plan needing a poll interval above a day does not fit: the data would be too stale to be useful."""
_SMOOTHING = 0.3
CREDIT_BYTES = 2500
"""CoinCap bills one more credit per further 2,500 bytes of an answer."""
BACKFILL_WINDOW = timedelta(days=1)
"""The backfill allowance is ``backfill_per_day`` credits in any window of this length."""
DEFAULT_BACKFILL_SHARE = 0.2

ESTIMATED_BYTES: Mapping[str, int] = {
    "asset": 450,  # one /assets row, as CoinCap v3 sends it
    "exchange": 320,
    "market": 420,
    "rate": 150,
    "history_point": 80,  # one /assets/{id}/history point: {"priceUsd": "...", "time": ...}, with room to spare
    "envelope": 40,  # {"timestamp": ..., "data": [...]}
}


def history_credits(points: int, bytes_per_point: float = ESTIMATED_BYTES["history_point"]) -> int:
    """Credits a history answer of ``points`` points is expected to cost."""
    return credits_for(int(max(1, points) * bytes_per_point) + ESTIMATED_BYTES["envelope"])


@dataclass(frozen=True, slots=True)
class PollSpec:
    """A REST poll: its name, the interval the user configured, and its estimated credits per run."""

    name: str
    wanted_interval: float
    credits_per_run: float

    @staticmethod
    def estimate(name: str, wanted_interval: float, rows: int, row_kind: str, calls: int = 1) -> PollSpec:
        """Credits of a poll fetching ``rows`` rows of ``row_kind`` in ``calls`` pages."""
        per_call = max(1, rows // max(1, calls)) * ESTIMATED_BYTES[row_kind] + ESTIMATED_BYTES["envelope"]
        return PollSpec(name, wanted_interval, float(calls * credits_for(per_call)))


@dataclass(frozen=True, slots=True)
class PlanLine:
    name: str
    interval: float
    credits_per_run: float

    @property
    def credits_per_day(self) -> float:
        return self.credits_per_run * 86_400.0 / self.interval


class CreditPlanner:
    """Plans poll intervals under a monthly budget (None = unlimited: the configured intervals), keeping
    ``backfill_share`` of what the stream leaves for gap backfills.

    ``gap_assets``: how many assets one outage of the stream leaves a gap for (for ``describe``: what one
    outage's backfill costs against the allowance)."""

    def __init__(self, budget_per_month: int | None, polls: Iterable[PollSpec], *, websocket: bool,
                 backfill_share: float = 0.0, gap_assets: int = 0, backfill: bool = True) -> None:
        if budget_per_month is not None and budget_per_month <= 0:
            raise ValueError("the credit budget must be positive (or None for unlimited)")
        if not 0.0 <= backfill_share < 1.0:
            raise ValueError("the backfill share must be at least 0 and below 1")
        self.budget_per_month = budget_per_month
        self.websocket = websocket
        self.backfill_share = backfill_share if backfill else 0.0
        self.backfill = backfill
        self.gap_assets = gap_assets
        self._polls = {p.name: p for p in polls}
        self._credits = {p.name: p.credits_per_run for p in self._polls.values()}
        self._factor = 1.0
        self._intervals: dict[str, float] = {}
        self._fits = True
        self._lock = threading.Lock()  # the scheduler and the gap worker use the plan from their own threads
        self._charges: list[tuple[datetime, int]] = []  # backfill credits charged, oldest first
        self._history_bytes = float(ESTIMATED_BYTES["history_point"])
        self._replan()

    # -- inputs --------------------------------------------------------------------------------------------

    def observe(self, name: str, credits: int) -> None:
        """What one run of poll ``name`` really cost; re-plans."""
        if name not in self._polls or credits <= 0:
            return
        with self._lock:
            self._credits[name] += _SMOOTHING * (credits - self._credits[name])
            self._replan()

    def set_websocket(self, connected_plan: bool) -> None:
        """The stream is (or is no longer) part of the plan, e.g. after falling back to REST polling."""
        with self._lock:
            self.websocket = connected_plan
            self._replan()

    def add(self, poll: PollSpec) -> None:
        """A poll that starts later (REST price polling after a WebSocket fallback)."""
        with self._lock:
            self._polls[poll.name] = poll
            self._credits.setdefault(poll.name, poll.credits_per_run)
            self._replan()

    # -- outputs -------------------------------------------------------------------------------------------

    def knows(self, name: str) -> bool:
        return name in self._polls

    def interval(self, name: str) -> float:
        """Seconds between runs of poll ``name`` under the current plan."""
        return self._intervals[name]

    @property
    def fits(self) -> bool:
        """Whether the budget covers the stream, the backfill reserve and every poll at intervals of at most
        a day."""
        return self._fits

    @property
    def stretch(self) -> float:
        """The factor applied to every configured interval (1.0: the configuration fits as it is)."""
        return self._factor

    def lines(self) -> list[PlanLine]:
        return [PlanLine(n, self.interval(n), self._credits[n]) for n in self._polls]

    def credits_per_day(self) -> float:
        """What the plan spends a day: polls, the stream, and the backfill reserve (when a budget is set)."""
        return (sum(line.credits_per_day for line in self.lines()) + (WS_CREDITS_PER_DAY if self.websocket else 0)
                + (self.backfill_per_day or 0.0))

    def describe(self) -> list[str]:
        """Human lines: what is polled how often, the backfill allowance, credits per day and month, and
        whether it fits."""
        out = []
        if self.websocket:
            out.append(f"websocket: connected all day = {WS_CREDITS_PER_DAY} credits/day")
        for line in self.lines():
            out.append(f"{line.name}: every {_span(line.interval)} x {line.credits_per_run:.1f} credits "
                       f"= {line.credits_per_day:,.0f} credits/day")
        out.append(self.describe_backfill())
        per_month = self.credits_per_day() * DAYS_PER_MONTH
        if self.budget_per_month is None:
            out.append(f"total: {per_month:,.0f} credits per {DAYS_PER_MONTH}-day month, gap backfills not "
                       "included (no budget set)")
        else:
            if not self._fits:
                stretch = ""
            elif self._factor == 1.0:
                stretch = " as configured"
            else:
                stretch = f" with intervals stretched x{self._factor:.2f} (at most {_span(MAX_INTERVAL)})"
            verdict = "fits" if self._fits else "DOES NOT FIT"
            if self.websocket and self.budget_per_month < WS_CREDITS_PER_DAY * DAYS_PER_MONTH:
                verdict += f" (the WebSocket alone needs {WS_CREDITS_PER_DAY * DAYS_PER_MONTH:,})"
            out.append(f"total: {per_month:,.0f} of {self.budget_per_month:,} credits per {DAYS_PER_MONTH}-day "
                       f"month: {verdict}{stretch}")
        return out

    def _replan(self) -> None:
        wanted = {n: p.wanted_interval for n, p in self._polls.items()}
        if self.budget_per_month is None:
            self._factor, self._fits, self._intervals = 1.0, True, wanted
            return
        per_day = self._after_stream_per_day() - (self.backfill_per_day or 0.0)
        capped: set[str] = set()
        while True:  # stretch the uncapped polls uniformly; cap at a day those that would pass it; repeat
            spare = per_day - sum(self._credits[n] * 86_400.0 / MAX_INTERVAL for n in capped)
            free = [n for n in wanted if n not in capped]
            cost = sum(self._credits[n] * 86_400.0 / wanted[n] for n in free)
            factor = 1.0 if cost == 0 else (math.inf if spare <= 0 else max(1.0, cost / spare))
            over = [n for n in free if wanted[n] * factor > MAX_INTERVAL]
            if not over:
                break
            capped.update(over)
        self._factor = factor if free else 1.0
        self._intervals = {n: MAX_INTERVAL if n in capped else wanted[n] * factor for n in wanted}
        self._fits = per_day >= 0 and self.credits_per_day() <= self.budget_per_month / DAYS_PER_MONTH + 1e-9

    def _after_stream_per_day(self) -> float:
        assert self.budget_per_month is not None
        return self.budget_per_month / DAYS_PER_MONTH - (WS_CREDITS_PER_DAY if self.websocket else 0)

    # -- gap backfills -------------------------------------------------------------------------------------

    @property
    def backfill_per_day(self) -> float | None:
        """Credits gap backfills may spend in any 24 hours (None: no budget, no limit)."""
        if self.budget_per_month is None:
            return None
        return self.backfill_share * max(0.0, self._after_stream_per_day())

    def backfill_estimate(self, points: int) -> int:
        """Credits one history request of ``points`` points is expected to cost (learned from real answers)."""
        return history_credits(points, self._history_bytes)

    def request_estimate(self, points_per_request: int) -> int:
        """Credits of the largest history request (``points_per_request`` points)."""
        return self.backfill_estimate(points_per_request)

    def charge_backfill(self, at: datetime, credits: int, points: int = 0) -> None:
        """A history request made at ``at`` cost ``credits``; with ``points`` (the points it answered) the
        bytes-per-point estimate learns from it (only from answers of 2 credits or more, whose size the
        credits bound well)."""
        with self._lock:
            if credits > 0:
                self._charges.append((at, credits))
                self._charges.sort(key=lambda c: c[0])
            if points > 0 and credits >= 2:
                observed = (credits - 0.5) * CREDIT_BYTES / points
                self._history_bytes += _SMOOTHING * (observed - self._history_bytes)

    def load_backfill(self, charges: Iterable[tuple[datetime, int]]) -> None:
        """Replace what was charged with ``charges`` (the database's record, at start)."""
        with self._lock:
            self._charges = sorted(((at, int(c)) for at, c in charges if c > 0), key=lambda c: c[0])

    def backfill_used(self, now: datetime) -> int:
        """Credits charged in the 24 hours up to ``now``."""
        with self._lock:
            self._prune(now)
            return sum(c for at, c in self._charges if at > now - BACKFILL_WINDOW)

    def backfill_wait(self, now: datetime, credits: int) -> float | None:
        """Seconds until a request costing ``credits`` fits the allowance: 0 now, None never (it costs more
        than a whole day's allowance)."""
        allowance = self.backfill_per_day
        if allowance is None:
            return 0.0
        if credits > allowance + 1e-9:
            return None
        with self._lock:
            self._prune(now)
            window = [(at, c) for at, c in self._charges if at > now - BACKFILL_WINDOW]
        used = sum(c for _, c in window)
        if used + credits <= allowance + 1e-9:
            return 0.0
        for at, c in window:  # oldest first: the window frees up as they leave it
            used -= c
            if used + credits <= allowance + 1e-9:
                return max(0.0, (at + BACKFILL_WINDOW - now).total_seconds())
        return 0.0  # pragma: no cover - credits <= allowance, so an empty window always fits

    def describe_backfill(self, used: int | None = None) -> str:
        """One line on the gap-backfill allowance (and ``used`` credits in the last 24 hours, if known)."""
        spent = "" if used is None else f"; used {used:,} in the last 24 h"
        allowance = self.backfill_per_day
        if not self.backfill:
            return "gap backfill: off (COINPULSE_BACKFILL=off): gaps are recorded, not filled, no credits reserved"
        if allowance is None:
            return f"gap backfill: no limit (no budget set){spent}"
        share = f"{self.backfill_share:.0%} of what the stream leaves (COINPULSE_BACKFILL_SHARE)"
        if allowance <= 0:
            why = "the stream takes the whole budget" if self.backfill_share > 0 else "COINPULSE_BACKFILL_SHARE=0"
            return f"gap backfill: 0 credits/day ({why}): gaps stay open until `coinpulse backfill --gaps`{spent}"
        line = f"gap backfill: up to {allowance:,.1f} credits/day, {share}{spent}"
        if self.gap_assets:
            outage = self.gap_assets * self.backfill_estimate(1)
            line += (f"; one outage of the {self.gap_assets} tracked assets costs about {outage:,}"
                     + ("" if outage <= allowance else f", {outage / allowance:.1f} days of it"))
        return line

    def backfill_covers(self, points_per_request: int) -> bool:
        """Whether the allowance can pay for the largest history request at all (and one outage in a day)."""
        allowance = self.backfill_per_day
        if allowance is None or not self.backfill:
            return True
        return allowance >= self.request_estimate(points_per_request) and (
            self.gap_assets * self.backfill_estimate(1) <= allowance)

    def _prune(self, now: datetime) -> None:
        cutoff = now - 2 * BACKFILL_WINDOW  # keep a margin: ``now`` may step back a little between callers
        if self._charges and self._charges[0][0] < cutoff:
            self._charges = [(at, c) for at, c in self._charges if at >= cutoff]


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}min"
    return f"{seconds:.0f}s"
