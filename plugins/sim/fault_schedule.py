"""When a streaming simulator consults its fault plan, and how it acts a fault out mid-stream.

A WebSocket carries many requests (contexts, utterances) after one handshake, so the plan is
consulted twice over: once at the handshake, and once per request on the open socket. A
stream fault (cut, stall, slow first chunk...) taken at the handshake has nothing to act on
yet, so it is *armed* and served to the next request on that socket instead of being lost.

Usage is metered lazily: units a request keeps adding after its fault was decided (the
second sentence of a TTS context, the seconds of audio an STT socket keeps streaming) are
billed with the next consultation, so quota counters see every unit without a second
``take`` that would swallow a one-shot fault. The plan checks its limit before adding what a
consultation brings, so lazily billed usage is seen by the quota check one decision later: an
STT socket is refused at the first utterance after the limit is crossed, not mid-utterance.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from plugins.sim.faults import Fault, FaultPlan, FaultType

T = TypeVar("T")

#: Faults that refuse a request outright; anything else shapes a response that is under way.
REFUSALS = frozenset(
    {FaultType.STATUS, FaultType.QUOTA, FaultType.RESET, FaultType.HANG, FaultType.HUGE_ERROR}
)


class FaultSchedule:
    """A simulator-wide view of its plan that bills usage lazily (see module docstring)."""

    def __init__(self, plan: FaultPlan) -> None:
        self._plan = plan
        self._unbilled = 0.0
        self._lock = threading.Lock()

    def bill(self, units: float) -> None:
        """Record usage now; it reaches the plan's quota counter with the next decision."""
        with self._lock:
            self._unbilled += units

    def decide(self, units: float = 0.0) -> Fault | None:
        """Consult the plan once for a request that will use ``units``."""
        with self._lock:
            pending, self._unbilled = self._unbilled, 0.0
        fault = self._plan.take(pending + units)
        if fault is not None:  # the plan charges nothing when it faults: keep earlier usage
            self.bill(pending)
        return fault


class SocketFaults:
    """The faults of one WebSocket: what its handshake gets, then what each request gets."""

    def __init__(self, schedule: FaultSchedule) -> None:
        self._schedule = schedule
        self._armed: deque[Fault] = deque()

    def at_handshake(self) -> Fault | None:
        """A refusal to act out on the handshake; stream faults are armed for later."""
        fault = self._schedule.decide()
        if fault is None or fault.type in REFUSALS:
            return fault
        self._armed.append(fault)
        return None

    def for_request(self, units: float) -> Fault | None:
        """The fault for the next request on this socket (an armed one goes first)."""
        fault = self._schedule.decide(units)
        if not self._armed:
            return fault
        if fault is not None:
            self._armed.append(fault)
        return self._armed.popleft()


class StreamStoppedError(Exception):
    """The fault ended this response early (cut, in-band error); stop producing it."""


class StreamActor(Generic[T]):
    """Sends one response's chunks and acts a stream fault out at the right chunk.

    ``send`` delivers one chunk; ``abort`` drops the connection with no goodbye; ``park``
    waits until the server shuts down (a stall); ``in_band_error`` sends the provider's own
    error frame; ``garbage`` is a chunk that does not parse. SLOW_FIRST delays the first
    chunk; CUT/STALL/MALFORMED/IN_BAND_ERROR fire after ``fault.after_chunks`` chunks, or at
    the end of the response if it is shorter than that.
    """

    def __init__(
        self,
        fault: Fault | None,
        *,
        send: Callable[[T], Awaitable[None]],
        abort: Callable[[], None],
        park: Callable[[float | None], Awaitable[None]],
        in_band_error: Callable[[], Awaitable[None]] | None = None,
        garbage: T | None = None,
    ) -> None:
        self.fault = fault
        self._send = send
        self._abort = abort
        self._park = park
        self._in_band_error = in_band_error
        self._garbage = garbage
        self._sent = 0
        self._fired = False
        self.stalled = False

    @property
    def sent(self) -> int:
        return self._sent

    async def send(self, chunk: T) -> None:
        await self.fire_if_due()
        if self._sent == 0 and self.fault is not None and self.fault.type is FaultType.SLOW_FIRST:
            await self._park(self.fault.delay_s)
        if (
            self.fault is not None
            and self.fault.type is FaultType.GARBAGE
            and self._garbage is not None
            and self._sent >= self.fault.after_chunks
        ):
            chunk = self._garbage  # every chunk from here on is one that does not parse
        await self._send(chunk)
        self._sent += 1

    async def finish(self) -> None:
        """Call before the response's terminal frame: a fault not yet fired fires now."""
        await self.fire_if_due(at_end=True)

    async def fire_if_due(self, *, at_end: bool = False) -> None:
        """Act the fault out now if its chunk count is reached (before costly work)."""
        fault = self.fault
        if fault is None or self._fired:
            return
        # a hang inside an open socket is a stall before the first chunk
        threshold = 0 if fault.type is FaultType.HANG else fault.after_chunks
        if not at_end and self._sent < threshold:
            return
        if fault.type is FaultType.CUT:
            self._fired = True
            self._abort()
            raise StreamStoppedError("cut")
        if fault.type in (FaultType.STALL, FaultType.HANG):
            self._fired = True
            self.stalled = True
            await self._park(None)
            raise StreamStoppedError("stalled until shutdown")
        if fault.type is FaultType.MALFORMED and self._garbage is not None:
            self._fired = True
            await self._send(self._garbage)
        elif fault.type is FaultType.IN_BAND_ERROR and self._in_band_error is not None:
            self._fired = True
            await self._in_band_error()
            raise StreamStoppedError("in-band error")
