"""Scale-out, part 2: exactly one replica runs the snapshot schedule (collector/leader.py), on a real database.

Two "replicas" live in one process, each with its own dedicated connection; killing the leader's backend with
pg_terminate_backend is what a crashed pod or a dropped network looks like to the server.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from collector.app import Collector
from collector.errors import DatabaseError
from collector.leader import LOCK_KEY, SnapshotLeader, leader_connection
from collector.settings import load_settings
from collector.sharding import owner_of
from fake_coincap import DEFAULT_KEY, FakeCoinCap

RETRY = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def url(make_database: Callable[[], str]) -> str:
    return make_database()  # a database of its own: advisory locks are per database


@pytest.fixture
def admin(url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def lock_holders(admin: psycopg.Connection[tuple[Any, ...]]) -> list[int]:
    """Backend pids holding the snapshot lock, as the server sees it."""
    rows = admin.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) AND classid::bigint = %s "
        "AND objid::bigint = %s", (LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF)).fetchall()
    return [int(r[0]) for r in rows]


def kill(admin: psycopg.Connection[tuple[Any, ...]], pid: int | None) -> None:
    assert pid is not None
    row = admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()
    assert row is not None and row[0] is True


@contextlib.contextmanager
def replicas(url: str, clock: Clock | None = None, retry: float = RETRY,
             ) -> Iterator[tuple[SnapshotLeader, SnapshotLeader]]:
    kwargs: dict[str, Any] = {"retry_interval": retry} | ({"clock": clock} if clock else {})
    a = SnapshotLeader(leader_connection(url, application_name="replica-a"), name="a", **kwargs)
    b = SnapshotLeader(leader_connection(url, application_name="replica-b"), name="b", **kwargs)
    try:
        yield a, b
    finally:
        a.release()
        b.release()


def test_exactly_one_of_two_replicas_leads(url: str, admin: psycopg.Connection[tuple[Any, ...]]) -> None:
    clock = Clock()
    with replicas(url, clock) as (a, b):
        assert a.poll() is True
        assert b.poll() is False
        for _ in range(3):  # holding is stable; the other keeps failing at each of its retries
            clock.advance(RETRY)
            assert (a.poll(), b.poll()) == (True, False)
        assert lock_holders(admin) == [a.backend_pid]
        assert b.backend_pid is not None and b.backend_pid != a.backend_pid  # two connections
        # Each leader connection has its own server-side keepalives, so the server drops a dead leader.
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name IN "
                            "('replica-a', 'replica-b')").fetchone()
        assert row == (2,)


def test_leader_connection_sets_keepalives_on_the_server(url: str) -> None:
    with leader_connection(url)() as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name LIKE 'tcp_keepalives_%'").fetchall())
        app = conn.execute("SHOW application_name").fetchone()
    assert settings == {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}
    assert app == ("coinpulse-leader",)


def test_killing_the_leaders_connection_hands_leadership_over(
        url: str, admin: psycopg.Connection[tuple[Any, ...]]) -> None:
    clock = Clock()
    with replicas(url, clock) as (a, b):
        assert a.poll() and not b.poll()
        kill(admin, a.backend_pid)
        assert lock_holders(admin) == []  # the server freed the lock with the session
        clock.advance(RETRY)
        assert a.poll() is False  # the old leader notices at its next check and steps down ...
        assert not a.is_leader
        assert b.poll() is True  # ... and the other replica takes over at its next try
        clock.advance(RETRY)
        assert (a.poll(), b.poll()) == (False, True)  # the old leader is now refused
        assert lock_holders(admin) == [b.backend_pid]


def test_a_replica_that_lost_leadership_lets_another_take_over_first(
        url: str, admin: psycopg.Connection[tuple[Any, ...]]) -> None:
    clock = Clock()
    with replicas(url, clock) as (a, b):
        assert a.poll() and not b.poll()
        kill(admin, a.backend_pid)
        clock.advance(RETRY)
        assert a.poll() is False  # notices the loss ...
        assert a.poll() is False  # ... and does not grab the free lock straight back
        assert lock_holders(admin) == []
        clock.advance(RETRY - 1)
        assert b.poll() is True


def test_tries_wait_for_the_retry_interval(url: str, admin: psycopg.Connection[tuple[Any, ...]]) -> None:
    clock = Clock()
    with replicas(url, clock) as (a, b):
        assert a.poll() and not b.poll()
        a.release()
        assert lock_holders(admin) == []
        clock.advance(RETRY - 0.5)
        assert b.poll() is False  # not due yet: no query, no lock
        assert b.seconds_to_next_try() == pytest.approx(0.5)
        clock.advance(0.5)
        assert b.poll() is True
        assert lock_holders(admin) == [b.backend_pid]


def test_releasing_unlocks_and_closes(url: str, admin: psycopg.Connection[tuple[Any, ...]]) -> None:
    with replicas(url, Clock()) as (a, _):
        assert a.poll()
        a.release()
        assert not a.is_leader and a.backend_pid is None
        assert lock_holders(admin) == []
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'replica-a'").fetchone()
        assert row == (0,)


def test_unreachable_database_means_not_leader_until_it_returns(url: str, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    down = True
    real = leader_connection(url)

    def connect() -> psycopg.Connection[Any]:
        if down:
            return leader_connection("postgresql://nobody@127.0.0.1:1/none")()
        return real()

    leader = SnapshotLeader(connect, clock=clock, retry_interval=RETRY)
    try:
        with caplog.at_level("WARNING", logger="collector.leader"):
            assert leader.poll() is False
            clock.advance(RETRY)
            assert leader.poll() is False
        problems = [r.getMessage() for r in caplog.records if "cannot try the leader lock" in r.getMessage()]
        assert len(problems) == 1  # said once, not at every retry
        assert "cannot connect to the database at postgresql://nobody@127.0.0.1:1/none" in problems[0]
        down = False
        clock.advance(RETRY)
        assert leader.poll() is True
    finally:
        leader.release()
    with pytest.raises(DatabaseError):
        leader_connection("postgresql://nobody@127.0.0.1:1/none")()


def wait_until(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Job:
    """A stand-in for the snapshot scheduler: counts how often it is started, runs until told to stop."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.starts = 0
        self.stopped_by_loss = 0

    def __call__(self, stop: threading.Event) -> None:
        self.starts += 1
        self.running.set()
        stop.wait()
        self.running.clear()
        self.stopped_by_loss += 1


