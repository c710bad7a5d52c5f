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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from collector.coincap.rest import credits_for

__all__ = ["DAYS_PER_MONTH", "ESTIMATED_BYTES", "MAX_INTERVAL", "CreditPlanner", "PlanLine", "PollSpec"]

DAYS_PER_MONTH = 31
WS_CREDITS_PER_DAY = 24 * 60
MAX_INTERVAL = 86_400.0
"""A plan needing a poll interval above a day does not fit: the data would be too stale to be useful."""
_SMOOTHING = 0.3

ESTIMATED_BYTES: Mapping[str, int] = {
    "asset": 450,  # one /assets row, as CoinCap v3 sends it
    "exchange": 320,
    "market": 420,
    "rate": 150,
    "envelope": 40,  # {"timestamp": ..., "data": [...]}
}


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
    """Plans poll intervals under a monthly budget (None = unlimited: the configured intervals)."""

    def __init__(self, budget_per_month: int | None, polls: Iterable[PollSpec], *, websocket: bool) -> None:
        if budget_per_month is not None and budget_per_month <= 0:
            raise ValueError("the credit budget must be positive (or None for unlimited)")
        self.budget_per_month = budget_per_month
        self.websocket = websocket
        self._polls = {p.name: p for p in polls}
        self._credits = {p.name: p.credits_per_run for p in self._polls.values()}
        self._factor = 1.0
        self._intervals: dict[str, float] = {}
        self._fits = True
        self._replan()

    # -- inputs --------------------------------------------------------------------------------------------

    def observe(self, name: str, credits: int) -> None:
        """What one run of poll ``name`` really cost; re-plans."""
        if name not in self._polls or credits <= 0:
            return
        self._credits[name] += _SMOOTHING * (credits - self._credits[name])
        self._replan()

    def set_websocket(self, connected_plan: bool) -> None:
        """The stream is (or is no longer) part of the plan, e.g. after falling back to REST polling."""
        self.websocket = connected_plan
        self._replan()

    def add(self, poll: PollSpec) -> None:
        """A poll that starts later (REST price polling after a WebSocket fallback)."""
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
        """Whether the budget covers the stream and every poll at intervals of at most a day."""
        return self._fits

    @property
    def stretch(self) -> float:
        """The factor applied to every configured interval (1.0: the configuration fits as it is)."""
        return self._factor

    def lines(self) -> list[PlanLine]:
        return [PlanLine(n, self.interval(n), self._credits[n]) for n in self._polls]

    def credits_per_day(self) -> float:
        return sum(line.credits_per_day for line in self.lines()) + (WS_CREDITS_PER_DAY if self.websocket else 0)

    def describe(self) -> list[str]:
        """Human lines: what is polled how often, credits per day and month, and whether it fits."""
        out = []
        if self.websocket:
            out.append(f"websocket: connected all day = {WS_CREDITS_PER_DAY} credits/day")
        for line in self.lines():
            out.append(f"{line.name}: every {_span(line.interval)} x {line.credits_per_run:.1f} credits "
                       f"= {line.credits_per_day:,.0f} credits/day")
        per_month = self.credits_per_day() * DAYS_PER_MONTH
        if self.budget_per_month is None:
            out.append(f"total: {per_month:,.0f} credits per {DAYS_PER_MONTH}-day month (no budget set)")
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
        per_day = self.budget_per_month / DAYS_PER_MONTH - (WS_CREDITS_PER_DAY if self.websocket else 0)
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


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}min"
    return f"{seconds:.0f}s"
