"""An adaptive limit on the requests a worker has in flight to Serve, shared by all its shards.

AIMD, as in Netflix's concurrency-limits, with TCP's slow start: from ``initial`` each prompt
answer adds ``slow_start_growth`` slots (1: the limit doubles every round trip) until the limit
is first cut; from then each prompt answer adds ``increase / limit`` (about one slot per round
trip), only while the slots are in use. Serve's refusals take as long as its answers, so the
slow start grows for a whole round trip past Serve's level before the first refusal is back: a
gentler growth overshoots less (the default grows the limit by a quarter per round trip).

A refusal (429, 503, 504, a timeout) cuts the limit at most once per round trip: answers to
requests sent before the last cut say nothing about the new limit. Each request carries its
*level*, the requests out with it when it was sent, and the limiter keeps the highest level
Serve answered in the last ``window_s`` (the level that worked). A refusal at level ``r`` cuts
the limit to just below it, to the highest level that worked and is below ``r`` (to
``backoff`` times itself when nothing has worked lately), and that becomes a ceiling for
``probe_interval_s``: the limit climbs back to it and stays there instead of running into
Serve's queue again every few round trips; past that it probes further, one slot per round trip.
With ``bounded_cuts`` one refusal cuts at most to ``backoff`` times the limit, whatever the level
below it that worked: a refusal at a low level while few levels have been answered (a batch's
first round trip, or Serve's stray refusal just after a cut) otherwise cut the limit to 2-4 and
the ceiling held it there for ``probe_interval_s``. Refusals that go on cut again, once per
round trip. Taking the requests still out at a refusal instead undercounts: those answered a moment
earlier have already left, and the limit then sits well below what Serve holds.

``Retry-After``: the refused request waits it before it is sent again (the Serve client does
that), and its slot stays taken until it has passed. So while Serve refuses everything (it is
restarting, or its capacity dropped) the slots fill with refused requests and the worker sends
at most ``limit`` requests per Retry-After, as if it paused; while Serve refuses a request now
and then, as it does near its limit whatever the level (its queue length is counted with a
lag), only that slot waits and the others keep Serve's queue full. A worker-wide pause on every
refusal, tried first, cost more throughput than the refusals it saved, and one after refusals
in a row stopped the worker while it was still finding the level (docs/performance.md,
"Adaptive concurrency").

Without a ceiling, rising latency (the average of the last ``short_samples`` answers above
``latency_tolerance`` times the long-run average: a Serve queueing without bound) cuts the limit
too. Latency's level alone is no signal here: Serve batches what it is sent, so more in flight
buys throughput at the cost of latency.

The fixed limits stay as caps: ``max_limit`` (the worker's ``SERVE_MAX_CONNECTIONS``), and each
shard's ``max_in_flight`` in front of this limiter.

Written here rather than taken from PyPI: the asyncio candidates there (aimd-limiter,
aioadaptive, ace-concurrency, adaptive-concurrency) are 0.1 releases, and none honours
Retry-After or takes a clock to test with.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


class Signal(enum.Enum):
    OK = "ok"  # an answer (200): its latency is a sample
    OVERLOAD = "overload"  # Serve refused or did not answer in time: back off
    IGNORE = "ignore"  # says nothing about load (a client error, Serve down, cancelled)


OVERLOAD_STATUSES = frozenset({429, 503, 504})


def signal_of(status: int) -> Signal:
    if status == 200:
        return Signal.OK
    return Signal.OVERLOAD if status in OVERLOAD_STATUSES else Signal.IGNORE


@dataclass(frozen=True)
class LimitSettings:
    min_limit: int = 1
    max_limit: int = 32
    initial: int = 8  # slow start from here: a first burst much above Serve's queue is refused
    backoff: float = 0.7  # the cut when no level below the refused one has worked lately
    bounded_cuts: bool = True  # a refusal cuts by at most ``backoff`` (more refusals cut again)
    increase: float = 1.0  # slots added per round trip of answers
    # Slots added per answer in slow start: 1 doubles the limit per round trip, 0.25 grows it by a
    # quarter (the first burst overshoots Serve's level less: fewer refusals; at normal load no
    # slower within the bench's noise, docs/performance.md).
    slow_start_growth: float = 0.25
    probe_interval_s: float = 10.0  # how long the level below a refusal caps the limit
    window_s: float = 5.0  # how far back the level that worked is looked for
    latency_tolerance: float = 2.0
    short_samples: int = 10  # window of the recent latency average (EMA)
    long_samples: int = 500  # window of the long-run latency average (EMA)

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {self.min_limit}, {self.max_limit}")
        if not 0 < self.backoff < 1:
            raise ValueError(f"backoff must be in (0, 1), got {self.backoff}")
        if not 0 < self.slow_start_growth <= 1:
            raise ValueError(f"slow_start_growth must be in (0, 1], got {self.slow_start_growth}")


class Slot:
    """One request's place under the limit: say how it ended with ``answered`` or ``overloaded``
    (neither: it tells the limiter nothing). ``level``: the requests out with it when it was sent,
    itself included."""

    def __init__(self, started: float, level: int = 1) -> None:
        self.started = started
        self.level = level
        self.signal = Signal.IGNORE
        self.retry_after_s: float | None = None

    def answered(self, status: int, retry_after_s: float | None = None) -> None:
        self.signal, self.retry_after_s = signal_of(status), retry_after_s

    def overloaded(self) -> None:
        self.signal = Signal.OVERLOAD


class AdaptiveLimiter:
    """See the module. ``clock`` and ``sleep`` are injectable so tests run on a fake clock;
    ``on_limit`` is told every new limit (the worker's gauge)."""

    def __init__(
        self,
        settings: LimitSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_limit: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = s = settings or LimitSettings()
        self._clock, self._sleep, self._on_limit = clock, sleep, on_limit
        self._limit = float(min(s.max_limit, max(s.min_limit, s.initial)))
        self.slow_start = True  # until the first cut
        self.in_flight = 0  # slots taken, also by refused requests waiting out Retry-After
        self.sent = 0  # requests out to Serve
        self._holds: set[asyncio.Task[None]] = set()  # slots held for a Retry-After
        self._last_cut = float("-inf")
        self._short: float | None = None
        self._long: float | None = None
        self.ceiling: float | None = None
        self._ceiling_until = 0.0
        self._samples = 0
        self._answered_at: dict[int, float] = {}  # level -> when Serve last answered one sent there
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._report()

    @property
    def limit(self) -> int:
        return int(self._limit)

    def worked(self, now: float, below: int | None = None) -> int | None:
        """The highest level Serve answered in the last ``window_s`` (below ``below``), if any."""
        cutoff = now - self.settings.window_s
        levels = [
            level
            for level, at in self._answered_at.items()
            if at >= cutoff and (below is None or level < below)
        ]
        return max(levels, default=None)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        await self.acquire()
        self.sent += 1
        slot = Slot(self._clock(), self.sent)
        try:
            yield slot
        finally:
            self.sent -= 1
            self.update(slot, self._clock())
            if slot.signal is Signal.OVERLOAD and slot.retry_after_s:
                hold = asyncio.get_running_loop().create_task(self._release_after(slot.retry_after_s))
                self._holds.add(hold)
                hold.add_done_callback(self._holds.discard)
            else:
                self._release()

    async def acquire(self) -> None:
        """A slot under the limit, first come first served."""
        if not self._waiters and self.in_flight < self.limit:
            self.in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # _wake counted us in before setting it
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as we were cancelled: give it back
            else:
                self._waiters.remove(waiter)
            raise

    async def _release_after(self, seconds: float) -> None:
        try:
            await self._sleep(seconds)
        finally:
            self._release()

    def _release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def update(self, slot: Slot, now: float) -> None:
        """Adjust the limit for one request that ended at ``now``."""
        if slot.signal is Signal.OVERLOAD:
            self._refused(slot, now)
        elif slot.signal is Signal.OK:
            self._answered(slot, now)

    def _may_cut(self, slot: Slot, now: float) -> bool:
        """Whether ``slot``'s answer may cut the limit (and then it does: the cut is now): at most
        once per round trip, since the last cut answered for requests sent before it."""
        if slot.started < self._last_cut:
            return False
        self._last_cut = now
        self.slow_start = False
        return True

    def _refused(self, slot: Slot, now: float) -> None:
        s = self.settings
        if not self._may_cut(slot, now):
            return
        worked = self.worked(now, below=slot.level)
        # Just below the refusal: the highest level that worked there.
        limit = self._limit * s.backoff if worked is None else float(worked)
        if s.bounded_cuts:  # one refusal at a low level, with few levels answered yet, is no proof
            limit = max(limit, self._limit * s.backoff)
        self._set(min(self._limit, limit))
        self.ceiling, self._ceiling_until = float(self.limit), now + s.probe_interval_s

    def _answered(self, slot: Slot, now: float) -> None:
        s = self.settings
        self._answered_at[slot.level] = now
        latency = max(0.0, now - slot.started)
        self._samples += 1
        self._short = self._ema(self._short, latency, s.short_samples)
        self._long = self._ema(self._long, latency, s.long_samples)
        # The long-run average needs a fifth of its window first: during slow start latency
        # climbs with the limit (Serve batches more), which is no reason to cut.
        warm = self._samples >= max(s.short_samples, s.long_samples // 5)
        rising = warm and self._short > s.latency_tolerance * self._long
        if rising and self.ceiling is None:  # (with a ceiling, Serve's refusals say where to be)
            if self._may_cut(slot, now):
                self._set(self._limit * s.backoff)
        elif self.in_flight + 1 >= self._limit / 2:  # the limit is in use: worth raising
            step = s.slow_start_growth if self.slow_start else s.increase / max(self._limit, 1.0)
            if self.ceiling is not None and now >= self._ceiling_until:
                self.ceiling = None  # probe past it
            top = self._limit + step if self.ceiling is None else min(self._limit + step, self.ceiling)
            self._set(max(self._limit, top))

    @staticmethod
    def _ema(average: float | None, value: float, samples: int) -> float:
        if average is None:
            return value
        alpha = 2.0 / (samples + 1)
        return average + alpha * (value - average)

    def _set(self, limit: float) -> None:
        s = self.settings
        before = self.limit
        self._limit = min(float(s.max_limit), max(float(s.min_limit), limit))
        if self.limit != before:
            self._report()
            self._wake()

    def _report(self) -> None:
        if self._on_limit:
            self._on_limit(self.limit)


class NoLimit:
    """What the client uses with the adaptive limit off: slots that never wait."""

    limit = None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        yield Slot(0.0)


Limiter = AdaptiveLimiter | NoLimit