def test_run_drives_the_job_on_exactly_one_replica_and_fails_over(
        url: str, admin: psycopg.Connection[tuple[Any, ...]]) -> None:
    stop_a, stop_b = threading.Event(), threading.Event()
    jobs = {"a": Job(), "b": Job()}
    with replicas(url, retry=0.2) as (a, b):
        threads = [threading.Thread(target=a.run, args=(jobs["a"], stop_a), daemon=True),
                   threading.Thread(target=b.run, args=(jobs["b"], stop_b), daemon=True)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: jobs["a"].running.is_set() or jobs["b"].running.is_set(), what="a leader")
            time.sleep(0.6)  # several check/retry rounds
            running = [name for name, job in jobs.items() if job.running.is_set()]
            assert len(running) == 1, running
            first = running[0]
            other = "b" if first == "a" else "a"
            holder = a if first == "a" else b
            assert lock_holders(admin) == [holder.backend_pid]

            kill(admin, holder.backend_pid)
            wait_until(lambda: jobs[other].running.is_set(), what="the other replica to take over")
            wait_until(lambda: not jobs[first].running.is_set(), what="the old leader to stop its job")
            assert jobs[first].stopped_by_loss == 1
            time.sleep(0.6)
            assert [n for n, job in jobs.items() if job.running.is_set()] == [other]
        finally:
            stop_a.set()
            stop_b.set()
            for thread in threads:
                thread.join(10)
    assert not any(t.is_alive() for t in threads)
    assert lock_holders(admin) == []  # stopping released everything


def test_a_failing_job_gives_up_leadership_and_raises(url: str, admin: psycopg.Connection[tuple[Any, ...]]) -> None:
    def broken(stop: threading.Event) -> None:
        raise RuntimeError("scheduler exploded")

    leader = SnapshotLeader(leader_connection(url), retry_interval=0.1)
    with pytest.raises(RuntimeError, match="scheduler exploded"):
        leader.run(broken, threading.Event())
    assert not leader.is_leader
    assert lock_holders(admin) == []


# -- wired into the collector -------------------------------------------------------------------------------


