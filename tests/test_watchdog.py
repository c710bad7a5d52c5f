"""The price stream's watchdog and reconnect backoff (collector/coincap/stream.py), against the fake CoinCap's
real WebSocket server, with the clock injected: silence is simulated by moving a fake clock, backoff waits are
recorded instead of slept, so nothing here waits for real seconds."""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from collector.backoff import Backoff
from collector.coincap.stream import PriceStream
from collector.metrics import Metrics
from fake_coincap import FakeCoinCap

WATCHDOG = 30.0


class FakeClock:
    """Monotonic seconds that move only when told; counts how often it is read."""

    def __init__(self) -> None:
        self._t = 1000.0
        self._lock = threading.Lock()
        self.reads = 0

    def __call__(self) -> float:
        with self._lock:
            self.reads += 1
            return self._t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not done.is_set():
            if predicate():
                return True
            done.wait(0.005)
        return predicate()
    finally:
        deadline.cancel()


class Harness:
    """A PriceStream on a thread with a fake clock, recording every callback and backoff wait."""

    def __init__(self, fake: FakeCoinCap, backoff: Backoff,
                 on_message: Callable[[str, datetime], object] | None = None) -> None:
        self.clock = FakeClock()
        self.metrics = Metrics()
        self.stop = threading.Event()
        self.messages: list[str] = []
        self.connects: queue.Queue[datetime] = queue.Queue()
        self.events: list[str] = []
        self.sleeps: list[float] = []

        def message(text: str, at: datetime) -> None:
            self.messages.append(text)
            if on_message is not None:
                on_message(text, at)

        def sleep(seconds: float) -> bool:  # the backoff wait: recorded, and simulated on the fake clock
            self.sleeps.append(seconds)
            self.clock.advance(seconds)
            return self.stop.is_set()

        def connected(at: datetime) -> None:
            self.events.append("connect")
            self.connects.put(at)

        self.stream = PriceStream(
            fake.ws_url, fake.api_key or "", ["bitcoin"], message, metrics=self.metrics, watchdog=WATCHDOG,
            backoff=backoff, clock=self.clock, sleep=sleep, poll=0.01, on_connect=connected,
            on_disconnect=lambda at, reason: self.events.append(f"disconnect:{reason}"))
        self.thread = threading.Thread(target=self.stream.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Harness:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def next_connection(self) -> None:
        self.connects.get(timeout=10)

    def settle(self, reads: int = 5) -> None:
        """Let the receive loop look at the clock a few more times (it reads it once per poll)."""
        target = self.clock.reads + reads
        assert wait_until(lambda: self.clock.reads >= target)

    def reconnects(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value("coinpulse_stream_reconnects_total", {"reason": reason})
        return value or 0.0


@pytest.fixture
def fake() -> Iterator[FakeCoinCap]:
    with FakeCoinCap() as server:
        yield server


def test_silence_on_an_open_socket_forces_a_reconnect_after_the_watchdog_period(fake: FakeCoinCap) -> None:
    fake.ws_script(['{"bitcoin": "84000.1"}'])  # one frame on every new connection, then silence (socket open)
    with Harness(fake, Backoff(initial=1.0, cap=60.0, rng=random.Random(1))) as h:
        h.next_connection()
        assert wait_until(lambda: len(h.messages) == 1)
        h.clock.advance(WATCHDOG - 0.5)
        h.settle()
        assert fake.ws_connections == 1 and h.events == ["connect"]  # 29.5 s of silence: still connected
        assert fake.ws_open == 1
        h.clock.advance(0.5)
        h.next_connection()  # 30 s: the watchdog closed the socket and the stream connected again
        assert wait_until(lambda: len(h.messages) == 2)
        assert h.events == ["connect", "disconnect:watchdog", "connect"]
        assert fake.ws_connections == 2
        assert h.reconnects("watchdog") == 1
        assert len(h.sleeps) == 1 and 0.75 <= h.sleeps[0] <= 1.25  # first delay: initial, +/- 25% jitter
    assert h.events[-1] == "disconnect:stop"  # every connect has exactly one disconnect
    assert fake.wait_for(lambda: fake.ws_open == 0)


def test_a_steady_stream_never_trips_the_watchdog(fake: FakeCoinCap) -> None:
    harness: list[Harness] = []
    # every message "takes" 20 s of fake time: the stream runs for 2,000 s, never silent for 30
    with Harness(fake, Backoff(initial=1.0, cap=60.0), on_message=lambda t, a: harness[0].clock.advance(20)) as h:
        harness.append(h)
        h.next_connection()
        assert fake.wait_for(lambda: fake.ws_open == 1)
        for i in range(100):
            assert fake.ws_send(f'{{"bitcoin": "{84000 + i}"}}') == 1
            assert wait_until(lambda: len(h.messages) == i + 1)  # noqa: B023 - evaluated within the iteration
        h.settle()
        assert h.events == ["connect"] and fake.ws_connections == 1 and h.sleeps == []
        assert h.reconnects("watchdog") == 0


def test_reconnects_back_off_exponentially_capped_and_jittered(fake: FakeCoinCap) -> None:
    fake.ws_silent()  # connections are accepted and kept open, but nothing is ever sent
    seed, cap = 7, 8.0
    with Harness(fake, Backoff(initial=1.0, cap=cap, factor=2.0, jitter=0.25, rng=random.Random(seed))) as h:
        for _ in range(8):
            h.next_connection()
            h.clock.advance(WATCHDOG)
        h.next_connection()
        sleeps = list(h.sleeps)
    assert len(sleeps) == 8 and h.reconnects("watchdog") == 8
    bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    for delay, base in zip(sleeps, bases, strict=True):
        assert base * 0.75 <= delay <= min(base * 1.25, cap), (delay, base)
    assert max(sleeps) <= cap  # capped
    assert len(set(sleeps[3:])) > 1 and sleeps != bases  # jittered: capped delays differ from each other
    # exactly the injected backoff's sequence (same seed): the stream waits what the policy says, no more
    reference = Backoff(initial=1.0, cap=cap, factor=2.0, jitter=0.25, rng=random.Random(seed))
    assert sleeps == [reference.next_delay() for _ in range(8)]


def test_a_connection_that_delivers_resets_the_backoff(fake: FakeCoinCap) -> None:
    fake.ws_silent()
    with Harness(fake, Backoff(initial=1.0, cap=60.0, jitter=0.25, rng=random.Random(3))) as h:
        for _ in range(3):  # three silent connections: delays grow 1, 2, 4
            h.next_connection()
            h.clock.advance(WATCHDOG)
        h.next_connection()
        assert fake.wait_for(lambda: fake.ws_connections == 4 and fake.ws_open == 1)
        fake.ws_silent(False)
        assert fake.ws_send('{"bitcoin": "84000.1"}') == 1  # the 4th connection works...
        assert wait_until(lambda: len(h.messages) == 1)
        fake.ws_silent()
        h.clock.advance(WATCHDOG)  # ...then falls silent
        h.next_connection()
        sleeps = list(h.sleeps)
    for delay, base in zip(sleeps[:3], (1.0, 2.0, 4.0), strict=True):
        assert base * 0.75 <= delay <= base * 1.25
    assert 0.75 <= sleeps[3] <= 1.25  # back to the initial delay after a working connection


def test_a_server_that_closes_is_reconnected_with_reason_closed(fake: FakeCoinCap) -> None:
    with Harness(fake, Backoff(initial=1.0, cap=60.0)) as h:
        h.next_connection()
        assert fake.wait_for(lambda: fake.ws_open == 1)
        assert fake.ws_close_all() == 1
        h.next_connection()
        assert h.events[:3] == ["connect", "disconnect:closed", "connect"]
        assert h.reconnects("closed") == 1 and h.reconnects("watchdog") == 0


def test_watchdog_settings_are_validated() -> None:
    for bad in ({"watchdog": 0.0}, {"poll": 0.0}, {"connect_timeout": -1.0}):
        with pytest.raises(ValueError, match="must be positive"):
            PriceStream("ws://127.0.0.1:9", "k", ["bitcoin"], lambda t, a: None, **bad)  # type: ignore[arg-type]


def test_wall_clock_stamps_messages(fake: FakeCoinCap) -> None:
    fake.ws_script(['{"bitcoin": "1"}'])
    stamped: list[datetime] = []
    at = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    stop = threading.Event()
    stream = PriceStream(fake.ws_url, fake.api_key or "", ["bitcoin"],
                         lambda text, when: (stamped.append(when), stop.set()), wall_clock=lambda: at, poll=0.01)
    thread = threading.Thread(target=stream.run, args=(stop,), daemon=True)
    thread.start()
    thread.join(10)
    assert stamped == [at]
