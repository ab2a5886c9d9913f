"""The bucket's admission gate (prefetchd/fetch/admission.py): the AIMD limit applied to requests in flight,
and the turns streams take at it."""

from __future__ import annotations

import asyncio

from prefetchd.fetch.admission import AdmissionGate, Ending
from prefetchd.fetch.aimd import AimdLimit
from prefetchd.fetch.flow import Flow, current_flow


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_requests_past_the_limit_wait_and_enter_in_arrival_order() -> None:
    async def scenario() -> None:
        gate = AdmissionGate("bucket", AimdLimit(2))
        entered: list[int] = []
        leave = {n: asyncio.Event() for n in range(5)}

        async def request(n: int) -> None:
            async with gate.admitted():
                entered.append(n)
                await leave[n].wait()

        async with asyncio.TaskGroup() as group:
            for n in range(5):
                group.create_task(request(n))
            await _settle()
            assert entered == [0, 1]
            assert (gate.statistics().in_flight, gate.statistics().waiting) == (2, 3)
            for n in range(5):
                leave[n].set()
                await _settle()
        assert entered == [0, 1, 2, 3, 4]
        assert gate.statistics().in_flight == 0 and gate.statistics().admitted == 5

    asyncio.run(scenario())


def test_a_throttle_cuts_the_limit_to_half_of_what_was_in_flight_and_successes_raise_it() -> None:
    async def scenario() -> None:
        gate = AdmissionGate("bucket", AimdLimit(8))
        release = asyncio.Event()
        endings = [Ending.THROTTLED] + [Ending.SUCCEEDED] * 5

        async def request(ending: Ending) -> None:
            async with gate.admitted() as ticket:
                await release.wait()
                ticket.ending = ending

        async with asyncio.TaskGroup() as group:
            for ending in endings:
                group.create_task(request(ending))
            await _settle()
            release.set()
        limit = gate.statistics().limit
        # 6 in flight when the first ended throttled: cut to 3; then 5 successes: 3 make it 4, 2 more count
        assert (limit.lowest, limit.limit, limit.decreases) == (3, 4, 1)

    asyncio.run(scenario())


def test_a_lower_limit_holds_new_requests_back_until_enough_leave() -> None:
    async def scenario() -> None:
        limit = AimdLimit(4)
        gate = AdmissionGate("bucket", limit)
        limit.on_throttle(limit.generation, in_flight=4)  # 2
        leave = asyncio.Event()
        entered: list[int] = []

        async def request(n: int) -> None:
            async with gate.admitted():
                entered.append(n)
                await leave.wait()

        async with asyncio.TaskGroup() as group:
            for n in range(4):
                group.create_task(request(n))
            await _settle()
            assert entered == [0, 1]
            leave.set()
        assert entered == [0, 1, 2, 3]

    asyncio.run(scenario())


def test_a_waiter_cancelled_in_line_takes_no_place() -> None:
    async def scenario() -> None:
        gate = AdmissionGate("bucket", AimdLimit(1))
        leave = asyncio.Event()

        async def holder() -> None:
            async with gate.admitted():
                await leave.wait()

        async def waiter() -> None:
            async with gate.admitted():
                raise AssertionError("a cancelled waiter must not enter")

        held = asyncio.create_task(holder())
        await _settle()
        waiting = asyncio.create_task(waiter())
        await _settle()
        assert gate.statistics().waiting == 1
        waiting.cancel()
        await _settle()
        leave.set()
        await held
        assert (gate.statistics().in_flight, gate.statistics().waiting) == (0, 0)
        async with gate.admitted():  # the place is free for the next
            assert gate.statistics().in_flight == 1

    asyncio.run(scenario())


