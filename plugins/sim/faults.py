"""Fault injection shared by every simulator.

A simulator asks its :class:`FaultPlan` once per request (``plan.take(units)``) and acts out the
fault it gets back in its own protocol's terms (an HTTP status with that provider's real body, a
WebSocket error frame, a reset...). Faults are set per request (``once``), for good
(``always``), for a time window (``window``/``flapping``) or by a usage counter
(``quota_after``). Every attempt is logged in an :class:`AttemptLog` so tests and ``simulate``
can count what a provider really received.

The same plan can be driven over HTTP (``/_sim/faults``) when the simulator runs in another
process.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web


class FaultType(enum.StrEnum):
    STATUS = "status"  # HTTP status (401/403/429/500/502/503...) with the provider's real body
    QUOTA = "quota"  # the provider's own quota error (402, ElevenLabs quota_exceeded...)
    IN_BAND_ERROR = "in_band_error"  # error frame / error object inside a successful response
    RESET = "reset"  # connection reset before any byte
    HANG = "hang"  # accept and never answer
    SLOW_FIRST = "slow_first"  # first token/audio after ``delay_s``, then normal
    CUT = "cut"  # stream closed abruptly after ``after_chunks`` chunks
    STALL = "stall"  # stream stops after ``after_chunks`` chunks, socket left open
    MALFORMED = "malformed"  # a frame that does not parse
    EMPTY = "empty"  # a well-formed but empty result (no text / no transcript)
    SILENT = "silent"  # TTS: well-formed audio that is all silence
    GARBAGE = "garbage"  # TTS: 200 with random bytes as audio; STT: every frame unparsable
    HTML = "html"  # 200 with an HTML page (a proxy's or captive portal's), text/html
    SHORT = "short"  # TTS: clean 200 with the first fifth of the audio the text needs
    HUGE_ERROR = "huge_error"  # an error status (``status``, default 500) with a 10 MB body


@dataclass(frozen=True)
class Fault:
    type: FaultType
    status: int | None = None  # STATUS: which code; QUOTA: override the provider's default
    retry_after_s: float | None = None  # STATUS 429: Retry-After header (None: no header)
    delay_s: float = 0.0  # SLOW_FIRST: delay before the first byte
    after_chunks: int = 1  # CUT/STALL/MALFORMED: good chunks sent before the fault
    message: str | None = None  # override the error message text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        data = dict(data)
        data["type"] = FaultType(data["type"])
        return cls(**data)


@dataclass
class _Rule:
    fault: Fault
    remaining: int | None = None  # None: unlimited
    starts_at: float = 0.0
    ends_at: float = float("inf")
    period_s: float | None = None  # flapping: down for (ends_at-starts_at) every period_s


@dataclass(frozen=True)
class Attempt:
    at: float
    route: str
    fault: str | None
    detail: str = ""
    status: int = 0  # the status answered, where the simulator records it (0: not recorded)
    key: str = ""  # which of the simulator's keys it came on ("key1", ...), never the key
    client_id: str = ""  # the client's own request id (X-Client-Request-Id), if it sent one


class AttemptLog:
    """Every request a simulator saw, in order; thread-safe for in-process use."""

    def __init__(self) -> None:
        self._items: list[Attempt] = []
        self._lock = threading.Lock()

    def record(
        self,
        route: str,
        fault: Fault | None,
        detail: str = "",
        *,
        status: int = 0,
        key: str = "",
        client_id: str = "",
    ) -> None:
        with self._lock:
            self._items.append(
                Attempt(
                    time.time(),
                    route,
                    fault.type.value if fault else None,
                    detail,
                    status=status,
                    key=key,
                    client_id=client_id,
                )
            )

    def items(self) -> list[Attempt]:
        with self._lock:
            return list(self._items)

    def count(self, route: str | None = None) -> int:
        return sum(1 for a in self.items() if route is None or a.route == route)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class FaultPlan:
    """Which fault (if any) the next request gets. ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rules: list[_Rule] = []
        self._quota_limit: float | None = None
        self._quota_used = 0.0
        self._quota_fault = Fault(FaultType.QUOTA)
        self._lock = threading.Lock()

    # -- configuration -------------------------------------------------------------------
    def once(self, fault: Fault, times: int = 1) -> FaultPlan:
        with self._lock:
            self._rules.append(_Rule(fault, remaining=times))
        return self

    def always(self, fault: Fault) -> FaultPlan:
        with self._lock:
            self._rules.append(_Rule(fault))
        return self

    def window(self, fault: Fault, *, start_in_s: float, duration_s: float) -> FaultPlan:
        now = self._clock()
        with self._lock:
            self._rules.append(
                _Rule(fault, starts_at=now + start_in_s, ends_at=now + start_in_s + duration_s)
            )
        return self

    def flapping(self, fault: Fault, *, down_s: float, up_s: float) -> FaultPlan:
        """Down for ``down_s``, healthy for ``up_s``, repeating, starting down now."""
        now = self._clock()
        with self._lock:
            self._rules.append(
                _Rule(fault, starts_at=now, ends_at=now + down_s, period_s=down_s + up_s)
            )
        return self

    def quota_after(self, units: float, fault: Fault | None = None) -> FaultPlan:
        """Refuse with the provider's quota error once ``units`` (chars/tokens/seconds) are used."""
        with self._lock:
            self._quota_limit = units
            self._quota_used = 0.0
            if fault is not None:
                self._quota_fault = fault
        return self

    def charge(self, units: float) -> None:
        """Count usage that arrives after this request's fault was decided (a stream's later
        sentences or seconds) without consulting the plan again."""
        with self._lock:
            if self._quota_limit is not None:
                self._quota_used += units

    def quota(self) -> tuple[float, float | None]:
        """(units used, limit or None): what a provider's usage API would report."""
        with self._lock:
            return self._quota_used, self._quota_limit

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._quota_limit = None
            self._quota_used = 0.0

    # -- use -----------------------------------------------------------------------------
    def take(self, units: float = 0.0) -> Fault | None:
        """The fault for this request, consuming one-shot rules; ``units`` feed the quota."""
        now = self._clock()
        with self._lock:
            for rule in list(self._rules):
                if not self._active(rule, now):
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                return rule.fault
            if self._quota_limit is not None:
                if self._quota_used >= self._quota_limit:
                    return self._quota_fault
                self._quota_used += units
        return None

    @staticmethod
    def _active(rule: _Rule, now: float) -> bool:
        if rule.period_s is None:
            return rule.starts_at <= now < rule.ends_at
        if now < rule.starts_at:
            return False
        phase = (now - rule.starts_at) % rule.period_s
        return phase < (rule.ends_at - rule.starts_at)

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {**asdict(r.fault), "type": r.fault.type.value, "remaining": r.remaining}
                for r in self._rules
            ]


