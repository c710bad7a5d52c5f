"""Polling on a schedule: REST snapshots (assets, exchanges, markets, rates) and REST price polling.

Each job is a name, an interval and a function returning a ParseResult; the scheduler runs whichever is
due next, hands the result to the intake, and survives every CoinCap error (logged, counted by the REST
client, retried at the next due time). The first run of every job is at start.

With a credit planner (collector/budget.py) the interval of a job it knows comes from the plan, and the
credits each run cost (read from ``credit_meter``, the REST client's running total) are fed back to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from collector.budget import CreditPlanner
from collector.coincap.models import ParseResult
from collector.errors import CoinCapAuthError, CoinCapError
from collector.intake import Intake

__all__ = ["Job", "Scheduler"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    interval: float
    fetch: Callable[[], ParseResult[Any]]


class Scheduler:
    def __init__(self, jobs: Sequence[Job], intake: Intake, *,
                 monotonic: Callable[[], float] = time.monotonic, planner: CreditPlanner | None = None,
                 credit_meter: Callable[[], int] | None = None) -> None:
        if not jobs:
            raise ValueError("a scheduler needs at least one job")
        self.jobs = list(jobs)
        self._intake = intake
        self._monotonic = monotonic
        self._planner = planner
        self._credit_meter = credit_meter
        self.last_error: dict[str, str] = {}

    def run(self, stop: threading.Event) -> None:
        due = dict.fromkeys((job.name for job in self.jobs), self._monotonic())
        by_name = {job.name: job for job in self.jobs}
        while not stop.is_set():
            name = min(due, key=lambda n: due[n])
            wait = due[name] - self._monotonic()
            if wait > 0:
                if stop.wait(wait):
                    break
                continue
            job = by_name[name]
            before = self._credit_meter() if self._credit_meter is not None else 0
            self.run_job(job)
            if self._planner is not None and self._credit_meter is not None:
                self._planner.observe(job.name, self._credit_meter() - before)
            due[name] = max(due[name] + self.interval_of(job), self._monotonic())

    def interval_of(self, job: Job) -> float:
        """The job's interval: the credit plan's when there is one that knows the job, else its own."""
        if self._planner is not None and self._planner.knows(job.name):
            return self._planner.interval(job.name)
        return job.interval

    def run_job(self, job: Job) -> bool:
        try:
            result = job.fetch()
        except CoinCapAuthError as exc:
            self._failed(job, str(exc), logging.ERROR)
            return False
        except CoinCapError as exc:
            self._failed(job, str(exc), logging.WARNING)
            return False
        self.last_error.pop(job.name, None)
        self._intake.accept(result)
        log.debug("polled job=%s records=%d rejects=%d", job.name, len(result.records), len(result.rejects))
        return True

    def _failed(self, job: Job, message: str, level: int) -> None:
        if self.last_error.get(job.name) != message:  # say each new problem once, not every interval
            log.log(level, "poll failed job=%s next_try_in=%.0fs error=%s", job.name, self.interval_of(job),
                    message)
        self.last_error[job.name] = message