async def _flow_requests(gate: AdmissionGate, plan: list[tuple[Flow, int]]) -> list[str]:
    """Start `count` requests of each flow, in that order, behind one request that holds the only place;
    let them all through one at a time and return the order they entered in (flow names)."""
    entered: list[str] = []
    blocker_leaves = asyncio.Event()

    async def blocker() -> None:
        async with gate.admitted():
            await blocker_leaves.wait()

    async def request(flow: Flow) -> None:
        current_flow.set(flow)  # as a stream's tasks inherit it
        async with gate.admitted():
            entered.append(flow.name)
            await asyncio.sleep(0)

    async with asyncio.TaskGroup() as group:
        group.create_task(blocker())
        await _settle()
        for flow, count in plan:
            for _ in range(count):
                group.create_task(request(flow))
        await _settle()
        assert gate.statistics().waiting == sum(count for _, count in plan)
        assert gate.statistics().flows_waiting == len(plan)
        assert all(flow.waiting == count and flow.in_flight == 0 for flow, count in plan)
        blocker_leaves.set()
    return entered


def test_streams_waiting_at_a_full_gate_take_turns() -> None:
    async def scenario() -> None:
        gate = AdmissionGate("bucket", AimdLimit(1))
        first, second = Flow("first"), Flow("second")
        entered = await _flow_requests(gate, [(first, 5), (second, 2)])
        # first come, first served would let all five of the first stream's read-ahead in before the second's
        assert entered == ["first", "second", "first", "second", "first", "first", "first"]
        assert [(f.in_flight, f.waiting, f.admitted) for f in (first, second)] == [(0, 0, 5), (0, 0, 2)]
        assert gate.statistics().in_flight == 0 and gate.statistics().flows_waiting == 0

    asyncio.run(scenario())


def test_a_stream_whose_trainer_has_batches_queued_waits_behind_the_others() -> None:
    async def scenario() -> None:
        gate = AdmissionGate("bucket", AimdLimit(1))
        stalled = Flow("stalled", ahead=lambda: True)
        others = [Flow(f"other{n}") for n in range(2)]
        entered = await _flow_requests(gate, [(stalled, 3), (others[0], 2), (others[1], 1)])
        assert entered == ["other0", "other1", "other0", "stalled", "stalled", "stalled"]

    asyncio.run(scenario())


def test_a_stream_that_catches_up_takes_turns_again() -> None:
    async def scenario() -> None:
        gate = AdmissionGate("bucket", AimdLimit(1))
        ring_full = [True]
        catching_up, other = Flow("catching_up", ahead=lambda: ring_full[0]), Flow("other")

        def other_entered_once() -> bool:
            ring_full[0] = False  # the first trainer took a batch meanwhile: a slot is free to fill
            return False

        other.ahead = other_entered_once  # asked when the first turn is chosen
        entered = await _flow_requests(gate, [(catching_up, 2), (other, 3)])
        assert entered == ["other", "catching_up", "other", "catching_up", "other"]

    asyncio.run(scenario())


def test_a_request_that_must_go_at_once_gets_a_place_only_if_one_is_free_and_none_is_waited_for() -> None:
    """A hedge: worth sending now or not at all, and never ahead of requests the gate holds back."""

    async def scenario() -> None:
        gate = AdmissionGate("bucket", AimdLimit(2))
        first = gate.admit_now()
        assert first is not None and gate.statistics().in_flight == 1
        release = asyncio.Event()

        async def request() -> None:
            async with gate.admitted():
                await release.wait()

        async with asyncio.TaskGroup() as group:
            group.create_task(request())
            group.create_task(request())  # waits: the limit is 2
            await _settle()
            assert gate.statistics().waiting == 1
            assert gate.admit_now() is None, "the limit is reached"
            first.ending = Ending.SUCCEEDED
            gate.end(first)  # lets the waiter in
            await _settle()
            assert (gate.statistics().in_flight, gate.statistics().waiting) == (2, 0)
            release.set()
        throttled = gate.admit_now()
        assert throttled is not None
        throttled.ending = Ending.THROTTLED
        gate.end(throttled)
        assert gate.limit.statistics().throttles == 1, "its ending counts as any request's"

    asyncio.run(scenario())