@dataclass
class SimState:
    """What every simulator carries: its fault plan and its attempt log."""

    plan: FaultPlan = field(default_factory=FaultPlan)
    log: AttemptLog = field(default_factory=AttemptLog)


def add_control_routes(app: web.Application, state: SimState) -> None:
    """``/_sim/faults`` (GET, POST {mode, fault, ...}, DELETE) and ``/_sim/attempts`` (GET)."""

    async def get_faults(_: web.Request) -> web.Response:
        return web.json_response(state.plan.describe())

    async def post_fault(request: web.Request) -> web.Response:
        body = await request.json()
        try:
            fault = Fault.from_dict(body["fault"])
            mode = body.get("mode", "once")
            if mode == "once":
                state.plan.once(fault, int(body.get("times", 1)))
            elif mode == "always":
                state.plan.always(fault)
            elif mode == "window":
                state.plan.window(
                    fault,
                    start_in_s=float(body.get("start_in_s", 0)),
                    duration_s=float(body["duration_s"]),
                )
            elif mode == "flapping":
                state.plan.flapping(fault, down_s=float(body["down_s"]), up_s=float(body["up_s"]))
            elif mode == "quota_after":
                state.plan.quota_after(float(body["units"]), fault)
            else:
                raise ValueError(f"unknown mode {mode!r}")
        except (KeyError, ValueError, TypeError) as e:
            return web.json_response({"error": f"bad fault request: {e}"}, status=400)
        return web.json_response(state.plan.describe())

    async def delete_faults(_: web.Request) -> web.Response:
        state.plan.clear()
        return web.json_response([])

    async def get_attempts(_: web.Request) -> web.Response:
        return web.json_response([asdict(a) for a in state.log.items()])

    app.router.add_get("/_sim/faults", get_faults)
    app.router.add_post("/_sim/faults", post_fault)
    app.router.add_delete("/_sim/faults", delete_faults)
    app.router.add_get("/_sim/attempts", get_attempts)
