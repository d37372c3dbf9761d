"""The adaptive in-flight limit (services/worker/concurrency.py) on a fake clock: how it grows,
backs off and honours Retry-After, and that the Serve client and the worker's settings use it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pydantic import ValidationError

from services.worker.concurrency import AdaptiveLimiter, LimitSettings, NoLimit, Signal, Slot, signal_of
from services.worker.config import WorkerSettings
from services.worker.serve_client import RetrySettings, ServeClient, TokenSource

_real_sleep = asyncio.sleep


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await _real_sleep(0)


def limiter(clock: FakeClock, **settings: object) -> tuple[AdaptiveLimiter, list[int]]:
    seen: list[int] = []
    # No bound on a cut unless a test asks: the cut lands on the level that worked, easier to
    # follow.
    values = {
        "min_limit": 1,
        "max_limit": 64,
        "initial": 8,
        "backoff": 0.5,
        "bounded_cuts": False,
        "slow_start_growth": 1.0,  # doubling per round trip: whole slots, easier to follow
    }
    values |= settings
    lim = AdaptiveLimiter(LimitSettings(**values), clock=clock, sleep=clock.sleep, on_limit=seen.append)  # type: ignore[arg-type]
    return lim, seen


def answer(
    lim: AdaptiveLimiter,
    clock: FakeClock,
    status: int,
    latency: float,
    retry_after: float | None = None,
    level: int | None = None,
):
    """One request that started now at ``level`` (default: the one that fills the limit) and
    ended ``latency`` later with ``status``, the limit in use."""
    slot = Slot(clock.now, lim.limit if level is None else level)
    clock.now += latency
    slot.answered(status, retry_after)
    lim.in_flight = lim.sent = lim.limit - 1  # the others in flight: the limit is in use
    lim.update(slot, clock.now)


def test_statuses_map_to_signals():
    assert signal_of(200) is Signal.OK
    assert {signal_of(s) for s in (429, 503, 504)} == {Signal.OVERLOAD}
    assert {signal_of(s) for s in (400, 401, 404, 413, 500)} == {Signal.IGNORE}


def test_doubles_per_round_trip_until_refused_then_holds_at_the_level_that_worked_below_it():
    clock = FakeClock()
    lim, seen = limiter(clock, max_limit=24, probe_interval_s=30)
    assert lim.limit == 8 and lim.slow_start and seen == [8]
    for _ in range(8):  # slow start: one slot per prompt answer, answered at levels 8..15
        answer(lim, clock, 200, 0.1)
    assert lim.limit == 16 and lim.worked(clock.now) == 15
    burst = [Slot(clock.now, level) for level in (17, 18, 19)]  # sent with it, before any answer
    answer(lim, clock, 503, 0.1, retry_after=1)  # refused at level 16: 15 worked, so 15, not 0.7x
    assert lim.limit == 15 == lim.ceiling and not lim.slow_start
    for slot in burst:  # refusals of the same burst: that cut answered for them
        slot.answered(503, 1)
        lim.update(slot, clock.now)
    assert lim.limit == 15, "a burst's refusals do not cut again"
    refused_at = clock.now
    while clock.now < refused_at + 29:  # the ceiling holds
        answer(lim, clock, 200, 0.1)
    assert lim.limit == 15
    for _ in range(400):  # the ceiling has expired: probing further, one slot per round trip
        answer(lim, clock, 200, 0.1)
    assert lim.limit == 24, "capped at max_limit"
    assert seen == [8, *range(9, 17), 15, *range(16, 25)]


def test_a_refusal_cuts_to_the_highest_level_that_worked_below_it_in_the_window():
    clock = FakeClock()
    lim, _ = limiter(clock, initial=20, max_limit=20, window_s=5)
    for level in (12, 17, 9):
        answer(lim, clock, 200, 0.1, level=level)
    assert lim.worked(clock.now) == 17
    answer(lim, clock, 503, 0.1, level=15)  # 17 worked, but not below the refused level 15
    assert lim.limit == 12 == lim.ceiling
    # Answers older than the window are forgotten: only 9 worked in the last 5 s.
    clock.now += 4.75
    answer(lim, clock, 200, 0.1, level=9)
    clock.now += 1
    assert lim.worked(clock.now) == 9
    clock.now += 5
    assert lim.worked(clock.now) is None
    answer(lim, clock, 503, 0.1, level=10)  # nothing worked lately: backoff, 0.5 here
    assert lim.limit == 6 == lim.ceiling


def test_bounded_cuts_one_low_refusal_cuts_by_the_backoff_at_most_and_refusals_that_go_on_cut_again():
    clock = FakeClock()
    lim, seen = limiter(clock, initial=8, max_limit=32, bounded_cuts=True, backoff=0.7)
    # The batch's first round trip: level 1 answered (slow start: 8 -> 9), then a stray refusal
    # at level 2. Unbounded, the cut would land on 1 and the ceiling hold it there; bounded, 0.7x.
    answer(lim, clock, 200, 0.05, level=1)
    answer(lim, clock, 503, 0.05, retry_after=1, level=2)
    assert lim.limit == int(0.7 * 9) == 6 == int(lim.ceiling) and seen == [8, 9, 6]
    # Later, Serve having answered levels up to 12: a refusal at level 4 cuts to 0.7x, not to 3.
    lim, seen = limiter(clock, initial=12, max_limit=12, bounded_cuts=True, backoff=0.7)
    for level in range(1, 13):
        answer(lim, clock, 200, 0.05, level=level)
    answer(lim, clock, 503, 0.05, retry_after=1, level=4)
    assert lim.limit == int(0.7 * 12) == 8
    # Refusals that go on, one per round trip, cut again, 0.7x each, down to what worked (3).
    limits = []
    for _ in range(5):
        answer(lim, clock, 503, 0.05, retry_after=1, level=4)
        limits.append(lim.limit)
    assert limits == [5, 4, 3, 3, 3] and seen == [12, 8, 5, 4, 3]


def test_a_gentler_slow_start_grows_the_limit_by_half_per_round_trip():
    clock = FakeClock()
    lim, seen = limiter(clock, initial=8, max_limit=32, slow_start_growth=0.5)
    for _ in range(8):  # a round trip of answers at 8: half a slot each
        answer(lim, clock, 200, 0.1)
    assert lim.limit == 12 and lim.slow_start
    for _ in range(12):
        answer(lim, clock, 200, 0.1)
    assert lim.limit == 18 and seen == [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]
    with pytest.raises(ValueError, match="slow_start_growth"):
        LimitSettings(slow_start_growth=0)
    with pytest.raises(ValueError, match="slow_start_growth"):
        LimitSettings(slow_start_growth=1.5)


def round_trips(lim: AdaptiveLimiter, clock: FakeClock, holds: int, n: int) -> tuple[int, list[int]]:
    """``n`` round trips against a Serve that holds ``holds`` requests and refuses the rest as
    slowly as it answers (as the bench's Serve does): each round trip the whole limit goes out
    (levels 1..limit) and comes back 0.1 s later, answers first. The requests refused, and the
    highest limit of each round trip."""
    refused, peaks = 0, []
    for _ in range(n):
        sent = [Slot(clock.now, level) for level in range(1, lim.limit + 1)]
        clock.now += 0.1
        peak = lim.limit
        for slot in sent:
            slot.answered(200 if slot.level <= holds else 503, 1.0)
            refused += slot.level > holds
            lim.in_flight = lim.limit - 1  # the limit is in use
            lim.update(slot, clock.now)
            peak = max(peak, lim.limit)
        peaks.append(peak)
    return refused, peaks


def test_a_gentler_slow_start_overshoots_a_serve_that_holds_8_less():
    # The defaults' cuts (bounded, 0.7x); a fresh worker's first round trips against the bench's
    # overloaded Serve (4 + 4). Doubling: 16 go out in the second round trip and its 8 answers
    # raise the limit to 24 before the first refusal is back; bounded cuts then take two more
    # round trips of refusals to come down (24 -> 16 -> 11 -> 8).
    clock = FakeClock()
    lim, _ = limiter(clock, bounded_cuts=True, backoff=0.7, max_limit=32)
    assert round_trips(lim, clock, holds=8, n=6) == (8 + 8 + 3, [16, 24, 16, 11, 8, 8])
    assert lim.limit == 8
    # By half: 12 go out in the second round trip, 4 refused; one more round trip of 3.
    clock = FakeClock()
    lim, _ = limiter(clock, bounded_cuts=True, backoff=0.7, max_limit=32, slow_start_growth=0.5)
    assert round_trips(lim, clock, holds=8, n=6) == (4 + 3, [12, 16, 11, 8, 8, 8])
    assert lim.limit == 8
    # By a quarter (the default): 10 go out in the second round trip, 2 refused, and the first
    # cut lands on 8 (the level that worked; 0.7x of 12 is 8.4): no second round trip of them.
    clock = FakeClock()
    lim = AdaptiveLimiter(LimitSettings(), clock=clock, sleep=clock.sleep)
    assert round_trips(lim, clock, holds=8, n=6) == (2, [10, 12, 8, 8, 8, 8])
    assert lim.limit == 8


def test_a_quarter_per_round_trip_reaches_the_cap_of_32_from_8_in_7_round_trips():
    # What a fresh worker pays at normal load for the default's fewer refusals: 7 round trips to
    # 32 where growing by half takes 4 (each round trip's whole limit answered).
    for growth, trips in ((0.25, 7), (0.5, 4), (1.0, 2)):
        clock = FakeClock()
        lim, _ = limiter(clock, initial=8, max_limit=32, slow_start_growth=growth)
        assert round_trips(lim, clock, holds=32, n=trips - 1)[1][-1] < 32
        assert round_trips(lim, clock, holds=32, n=1) == (0, [32])


def test_an_idle_limit_does_not_grow():
    clock = FakeClock()
    lim, _ = limiter(clock)
    for _ in range(100):
        slot = Slot(clock.now)
        clock.now += 0.1
        slot.answered(200)
        lim.in_flight = 0  # one request at a time: the limit of 8 is not what holds it back
        lim.update(slot, clock.now)
    assert lim.limit == 8


def test_refusals_with_nothing_answered_halve_the_limit_once_per_round_trip_down_to_the_minimum():
    clock = FakeClock()
    lim, seen = limiter(clock, initial=32, min_limit=2)
    assert lim.slow_start
    # Three requests sent together, all refused: one cut, not three.
    sent = [Slot(clock.now, level) for level in (30, 31, 32)]
    clock.now += 0.05
    for slot in sent:
        slot.answered(503)
        lim.update(slot, clock.now)
    assert lim.limit == 16 == lim.ceiling
    # A request sent after the cut and refused: it answers for the new limit.
    answer(lim, clock, 503, 0.05)
    assert lim.limit == 8
    timeout = Slot(clock.now, 8)
    clock.now += 1
    timeout.overloaded()
    lim.update(timeout, clock.now)
    assert lim.limit == 4 == lim.ceiling
    for status in (429, 504, 503, 503):
        answer(lim, clock, status, 0.05)
    assert lim.limit == 2, "never below min_limit"
    assert seen == [32, 16, 8, 4, 2]


def test_other_errors_leave_the_limit_alone():
    clock = FakeClock()
    lim, _ = limiter(clock)
    for status in (400, 401, 404, 413, 500):
        answer(lim, clock, status, 0.05)
    assert lim.limit == 8


def test_rising_latency_cuts_the_limit_before_any_refusal():
    clock = FakeClock()
    lim, _ = limiter(clock, initial=16, max_limit=16, short_samples=5)
    for _ in range(100):
        answer(lim, clock, 200, 0.1)
    assert lim.limit == 16
    # Serve starts queueing: a round trip of answers takes 5x as long; the recent average climbs
    # past twice the long-run one, and the limit is cut once for them all.
    sent = [Slot(clock.now) for _ in range(16)]
    clock.now += 0.5
    for slot in sent:
        slot.answered(200)
        lim.update(slot, clock.now)
    assert lim.limit == 8
    # The next round trip is as slow: cut again.
    answer(lim, clock, 200, 0.5)
    assert lim.limit == 4


def test_defaults_back_off_by_three_tenths_and_tolerate_latency_that_does_not_double():
    settings = LimitSettings()
    assert (settings.backoff, settings.latency_tolerance, settings.initial) == (0.7, 2.0, 8)
    assert (settings.probe_interval_s, settings.window_s, settings.slow_start_growth) == (10.0, 5.0, 0.25)
    clock = FakeClock()
    lim = AdaptiveLimiter(LimitSettings(initial=20, max_limit=20), clock=clock, sleep=clock.sleep)
    for _ in range(50):
        answer(lim, clock, 200, 0.10)
    for _ in range(50):  # up by half: no cut
        answer(lim, clock, 200, 0.15)
    assert lim.limit == 20
    answer(lim, clock, 503, 0.1)
    assert lim.limit == 14


def test_latency_climbing_during_slow_start_does_not_cut():
    clock = FakeClock()
    lim, _ = limiter(clock, initial=8, max_limit=32)
    for latency in (0.1,) * 10 + (0.4,) * 40:  # Serve batches more as more arrive: slower, not full
        answer(lim, clock, 200, latency)
    assert lim.limit == 32 and lim.slow_start


async def test_waiters_get_slots_in_order_as_slots_free_up():
    clock = FakeClock()
    lim, _ = limiter(clock, initial=2)
    order: list[int] = []
    release = asyncio.Event()

    async def request(i: int) -> None:
        async with lim.slot():
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(request(i)) for i in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == [0, 1] and lim.in_flight == 2
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4] and lim.in_flight == 0


async def test_a_cancelled_waiter_gives_its_place_back():
    clock = FakeClock()
    lim, _ = limiter(clock, initial=1)
    await lim.acquire()
    waiter = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    lim._release()
    assert lim.in_flight == 0
    await asyncio.wait_for(lim.acquire(), 1)
    assert lim.in_flight == 1


class ManualClock(FakeClock):
    """A clock that moves only when told: sleepers wake as ``advance`` passes their time."""

    def __init__(self) -> None:
        super().__init__()
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        wake = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, wake))
        await wake

    async def advance(self, seconds: float) -> None:
        for _ in range(5):  # sleepers about to start sleep from now, not from after the move
            await _real_sleep(0)
        self.now += seconds
        for at, wake in list(self._sleepers):
            if at <= self.now:
                self._sleepers.remove((at, wake))
                wake.set_result(None)
        for _ in range(5):  # let the woken run
            await _real_sleep(0)


async def test_a_refused_request_keeps_its_slot_for_its_retry_after_and_holds_no_one_else():
    clock = ManualClock()
    lim, _ = limiter(clock, initial=4, max_limit=4)
    started: list[tuple[str, float]] = []

    async def request(name: str, status: int = 200, retry_after: float | None = None) -> None:
        async with lim.slot() as slot:
            started.append((name, clock.now))
            slot.answered(status, retry_after)

    await request("ok")  # level 1 worked
    await request("refused", 503, 2.0)  # at level 1: nothing below worked, so 4 -> 2 (0.5x here)
    assert lim.limit == 2 and lim.in_flight == 1, "the refused request's slot is still taken"
    await asyncio.wait_for(request("other"), 1)  # the other slot goes on at once
    # Refused again (Serve restarting): that slot waits out its Retry-After too, and nothing
    # more is sent until one has passed: at most the limit's requests per Retry-After.
    await request("refused again", 503, 2.0)
    assert lim.in_flight == 2
    blocked = asyncio.create_task(request("blocked"))
    await clock.advance(1.0)
    assert not blocked.done()
    await clock.advance(1.0)  # t=2: the Retry-Afters have passed, their slots are free again
    await asyncio.wait_for(blocked, 1)
    assert started == [("ok", 0), ("refused", 0), ("other", 0), ("refused again", 0), ("blocked", 2.0)]
    assert lim.in_flight == 0


async def test_serve_client_reports_each_answer_to_its_limiter(monkeypatch: pytest.MonkeyPatch):
    clock = FakeClock()
    lim, _ = limiter(clock)
    answers = iter([httpx.Response(503, headers={"Retry-After": "3"}), None])

    def handler(request: httpx.Request) -> httpx.Response:
        reply = next(answers)
        return reply or httpx.Response(200, json={"predictions": [1], "errors": [None]})

    serve = ServeClient(
        "http://serve.test",
        TokenSource("t"),
        retry=RetrySettings(max_attempts=2, initial_s=0.001, max_s=0.001),
        transport=httpx.MockTransport(handler),
        limiter=lim,
    )
    # The client's own retry waits Retry-After too: on the fake clock here.
    monkeypatch.setattr(asyncio, "sleep", clock.sleep)
    try:
        assert await serve.predict("echo", ServeClient.encode([1]), 1) == ([1], [None])
    finally:
        monkeypatch.undo()
        await serve.aclose()
    # The refused request waited its Retry-After, its slot held as long; with nothing answered
    # yet the limit was cut by the backoff (0.5 here).
    await _real_sleep(0)
    assert lim.limit == 4 and lim.in_flight == 0
    assert clock.now >= 3.0


async def test_no_limit_never_waits():
    lim = NoLimit()
    async with lim.slot() as a, lim.slot() as b:
        a.answered(503, 10)
        b.overloaded()


def test_worker_settings_build_the_limiter_within_their_caps():
    seen: list[int] = []
    lim = WorkerSettings(serve_max_connections=40, serve_concurrency_min=2).limiter(seen.append)
    assert isinstance(lim, AdaptiveLimiter)
    assert (lim.settings.min_limit, lim.settings.max_limit, lim.limit) == (2, 40, 8) and seen == [8]
    assert lim.settings.bounded_cuts is LimitSettings().bounded_cuts is True
    unbounded = WorkerSettings(serve_concurrency_bounded_cuts=False).limiter()
    assert isinstance(unbounded, AdaptiveLimiter) and unbounded.settings.bounded_cuts is False
    assert lim.settings.slow_start_growth == LimitSettings().slow_start_growth == 0.25
    doubling = WorkerSettings(serve_concurrency_slow_start_growth=1).limiter()
    assert isinstance(doubling, AdaptiveLimiter) and doubling.settings.slow_start_growth == 1.0
    for bad in ({"serve_concurrency_slow_start_growth": 0}, {"serve_concurrency_slow_start_growth": 2}):
        with pytest.raises(ValidationError):
            WorkerSettings(**bad)
    capped = WorkerSettings(serve_max_connections=40, serve_concurrency_max=16).limiter()
    assert isinstance(capped, AdaptiveLimiter) and capped.settings.max_limit == 16
    off = WorkerSettings(serve_max_connections=40, serve_adaptive_concurrency=False).limiter(seen.append)
    assert isinstance(off, NoLimit) and seen == [8, 40]
    with pytest.raises(ValidationError):
        WorkerSettings(serve_max_connections=8, serve_concurrency_max=16)
    with pytest.raises(ValidationError):
        WorkerSettings(serve_concurrency_min=8, serve_concurrency_max=4)
