"""The API credit plan: pure arithmetic, the scheduler obeying it, and it re-planning on real costs."""

from __future__ import annotations

import itertools
import threading

import pytest

from collector.app import credit_planner
from collector.budget import DAYS_PER_MONTH, MAX_INTERVAL, CreditPlanner, PollSpec
from collector.buffer import RecordQueue
from collector.coincap.models import ParseResult
from collector.intake import Intake
from collector.metrics import Metrics
from collector.scheduler import Job, Scheduler
from collector.settings import load_settings


def per_month(planner: CreditPlanner) -> float:
    return planner.credits_per_day() * DAYS_PER_MONTH


def test_estimates_follow_coincaps_billing() -> None:
    # 100 assets * 450 bytes + 40 = 45,040 bytes -> 1 + 18 credits
    assert PollSpec.estimate("assets", 60, 100, "asset").credits_per_run == 19
    assert PollSpec.estimate("assets", 60, 3, "asset").credits_per_run == 1
    assert PollSpec.estimate("assets", 60, 4000, "asset", calls=2).credits_per_run == 2 * (1 + 900_040 // 2500)


def test_unlimited_budget_keeps_the_configuration() -> None:
    planner = CreditPlanner(None, [PollSpec("prices", 30, 19)], websocket=False)
    assert planner.interval("prices") == 30 and planner.fits and planner.stretch == 1.0
    assert planner.credits_per_day() == pytest.approx(19 * 2880)


def test_a_budget_that_fits_changes_nothing() -> None:
    polls = [PollSpec("assets", 300, 19), PollSpec("rates", 900, 9)]
    needed = (19 * 288 + 9 * 96) * DAYS_PER_MONTH
    planner = CreditPlanner(needed + 10, polls, websocket=False)
    assert planner.interval("assets") == 300 and planner.interval("rates") == 900 and planner.fits


def test_too_small_a_budget_stretches_every_interval_alike_to_exactly_fit() -> None:
    polls = [PollSpec("prices", 30, 1), PollSpec("assets", 300, 19)]
    planner = CreditPlanner(4000, polls, websocket=False)
    factor = planner.stretch
    assert factor > 1 and planner.fits
    assert planner.interval("prices") == pytest.approx(30 * factor)
    assert planner.interval("assets") == pytest.approx(300 * factor)
    assert per_month(planner) == pytest.approx(4000)
    assert planner.describe()[-1].startswith("total: 4,000 of 4,000 credits per 31-day month: fits with intervals")


def test_intervals_stop_at_a_day_and_the_others_pay_for_it() -> None:
    polls = [PollSpec("prices", 60, 1), PollSpec("markets", 43_200, 34)]
    planner = CreditPlanner(2500, polls, websocket=False)
    assert planner.interval("markets") == MAX_INTERVAL
    # what is left after the daily markets poll goes to prices, exactly
    assert planner.interval("prices") == pytest.approx(86_400 / (2500 / DAYS_PER_MONTH - 34))
    assert planner.fits and per_month(planner) == pytest.approx(2500)


def test_the_websocket_is_paid_first_and_a_budget_below_it_does_not_fit() -> None:
    polls = [PollSpec("assets", 300, 19)]
    paid = CreditPlanner(75_000, polls, websocket=True)
    assert paid.fits and per_month(paid) <= 75_000
    assert paid.credits_per_day() == pytest.approx(1440 + 19 * 86_400 / paid.interval("assets"))
    free = CreditPlanner(4000, polls, websocket=True)
    assert not free.fits and free.interval("assets") == MAX_INTERVAL
    assert "DOES NOT FIT (the WebSocket alone needs 44,640)" in free.describe()[-1]


def test_observed_costs_replace_estimates_and_re_plan() -> None:
    planner = CreditPlanner(10_000, [PollSpec("assets", 60, 1)], websocket=False)
    before = planner.interval("assets")
    for _ in range(30):
        planner.observe("assets", 10)  # responses turned out ten times bigger than estimated
    assert planner.interval("assets") == pytest.approx(before * 10, rel=0.01)
    planner.observe("unknown", 5)  # ignored
    assert planner.fits


def test_fallback_to_rest_drops_the_websocket_and_adds_price_polling() -> None:
    settings = load_settings({"COINCAP_API_KEY": "k", "COINPULSE_ASSETS": "bitcoin,ethereum",
                              "COINPULSE_CREDIT_BUDGET": "75000"})
    planner = credit_planner(settings, websocket=True)
    assert planner is not None and not planner.knows("prices") and planner.websocket
    planner.set_websocket(False)
    planner.add(PollSpec.estimate("prices", settings.rest_price_interval, 2, "asset"))
    assert planner.knows("prices") and not planner.websocket and planner.fits
    assert credit_planner(load_settings({"COINPULSE_FEED": "demo"}), websocket=False) is None
    unlimited = credit_planner(load_settings({"COINCAP_API_KEY": "k", "COINPULSE_CREDIT_BUDGET": "0"}),
                               websocket=False)
    assert unlimited is not None and unlimited.budget_per_month is None


def test_scheduler_runs_jobs_at_planned_intervals_and_feeds_back_their_cost() -> None:
    now = [0.0]
    spent = [0]
    runs: list[float] = []

    def fetch() -> ParseResult[object]:
        runs.append(now[0])
        spent[0] += 4  # each call costs 4 credits, the estimate said 1
        return ParseResult([], [])

    # 1 credit per run every 10 s wanted = 8,640/day; budget 4,320/day
    planner = CreditPlanner(4320 * DAYS_PER_MONTH, [PollSpec("prices", 10, 1)], websocket=False)
    sched = Scheduler([Job("prices", 10, fetch)], Intake(RecordQueue(10), Metrics()), monotonic=lambda: now[0],
                      planner=planner, credit_meter=lambda: spent[0])

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            now[0] += timeout or 0
            if now[0] > 3600:
                self.set()
            return self.is_set()

    sched.run(Stop())
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps[0] == pytest.approx(20 * (1 + 0.3 * 3), rel=0.01)  # first re-plan after one observed run
    assert gaps[-1] == pytest.approx(80, rel=0.02)  # converged: 4 credits per run at 4,320 a day
    assert all(b >= a for a, b in itertools.pairwise(gaps))