def test_two_collector_replicas_split_prices_and_one_polls_snapshots(db_url: str) -> None:
    """Two `coinpulse run` replicas (in-process) on REST polling with COINPULSE_ASSETS=ALL: each polls prices
    of its own share of the universe, only one polls the snapshots, and together they store every asset."""
    fakes = [FakeCoinCap().start(), FakeCoinCap().start()]  # one per replica, to tell their requests apart
    template = fakes[0].assets[0]
    universe = [f"coin-{i}" for i in range(12)]
    for fake in fakes:
        with fake.lock:
            fake.assets = [{**copy.deepcopy(template), "id": asset, "rank": str(i + 1)}
                           for i, asset in enumerate(universe)]
    collectors = []
    try:
        for index, fake in enumerate(fakes):
            settings = load_settings({
                "COINPULSE_DATABASE_URL": db_url, "COINCAP_API_KEY": DEFAULT_KEY, "COINPULSE_FEED": "rest",
                "COINCAP_REST_URL": fake.rest_url, "COINCAP_WS_URL": fake.ws_url, "COINPULSE_ASSETS": "ALL",
                "COINPULSE_REST_ASSET_LIMIT": "12", "COINPULSE_CREDIT_BUDGET": "0",
                "COINPULSE_REST_PRICE_INTERVAL": "1", "COINPULSE_METRICS_HOST": "127.0.0.1",
                "COINPULSE_METRICS_PORT": "0", "COINPULSE_REPLICAS": "2", "COINPULSE_REPLICA_INDEX": str(index)})
            collectors.append(Collector(settings))
        for collector in collectors:
            collector.start()

        def ticked() -> set[str]:
            with psycopg.connect(db_url) as conn:
                return {str(r[0]) for r in conn.execute("SELECT DISTINCT asset_id FROM coinpulse.price_ticks")}

        wait_until(lambda: ticked() == set(universe), what="price ticks of every asset")
        wait_until(lambda: sum(bool(f.requests_to("/rates")) for f in fakes) >= 1, what="a snapshot poll")
        time.sleep(1.5)
    finally:
        for collector in collectors:
            collector.shutdown()
        for fake in fakes:
            fake.close()

    for index, fake in enumerate(fakes):
        priced = {req.query["ids"] for req in fake.requests_to("/assets") if "ids" in req.query}
        expected = ",".join(a for a in universe if owner_of(a, 2) == index)
        assert priced == {expected}, (index, priced)  # each replica polls prices of exactly its share
    leaders = [i for i, fake in enumerate(fakes)
               if fake.requests_to("/rates") or fake.requests_to("/exchanges")]
    assert len(leaders) == 1, leaders  # only the leader polls snapshots
    assert [c.leader is not None and c.leader.is_leader for c in collectors].count(True) == 0  # released at stop


@pytest.mark.parametrize("configured", ["list", "ALL"])
def test_websocket_replicas_subscribe_to_their_share(db_url: str, configured: str) -> None:
    """With the WebSocket feed, each replica's /prices subscription names exactly its share of the assets;
    with ALL, of the top COINPULSE_REST_ASSET_LIMIT assets that REST /assets lists at start."""
    fake = FakeCoinCap().start()
    assets = [f"coin-{i}" for i in range(12)]
    assert {owner_of(a, 3) for a in assets} == {0, 1, 2}  # every replica has a share to subscribe to
    if configured == "ALL":
        template = fake.assets[0]
        with fake.lock:  # the universe: these 12 and more beyond the limit, which no replica may take
            fake.assets = [{**copy.deepcopy(template), "id": a, "rank": str(i + 1)}
                           for i, a in enumerate([*assets, "beyond-1", "beyond-2"])]
    collectors = []
    try:
        for index in range(3):
            settings = load_settings({
                "COINPULSE_DATABASE_URL": db_url, "COINCAP_API_KEY": DEFAULT_KEY, "COINPULSE_FEED": "ws",
                "COINCAP_REST_URL": fake.rest_url, "COINCAP_WS_URL": fake.ws_url,
                "COINPULSE_ASSETS": "ALL" if configured == "ALL" else ",".join(assets),
                "COINPULSE_REST_ASSET_LIMIT": "12", "COINPULSE_CREDIT_BUDGET": "0",
                "COINPULSE_METRICS_HOST": "127.0.0.1", "COINPULSE_METRICS_PORT": "0",
                "COINPULSE_REPLICAS": "3", "COINPULSE_REPLICA_INDEX": str(index)})
            collectors.append(Collector(settings))
        for collector in collectors:
            collector.start()
        assert fake.wait_for(lambda: fake.ws_connections >= 3, timeout=15)
        with fake.lock:
            subscribed = sorted(parse_qs(urlsplit(path).query)["assets"][0] for path in fake.ws_paths)
    finally:
        for collector in collectors:
            collector.shutdown()
        fake.close()
    shares = sorted(",".join(a for a in assets if owner_of(a, 3) == i) for i in range(3))
    assert subscribed == shares
    assert sorted(",".join(subscribed).split(",")) == sorted(assets)  # all of them, each once
