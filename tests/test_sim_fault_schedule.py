"""When streaming simulators consult their fault plan and how they act faults out mid-stream."""

from __future__ import annotations

import pytest

from plugins.sim.fault_schedule import FaultSchedule, SocketFaults, StreamActor, StreamStoppedError
from plugins.sim.faults import Fault, FaultPlan, FaultType


def test_stream_fault_taken_at_the_handshake_is_armed_for_the_first_request() -> None:
    plan = FaultPlan().once(Fault(FaultType.CUT, after_chunks=2))
    socket = SocketFaults(FaultSchedule(plan))

    assert socket.at_handshake() is None  # nothing to cut yet
    first = socket.for_request(10)
    assert first is not None and first.type is FaultType.CUT
    assert socket.for_request(10) is None


def test_refusal_at_the_handshake_is_returned_not_armed() -> None:
    plan = FaultPlan().once(Fault(FaultType.STATUS, status=503))
    socket = SocketFaults(FaultSchedule(plan))

    refusal = socket.at_handshake()
    assert refusal is not None and refusal.status == 503
    assert socket.for_request(1) is None


def test_lazily_billed_usage_reaches_the_quota_at_the_next_decision() -> None:
    plan = FaultPlan().quota_after(5)
    schedule = FaultSchedule(plan)

    assert schedule.decide(1) is None  # used 1
    schedule.bill(10)  # the rest of that request, streamed after the decision
    assert schedule.decide(0) is None  # the check precedes the add: used 11 now
    refused = schedule.decide(0)
    assert refused is not None and refused.type is FaultType.QUOTA


async def test_actor_cuts_after_the_given_chunks_and_fires_at_the_end_if_short() -> None:
    sent: list[str] = []
    aborted: list[bool] = []

    async def send(chunk: str) -> None:
        sent.append(chunk)

    async def park(_: float | None) -> None:
        return None

    actor: StreamActor[str] = StreamActor(
        Fault(FaultType.CUT, after_chunks=2),
        send=send,
        abort=lambda: aborted.append(True),
        park=park,
    )
    await actor.send("a")
    await actor.send("b")
    with pytest.raises(StreamStoppedError):
        await actor.send("c")
    assert sent == ["a", "b"] and aborted == [True]

    short: StreamActor[str] = StreamActor(
        Fault(FaultType.MALFORMED, after_chunks=5),
        send=send,
        abort=lambda: None,
        park=park,
        garbage="{",
    )
    sent.clear()
    await short.send("x")
    await short.finish()  # fewer chunks than after_chunks: the garbage still goes out
    assert sent == ["x", "{"]
