"""When a GET is hedged, and how many may be: the estimator, the threshold and the budget, on given times.

`Hedger` is pure (the caller measures each GET's seconds), so these tests feed it times and read its
decisions exactly. The race itself (`race.py`) runs here on stand-in GETs that wait on events, with a clock
the test moves: no network and no sleeping.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

import pytest

from prefetchd.fetch.hedge import Deadlines, HedgeBudget, HedgePolicy, Hedger, LatencyWindow, size_class
from prefetchd.fetch.race import race
from prefetchd.fetch.range_get import Progress

MiB = 1 << 20
LATE_AT_ONCE = Deadlines(first_byte_s=None, whole_s=0.0)
POLICY = HedgePolicy(multiplier=2.0, min_delay_s=0.1, budget=0.05, burst=10.0, min_samples=20, window=200)


def warmed(times: list[float], size: int = 8 * MiB, policy: HedgePolicy = POLICY) -> Hedger:
    hedger = Hedger(policy)
    for seconds in times:
        hedger.completed(size, seconds)
    return hedger


def whole_s(hedger: Hedger, size: int) -> float | None:
    """When a GET of `size` is late as a whole (None: never, or it would not be hedged anyway)."""
    deadlines = hedger.deadlines(size)
    return None if deadlines is None else deadlines.whole_s


def test_a_size_class_hedges_only_once_it_has_enough_times() -> None:
    hedger = warmed([0.2] * 19)
    assert whole_s(hedger, 8 * MiB) is None, "19 times say little about a tail"
    hedger.completed(8 * MiB, 0.2)
    assert whole_s(hedger, 8 * MiB) == pytest.approx(0.4)


def test_the_delay_is_the_multiplier_times_the_p95_and_never_below_the_floor() -> None:
    times = [i / 100 for i in range(1, 101)]  # 0.01 ... 1.00 s: the nearest-rank p95 is 0.95
    assert whole_s(warmed(random.Random(1).sample(times, 100)), 8 * MiB) == pytest.approx(1.9)
    fast = warmed([0.004] * 50)
    assert whole_s(fast, 8 * MiB) == pytest.approx(0.1), "2 × 4 ms is below the floor: the floor it is"
    loose = HedgePolicy(multiplier=3.0, min_delay_s=0.0)
    assert whole_s(warmed([0.5] * 20, policy=loose), 8 * MiB) == pytest.approx(1.5)


def test_a_few_slow_gets_do_not_move_the_p95_but_many_do() -> None:
    normal = [0.1] * 190
    assert whole_s(warmed([*normal, *[5.0] * 5]), 8 * MiB) == pytest.approx(0.2), "2.5% outliers: the tail ignores them"
    assert whole_s(warmed([*normal, *[5.0] * 20]), 8 * MiB) == pytest.approx(10.0), "10% of them: they are the tail"


def test_peers_are_gets_of_about_the_same_size() -> None:
    hedger = warmed([1.0] * 30, size=8 * MiB)
    assert whole_s(hedger, 8 * MiB - 1) is None, "just under 8 MiB is the class below"
    assert whole_s(hedger, 8 * MiB + 1) == pytest.approx(2.0), "8 MiB to 16 MiB are peers"
    assert whole_s(hedger, 64 << 10) is None, "a 64 KiB GET's peers are 64 KiB GETs, none yet"
    assert size_class(1) == 1 and size_class(2) == size_class(3) == 2 and size_class(0) == 0


def test_a_first_byte_is_late_after_the_multiplier_times_the_p95_of_every_size_s_first_bytes() -> None:
    hedger = Hedger(POLICY)
    for n in range(20):
        size = (1 << 20) if n % 2 else (8 << 20)  # first bytes do not grow with the size: all GETs are peers
        hedger.completed(size, 0.5, first_byte_s=0.03)
    deadlines = hedger.deadlines(64 << 10)
    assert deadlines == Deadlines(first_byte_s=pytest.approx(0.1), whole_s=None), "2 × 30 ms, below the floor"
    for _ in range(200):
        hedger.completed(8 << 20, 0.5, first_byte_s=0.2)
    assert hedger.deadlines(8 << 20) == Deadlines(pytest.approx(0.4), pytest.approx(1.0))
    assert Hedger(POLICY).deadlines(8 << 20) is None, "no peers, no deadlines"


def test_only_the_latest_times_count() -> None:
    window = LatencyWindow(window=50, quantile=0.95)
    for _ in range(50):
        window.add(3.0)
    assert window.quantile_s() == 3.0
    for _ in range(50):  # the endpoint got faster: the slow times age out
        window.add(0.1)
    assert len(window) == 50 and window.quantile_s() == 0.1


def test_the_quantile_follows_within_a_few_samples() -> None:
    window = LatencyWindow(window=100, quantile=0.95)
    for _ in range(100):
        window.add(0.1)
    assert window.quantile_s() == 0.1
    for _ in range(LatencyWindow.RECOMPUTE_EVERY):
        window.add(9.0)
    assert window.quantile_s() == 9.0, "8 of 100 past the p95's rank: seen once the recompute comes"


def test_the_budget_allows_a_burst_then_one_hedge_per_twenty_gets() -> None:
    budget = HedgeBudget(per_success=0.05, burst=10.0)
    assert [budget.spend() for _ in range(11)] == [True] * 10 + [False]
    for _ in range(19):
        budget.earn()
    assert not budget.spend(), "19 GETs earn 0.95 of a hedge"
    budget.earn()
    assert budget.spend() and not budget.spend()
    for _ in range(10_000):
        budget.earn()
    assert budget.left == 10.0, "never more than the burst"
    budget.refund()
    assert budget.left == 10.0


def test_a_uniformly_slow_endpoint_gets_at_most_the_budget_in_extra_requests() -> None:
    """Every GET runs past its delay (the endpoint became slow for all): hedges stay within 5% + the burst."""
    hedger = warmed([0.1] * 20)
    gets = 2000
    hedges = 0
    for _ in range(gets):
        if whole_s(hedger, 8 * MiB) is not None and hedger.start():
            hedges += 1
        hedger.completed(8 * MiB, 0.1)
    assert hedges <= 10 + 0.05 * (gets + 20)
    assert hedges >= 0.05 * gets, "and the budget is spent, not hoarded"
    stats = hedger.statistics()
    assert stats.started == hedges and stats.skipped == 0, "no deadlines once the budget is spent: no race"


def test_a_hedge_that_could_not_go_is_given_back() -> None:
    hedger = warmed([0.1] * 20, policy=HedgePolicy(burst=1.0))
    assert hedger.start()
    assert whole_s(hedger, 8 * MiB) is None, "the one hedge is spent"
    hedger.refund()
    assert whole_s(hedger, 8 * MiB) is not None
    stats = hedger.statistics()
    assert (stats.started, stats.skipped) == (0, 1)


@pytest.mark.parametrize(
    "figures",
    [{"multiplier": 0.5}, {"min_delay_s": -1}, {"budget": 1.5}, {"burst": 0.5}, {"quantile": 1.0}, {"window": 5}],
)
def test_figures_that_cannot_work_are_refused(figures: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"hedg|multiplier"):
        HedgePolicy(**figures)  # type: ignore[arg-type]


# the race, on stand-in GETs


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class StandIn:
    """A GET that writes `first_bytes` at once, then waits to be told to end (`finish` or `fail`); it notes whether
    it was cancelled, and writes nothing once it is (as `range_get` does)."""

    def __init__(self, out: memoryview, fill: int) -> None:
        self.out, self.fill = out, fill
        self._ended = asyncio.Event()
        self._ok = True
        self.cancelled = False
        self.offset = -1
        self.called = asyncio.Event()

    def finish(self) -> None:
        self._ended.set()

    def fail(self) -> None:
        self._ok = False
        self._ended.set()

    def __call__(self, offset: int, progress: Progress, *, first_bytes: int = 0) -> Coroutine[Any, Any, int]:
        self.offset = offset
        self.called.set()

        async def get() -> int:
            target = self.out[offset:]
            target[:first_bytes] = bytes([self.fill]) * first_bytes
            progress.received = first_bytes
            if first_bytes:
                progress.arrived()
            try:
                await self._ended.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
            if not self._ok:
                raise ConnectionResetError("stand-in failure")
            target[first_bytes:] = bytes([self.fill]) * (len(target) - first_bytes)
            progress.received = len(target)
            return len(target)

        return get()


async def _run_race(
    hedger: Hedger, first: StandIn, second: StandIn, *, first_bytes: int, script: Any, size: int = 100
) -> Any:
    clock = FakeClock()
    task = asyncio.ensure_future(
        race(
            size,
            lambda progress: first(0, progress, first_bytes=first_bytes),
            second,
            deadlines=LATE_AT_ONCE,
            hedger=hedger,
            clock=clock,
        )
    )
    await second.called.wait()  # the hedge goes at once (delay 0)
    await script(first, second, clock)
    return await task


def test_a_hedge_that_finishes_first_wins_and_the_first_request_is_cancelled_before_the_race_returns() -> None:
    async def scenario() -> None:
        out = memoryview(bytearray(100))
        first, second = StandIn(out, 1), StandIn(out, 2)
        hedger = warmed([0.1] * 20, size=100)

        async def script(first: StandIn, second: StandIn, clock: FakeClock) -> None:
            clock.now += 0.3
            second.finish()

        result = await _run_race(hedger, first, second, first_bytes=40, script=script)
        assert result.error is None and first.cancelled, "the loser was cancelled, and it had ended"
        assert second.offset == 40, "the hedge asked only for the bytes the first request lacked"
        assert bytes(out) == bytes([1]) * 40 + bytes([2]) * 60
        stats = hedger.statistics()
        assert (stats.started, stats.won, stats.lost, stats.failed) == (1, 1, 0, 0)
        assert whole_s(hedger, 60) is None, "the hedge's time joins its own size's peers (one so far)"

    asyncio.run(scenario())


def test_a_first_request_that_finishes_first_wins_and_the_hedge_is_cancelled() -> None:
    async def scenario() -> None:
        out = memoryview(bytearray(100))
        first, second = StandIn(out, 1), StandIn(out, 2)
        hedger = warmed([0.1] * 20, size=100)

        async def script(first: StandIn, second: StandIn, clock: FakeClock) -> None:
            first.finish()

        result = await _run_race(hedger, first, second, first_bytes=0, script=script)
        assert result.error is None and second.cancelled and bytes(out) == bytes([1]) * 100
        stats = hedger.statistics()
        assert (stats.started, stats.won, stats.lost) == (1, 0, 1)

    asyncio.run(scenario())


def test_a_failed_first_request_is_saved_by_its_hedge() -> None:
    async def scenario() -> None:
        out = memoryview(bytearray(100))
        first, second = StandIn(out, 1), StandIn(out, 2)
        hedger = warmed([0.1] * 20, size=100)

        async def script(first: StandIn, second: StandIn, clock: FakeClock) -> None:
            first.fail()
            await asyncio.sleep(0)
            second.finish()

        result = await _run_race(hedger, first, second, first_bytes=30, script=script)
        assert result.error is None and bytes(out) == bytes([1]) * 30 + bytes([2]) * 70
        assert hedger.statistics().won == 1

    asyncio.run(scenario())


def test_when_both_fail_the_first_request_s_error_comes_with_every_byte_either_brought() -> None:
    async def scenario() -> None:
        out = memoryview(bytearray(100))
        first, second = StandIn(out, 1), StandIn(out, 2)
        hedger = warmed([0.1] * 20, size=100)

        def hedge(offset: int, progress: Progress) -> Coroutine[Any, Any, int]:
            return second(offset, progress, first_bytes=25)

        task = asyncio.ensure_future(
            race(
                100,
                lambda progress: first(0, progress, first_bytes=30),
                hedge,
                deadlines=LATE_AT_ONCE,
                hedger=hedger,
                clock=FakeClock(),
            )
        )
        await second.called.wait()
        second.fail()
        await asyncio.sleep(0)
        first.fail()
        result = await task
        assert isinstance(result.error, ConnectionResetError)
        assert result.covered == 55, "30 from the first request, then 25 more from its hedge"
        assert hedger.statistics().failed == 1

    asyncio.run(scenario())


def test_no_hedge_goes_when_the_bucket_has_no_room_and_the_budget_is_given_back() -> None:
    async def scenario() -> None:
        out = memoryview(bytearray(100))
        first = StandIn(out, 1)
        hedger = warmed([0.1] * 20, size=100, policy=HedgePolicy(burst=1.0))
        asked = asyncio.Event()

        def full(offset: int, progress: Progress) -> None:
            asked.set()

        task = asyncio.ensure_future(
            race(100, lambda p: first(0, p), full, deadlines=LATE_AT_ONCE, hedger=hedger, clock=FakeClock())
        )
        await asked.wait()
        first.finish()
        assert (await task).error is None
        stats = hedger.statistics()
        assert (stats.started, stats.skipped, stats.budget_left) == (0, 1, 1.0)

    asyncio.run(scenario())


def test_a_race_cancelled_from_outside_cancels_both_requests() -> None:
    async def scenario() -> None:
        out = memoryview(bytearray(100))
        first, second = StandIn(out, 1), StandIn(out, 2)
        hedger = warmed([0.1] * 20, size=100)
        task = asyncio.ensure_future(
            race(100, lambda p: first(0, p), second, deadlines=LATE_AT_ONCE, hedger=hedger, clock=FakeClock())
        )
        await second.called.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert first.cancelled and second.cancelled
        assert hedger.statistics().lost == 1

    asyncio.run(scenario())


@pytest.mark.parametrize(("first_bytes", "hedged"), [(0, True), (10, False)], ids=["no-first-byte", "first-byte-came"])
def test_a_first_byte_deadline_hedges_only_a_get_whose_answer_has_not_begun(first_bytes: int, hedged: bool) -> None:
    async def scenario() -> None:
        out = memoryview(bytearray(100))
        first, second = StandIn(out, 1), StandIn(out, 2)
        hedger = warmed([0.1] * 20, size=100)
        hedger.answered(FakeClock().now + 1)  # a GET sent after this one has had its first byte
        task = asyncio.ensure_future(
            race(
                100,
                lambda p: first(0, p, first_bytes=first_bytes),
                second,
                deadlines=Deadlines(first_byte_s=0.0, whole_s=None),
                hedger=hedger,
                clock=FakeClock(),
            )
        )
        for _ in range(5):
            await asyncio.sleep(0)
        assert second.called.is_set() == hedged
        (second if hedged else first).finish()
        assert (await task).error is None
        assert hedger.statistics().started == int(hedged)
        if hedged:
            assert second.offset == 0, "nothing came: the hedge asks for the whole range"

    asyncio.run(scenario())


def test_a_first_byte_is_late_only_once_a_get_sent_after_it_has_had_its_own() -> None:
    """When every GET waits (a stream's first burst, a daemon short of CPU), none is behind its peers."""

    async def scenario() -> None:
        out = memoryview(bytearray(100))
        first, second = StandIn(out, 1), StandIn(out, 2)
        hedger = warmed([0.1] * 20, size=100)
        clock = FakeClock()
        hedger.answered(clock.now - 1)  # sent before this one: no sign that this one is behind
        task = asyncio.ensure_future(
            race(
                100,
                lambda p: first(0, p),
                second,
                deadlines=Deadlines(first_byte_s=0.0, whole_s=None),
                hedger=hedger,
                clock=clock,
            )
        )
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert not second.called.is_set(), "past its first-byte deadline, but no GET sent later has answered"
        hedger.answered(clock.now + 0.5)
        clock.now += 1.0
        await second.called.wait()
        second.finish()
        assert (await task).error is None and hedger.statistics().won == 1

    asyncio.run(scenario())
