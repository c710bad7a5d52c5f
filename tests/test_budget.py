"""The API credit plan: pure arithmetic, the scheduler obeying it, and it re-planning on real costs."""

from __future__ import annotations

import itertools
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest

from collector.app import credit_planner
from collector.budget import DAYS_PER_MONTH, MAX_INTERVAL, CreditPlanner, PollSpec
from collector.buffer import RecordQueue
from collector.coincap.models import ParseResult
from collector.doctor import plan_checks
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


# -- the gap backfill allowance (pure: times are passed in) -------------------------------------------------

T0 = datetime(2026, 11, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_the_backfill_share_is_taken_off_what_the_stream_leaves_before_the_polls_are_planned() -> None:
    polls = [PollSpec("prices", 30, 1), PollSpec("assets", 300, 19)]
    planner = CreditPlanner(4000, polls, websocket=False, backfill_share=0.25)
    assert planner.backfill_per_day == pytest.approx(0.25 * 4000 / DAYS_PER_MONTH)
    # the polls get the other 75 %, exactly, and the whole plan is the budget
    polls_per_day = sum(line.credits_per_day for line in planner.lines())
    assert polls_per_day == pytest.approx(0.75 * 4000 / DAYS_PER_MONTH)
    assert per_month(planner) == pytest.approx(4000) and planner.fits
    without = CreditPlanner(4000, polls, websocket=False)
    assert planner.interval("prices") == pytest.approx(without.interval("prices") / 0.75)
    # with the stream, the share is of what it leaves: (75,000 / 31 - 1,440) * 0.2
    paid = CreditPlanner(75_000, polls, websocket=True, backfill_share=0.2)
    assert paid.backfill_per_day == pytest.approx(0.2 * (75_000 / DAYS_PER_MONTH - 1440))
    assert per_month(paid) == pytest.approx(75_000) and paid.fits
    # the stream alone over budget: nothing left to reserve
    assert CreditPlanner(4000, polls, websocket=True, backfill_share=0.2).backfill_per_day == 0
    # no budget: no limit; backfill off: no reserve
    assert CreditPlanner(None, polls, websocket=False, backfill_share=0.2).backfill_per_day is None
    off = CreditPlanner(4000, polls, websocket=False, backfill_share=0.2, backfill=False)
    assert off.backfill_per_day == 0 and off.interval("prices") == pytest.approx(without.interval("prices"))
    with pytest.raises(ValueError, match="share"):
        CreditPlanner(4000, polls, websocket=False, backfill_share=1.0)


def test_a_request_runs_only_while_the_last_24_hours_leave_room_for_it() -> None:
    planner = CreditPlanner(31 * 100, [], websocket=False, backfill_share=0.1)  # 10 credits a day
    assert planner.backfill_per_day == pytest.approx(10)
    assert planner.backfill_wait(T0, 4) == 0.0
    planner.charge_backfill(T0, 4)
    planner.charge_backfill(T0 + HOUR, 3)
    planner.charge_backfill(T0 + 2 * HOUR, 2)
    now = T0 + 3 * HOUR
    assert planner.backfill_used(now) == 9
    assert planner.backfill_wait(now, 1) == 0.0
    # 2 more need the first charge (4, at T0) to leave the window: at T0 + 24 h
    assert planner.backfill_wait(now, 2) == pytest.approx((T0 + 24 * HOUR - now).total_seconds())
    # 6 more need the second one gone too (at T0 + 1 h + 24 h)
    assert planner.backfill_wait(now, 6) == pytest.approx((T0 + 25 * HOUR - now).total_seconds())
    assert planner.backfill_wait(now, 11) is None  # more than a whole day's allowance: never
    assert planner.backfill_wait(T0 + 24 * HOUR, 2) == 0.0  # the first charge has left the window
    assert planner.backfill_used(T0 + 24 * HOUR) == 5
    # a restart: the record from the database replaces what the planner held
    planner.load_backfill([(T0 + 20 * HOUR, 10)])
    assert planner.backfill_wait(T0 + 21 * HOUR, 1) == pytest.approx(23 * 3600)
    # without a budget nothing waits, but charges are still counted
    free = CreditPlanner(None, [], websocket=False, backfill_share=0.2)
    free.charge_backfill(T0, 500)
    assert free.backfill_wait(T0, 10_000) == 0.0 and free.backfill_used(T0) == 500


def test_a_greedy_backfiller_never_spends_more_than_its_share_in_any_month() -> None:
    """Ask every 7 minutes for requests of 1-13 credits for 100 days, charging what the planner allowed; every
    window of 28 to 31 days (at any hour) stays within share x the month's budget."""
    budget, share = 4000, 0.2
    planner = CreditPlanner(budget, [PollSpec("prices", 30, 1)], websocket=False, backfill_share=share)
    rng = random.Random(7)
    spent: list[tuple[datetime, int]] = []
    now = T0
    while now < T0 + timedelta(days=100):
        cost = rng.randint(1, 13)
        if planner.backfill_wait(now, cost) == 0.0:
            planner.charge_backfill(now, cost)
            spent.append((now, cost))
        now += timedelta(minutes=7)
    assert sum(c for _, c in spent) > 0.9 * share * budget / DAYS_PER_MONTH * 100  # it did keep spending
    reserve = share * budget  # per 31-day month
    for days in (28, 30, 31):
        for hour in range(0, 69 * 24, 5):
            lo = T0 + timedelta(hours=hour)
            hi = lo + timedelta(days=days)
            assert sum(c for at, c in spent if lo <= at < hi) <= reserve + 1e-9


def test_the_bytes_per_point_estimate_learns_from_answers_of_two_credits_or_more() -> None:
    planner = CreditPlanner(4000, [], websocket=False, backfill_share=0.2)
    assert planner.backfill_estimate(500) == 1 + (500 * 80 + 40) // 2500  # 17 from the 80-byte estimate
    assert planner.backfill_estimate(10) == 1
    for _ in range(30):
        planner.charge_backfill(T0, 12, points=500)  # real answers: 500 points cost 12 credits (~57 bytes each)
        planner.charge_backfill(T0, 1, points=3)  # one-credit answers say little about size: ignored
    assert planner.backfill_estimate(500) == 12


def test_describe_and_doctor_show_the_allowance_and_warn_when_it_cannot_pay() -> None:
    polls = [PollSpec("prices", 30, 1)]
    fine = CreditPlanner(4000, polls, websocket=False, backfill_share=0.2, gap_assets=2)
    line = [x for x in fine.describe() if x.startswith("gap backfill")]
    assert line == ["gap backfill: up to 25.8 credits/day, 20% of what the stream leaves (COINPULSE_BACKFILL_SHARE); "
                    "one outage of the 2 tracked assets costs about 2"]
    assert [c.status for c in plan_checks(fine, 200)] == ["OK"] * 3
    assert fine.describe_backfill(used=7).startswith("gap backfill: up to 25.8 credits/day, 20% of what the stream "
                                                     "leaves (COINPULSE_BACKFILL_SHARE); used 7 in the last 24 h")
    # 100 tracked assets: one outage costs 100 credits, about 3.9 days of the allowance
    many = CreditPlanner(4000, polls, websocket=False, backfill_share=0.2, gap_assets=100)
    warned = [c for c in plan_checks(many, 200) if c.status == "WARN"]
    assert [c.detail for c in warned] == [
        "gap backfill: up to 25.8 credits/day, 20% of what the stream leaves (COINPULSE_BACKFILL_SHARE); one outage "
        "of the 100 tracked assets costs about 100, 3.9 days of it: gaps after an outage wait days for credits; "
        "raise COINPULSE_BACKFILL_SHARE or COINPULSE_CREDIT_BUDGET, or track fewer COINPULSE_ASSETS"]
    # 2,000 points a request cost ~65 credits, more than the whole allowance
    warned = [c for c in plan_checks(fine, 2000) if c.status == "WARN"]
    assert len(warned) == 1 and "a history request of up to 2000 points costs about 65, more than the allowance" \
        in warned[0].detail
    # the stream takes everything: nothing for backfills
    ws = CreditPlanner(4000, polls, websocket=True, backfill_share=0.2)
    assert "gap backfill: 0 credits/day (the stream takes the whole budget): gaps stay open until `coinpulse " \
           "backfill --gaps`" in ws.describe()
    assert not ws.backfill_covers(500)
    assert "gap backfill: no limit (no budget set)" in CreditPlanner(None, polls, websocket=False).describe()


def test_the_collectors_plan_reserves_the_configured_share_for_backfills() -> None:
    settings = load_settings({"COINCAP_API_KEY": "k", "COINPULSE_ASSETS": "bitcoin,ethereum,solana"})
    planner = credit_planner(settings, websocket=False)
    assert planner is not None and planner.backfill_share == 0.2 and planner.gap_assets == 3
    assert planner.backfill_per_day == pytest.approx(0.2 * 4000 / DAYS_PER_MONTH)
    off = credit_planner(load_settings({"COINCAP_API_KEY": "k", "COINPULSE_BACKFILL": "off"}), websocket=False)
    assert off is not None and off.backfill_per_day == 0 and not off.backfill
    assert "gap backfill: off (COINPULSE_BACKFILL=off)" in off.describe()[-2]
    halves = credit_planner(load_settings({"COINCAP_API_KEY": "k", "COINPULSE_BACKFILL_SHARE": "0.5",
                                           "COINPULSE_REPLICAS": "2", "COINPULSE_REPLICA_INDEX": "1"}),
                            websocket=False)
    assert halves is not None and halves.backfill_share == 0.5 and halves.gap_assets == 50  # ALL: top 100 / 2
