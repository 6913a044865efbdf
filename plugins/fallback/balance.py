"""Balancing inside a tier: share by weight, pass over a member near its limit, prefer the closest.

A chain is tiers in priority order (the cursor keeps that order across tiers). Members of one
tier are equals: the keys of one provider's key pool, its regional endpoints, or providers an
operator marks as equals. :class:`Balancer` is the cursor's
:class:`~plugins.fallback.cursor.TierSelector` for such tiers:

* **weighted** tiers (a key pool) share the traffic by weight with a smooth weighted
  round-robin (nginx's): the split follows the weights request by request, deterministically,
  without bursts on one member;
* **closest** tiers (endpoints or providers that are equals) send each request to the member
  with the lowest measured first-response latency, with hysteresis: a challenger takes over
  only when it is faster by ``switch_share`` *and* ``switch_min_s``, so calls do not flap
  between two members a few milliseconds apart. Members not yet measured are tried first
  until they have ``min_samples`` samples, and one request in ``explore_every`` measures the
  member measured longest ago, so a region that got faster is noticed;
* in both, a member whose rate-limit **headroom** (what the provider reported in its
  ``x-ratelimit-*`` headers, refilled at the rate it reports, less the requests sent since)
  is below its reserve is passed over *before* it answers 429, and tried only after the
  others, soonest-refilled first.

:class:`HeadroomBoard` is what one process knows of each member: the readings its own
responses carried, the ones other workers wrote to the health store (read at most every
``refresh_s`` per member, the freshest reading wins), the requests it sent since, and the
latencies it measured. It is a :class:`~plugins.resilience.types.GuardObserver` of each
member's guard and listens to each member's response tap.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from plugins.resilience.headroom import (
    DEFAULT_RESERVE,
    Headroom,
    below_reserve,
    refilled_at,
    tightest,
)
from plugins.resilience.types import Admission, GuardObserver, HealthStore

log = structlog.get_logger(__name__)

Mode = Literal["weighted", "closest"]

#: Requests remembered per member between two readings: far more than any limit's reserve.
MAX_TRACKED_SENDS = 1024


@dataclass(frozen=True)
class BalanceSettings:
    """How a tier is balanced; the defaults suit a voice agent's traffic."""

    reserve: float = DEFAULT_RESERVE  # share of a limit kept back (other workers spend it)
    refresh_s: float = 0.5  # read the pool's readings of a member at most this often
    switch_share: float = 0.2  # closest: a challenger must be 20 % faster...
    switch_min_s: float = 0.02  # ...and 20 ms faster, to take over
    min_samples: int = 3  # closest: measurements a member needs before it is ranked
    explore_every: int = 20  # closest: one request in N measures another member
    latency_weight: float = 0.3  # weight of a new sample in the moving average
    use_headroom: bool = True  # False: weights and latency only (a provider's headers lie)

    def __post_init__(self) -> None:
        if not 0 <= self.reserve < 1:
            raise ValueError(f"reserve must be in [0, 1), got {self.reserve}")
        if self.refresh_s <= 0:
            raise ValueError(f"refresh_s must be > 0, got {self.refresh_s}")
        if self.switch_share < 0 or self.switch_min_s < 0:
            raise ValueError("switch_share and switch_min_s must be >= 0")
        if self.min_samples < 1 or self.explore_every < 2:
            raise ValueError("min_samples must be >= 1 and explore_every >= 2")
        if not 0 < self.latency_weight <= 1:
            raise ValueError(f"latency_weight must be in (0, 1], got {self.latency_weight}")


@dataclass
class _Member:
    readings: dict[str, Headroom] = field(default_factory=dict)
    # wall times of requests sent since the oldest reading (bounded for members that report
    # no readings at all, whose sends nothing ever prunes)
    sends: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_TRACKED_SENDS))
    latency_s: float | None = None
    samples: int = 0
    measured_at: float = 0.0
    refreshed_at: float = float("-inf")
    writing: bool = False
    unwritten: list[Headroom] | None = None
    picked: int = 0  # requests the balancer sent its way whose attempt has not started yet


class HeadroomBoard(GuardObserver):
    """A process's view of each member's headroom and latency (see the module docstring).

    ``store``: the health store the pool shares (None: this process's readings only).
    """

    def __init__(
        self,
        store: HealthStore | None = None,
        *,
        settings: BalanceSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or BalanceSettings()
        self._clock = clock
        self._members: dict[str, _Member] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _m(self, key: str) -> _Member:
        member = self._members.get(key)
        if member is None:
            member = self._members[key] = _Member()
        return member

    # -- what the member's tap and guard report ---------------------------------------------
    def observe(self, key: str, readings: Sequence[Headroom]) -> None:
        """Readings a response of ``key`` carried: kept here, and written for the pool."""
        self._merge(key, readings)
        if self.store is not None:
            self._write(key, list(readings))

    def on_headroom(self, key: str, readings: list[Headroom]) -> None:
        self.observe(key, readings)

    def picked(self, key: str) -> None:
        """The balancer put ``key`` first for a request: count the send now, before its guard
        admits it, so concurrent requests deciding meanwhile see it."""
        member = self._m(key)
        member.picked += 1
        member.sends.append(self._clock())

    def on_attempt(self, key: str, *, is_probe: bool) -> None:
        member = self._m(key)
        if member.picked > 0 and not is_probe:
            member.picked -= 1  # counted when picked
            return
        member.sends.append(self._clock())

    def on_skip(self, key: str, admission: Admission) -> None:
        member = self._m(key)
        if member.picked > 0:  # its guard refused it: nothing was sent
            member.picked -= 1
            if member.sends:
                member.sends.pop()

    def on_success(self, key: str, *, latency_s: float | None, is_probe: bool = False) -> None:
        if latency_s is None or latency_s < 0:
            return
        member = self._m(key)
        weight = self.settings.latency_weight
        member.latency_s = (
            latency_s
            if member.latency_s is None
            else member.latency_s + weight * (latency_s - member.latency_s)
        )
        member.samples += 1
        member.measured_at = self._clock()

    # -- what the balancer asks ---------------------------------------------------------------
    def readings(self, key: str) -> list[Headroom]:
        return list(self._m(key).readings.values())

    def spent_since(self, key: str, reading_at: float) -> int:
        """Requests this process sent to ``key`` after a reading taken at ``reading_at``."""
        sends = self._m(key).sends
        return sum(1 for t in sends if t > reading_at)

    def tight(self, key: str, now: float | None = None) -> bool:
        """Whether ``key`` is estimated below its reserve on any dimension."""
        now = self._clock() if now is None else now
        readings = self.readings(key)
        return any(
            below_reserve((r,), now, self.spent_since(key, r.observed_at), self.settings.reserve)
            for r in readings
        )

    def share_left(self, key: str, now: float | None = None) -> float:
        """The lowest share of a limit estimated left (1.0 when nothing was reported)."""
        now = self._clock() if now is None else now
        return min(
            (tightest((r,), now, self.spent_since(key, r.observed_at)) for r in self.readings(key)),
            default=1.0,
        )

    def refilled_at(self, key: str) -> float:
        return refilled_at(self.readings(key), self.settings.reserve)

    def latency(self, key: str) -> tuple[float | None, int, float]:
        """(moving-average first-response latency, samples, when last measured)."""
        member = self._m(key)
        return member.latency_s, member.samples, member.measured_at

    def refresh(self, keys: Sequence[str]) -> None:
        """Read the pool's readings of ``keys`` from the store in the background, for those
        not read within ``refresh_s`` (needs a running loop; without one, nothing to do)."""
        if self.store is None:
            return
        now = self._clock()
        due = [k for k in keys if now - self._m(k).refreshed_at >= self.settings.refresh_s]
        if not due:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        for key in due:
            self._m(key).refreshed_at = now
            self._spawn(self._read(key))

    async def drain(self) -> None:
        """Wait for the store reads and writes in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- plumbing -----------------------------------------------------------------------------
    def _merge(self, key: str, readings: Sequence[Headroom]) -> None:
        member = self._m(key)
        for reading in readings:
            old = member.readings.get(reading.dimension)
            if old is None or old.observed_at <= reading.observed_at:
                member.readings[reading.dimension] = reading
        oldest = min((r.observed_at for r in member.readings.values()), default=0.0)
        while member.sends and member.sends[0] <= oldest:
            member.sends.popleft()

    def _write(self, key: str, readings: list[Headroom]) -> None:
        """One write in flight per member; readings that arrive meanwhile are coalesced into
        the next write (only the latest matters)."""
        member = self._m(key)
        if member.writing:
            member.unwritten = readings
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no running loop: kept locally only
            return
        member.writing = True

        async def write() -> None:
            pending: list[Headroom] | None = readings
            try:
                while pending is not None:
                    member.unwritten = None
                    assert self.store is not None
                    await self.store.record_headroom(key, pending)
                    pending = member.unwritten
            except Exception as e:
                log.warning(
                    "headroom not shared with the pool", provider=key, error=type(e).__name__
                )
            finally:
                member.writing = False

        self._spawn(write())

    async def _read(self, key: str) -> None:
        assert self.store is not None
        try:
            readings = await self.store.headroom(key)
        except Exception as e:
            log.warning("pool headroom not readable", provider=key, error=type(e).__name__)
            return
        self._merge(key, readings)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@dataclass
class _TierState:
    current: dict[int, float] = field(default_factory=dict)  # smooth WRR's running scores
    leader: int | None = None
    requests: int = 0


class Balancer:
    """The cursor's :class:`~plugins.fallback.cursor.TierSelector` for balanced tiers.

    ``keys``/``weights``/``modes`` are per member index of the adapter (the cursor's indices);
    a tier's mode is its first member's.
    """

    def __init__(
        self,
        keys: Sequence[str],
        *,
        board: HeadroomBoard,
        weights: Sequence[float] | None = None,
        modes: Sequence[Mode] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = list(keys)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.keys)
        self.modes: list[Mode] = list(modes) if modes is not None else ["weighted"] * len(keys)
        if not len(self.weights) == len(self.modes) == len(self.keys):
            raise ValueError("keys, weights and modes must have one entry per member")
        if any(w <= 0 for w in self.weights):
            raise ValueError("weights must be > 0")
        self.board = board
        self._clock = clock
        self._tiers: dict[tuple[int, ...], _TierState] = {}

    def order(self, tier: Sequence[int]) -> list[int]:
        return self._order(tier, commit=True)

    def peek(self, tier: Sequence[int]) -> list[int]:
        return self._order(tier, commit=False)

    def _order(self, tier: Sequence[int], *, commit: bool) -> list[int]:
        state = self._tiers.setdefault(tuple(sorted(tier)), _TierState())
        now = self._clock()
        if commit:
            self.board.refresh([self.keys[i] for i in tier])
        use = self.board.settings.use_headroom
        ready = [i for i in tier if not (use and self.board.tight(self.keys[i], now))]
        tight = sorted(
            (i for i in tier if i not in ready),
            key=lambda i: (
                self.board.refilled_at(self.keys[i]),
                -self.board.share_left(self.keys[i], now),
            ),
        )
        if not ready:
            return tight
        if self.modes[tier[0]] == "closest":
            first = self._closest(state, ready, commit=commit)
        else:
            first = self._weighted(state, ready, commit=commit)
        if commit:
            self.board.picked(self.keys[first[0]])
        return [*first, *tight]

    def _weighted(self, state: _TierState, ready: list[int], *, commit: bool) -> list[int]:
        """Smooth weighted round-robin over the members not near their limit."""
        current = dict(state.current)
        for i in ready:
            current[i] = current.get(i, 0.0) + self.weights[i]
        ranked = sorted(ready, key=lambda i: (-current[i], ready.index(i)))
        current[ranked[0]] -= sum(self.weights[i] for i in ready)
        if commit:
            state.current = current
        return ranked

    def _closest(self, state: _TierState, ready: list[int], *, commit: bool) -> list[int]:
        """The leader first (kept with hysteresis), the rest fastest first; unmeasured members
        and one request in ``explore_every`` measure someone else."""
        s = self.board.settings
        stats = {i: self.board.latency(self.keys[i]) for i in ready}

        def speed(i: int) -> tuple[float, int]:
            latency = stats[i][0]
            return (latency if latency is not None else float("inf"), ready.index(i))

        by_speed = sorted(ready, key=speed)
        unmeasured = [i for i in ready if stats[i][1] < s.min_samples]
        leader = state.leader if state.leader in ready else None
        measured = [i for i in by_speed if i not in unmeasured]
        if measured:
            best = measured[0]
            if leader is None or leader in unmeasured:
                leader = best
            else:
                lead_s, best_s = stats[leader][0], stats[best][0]
                assert lead_s is not None and best_s is not None
                gain = lead_s - best_s
                if gain > s.switch_min_s and gain > lead_s * s.switch_share:
                    leader = best
        first: int | None = None
        requests = state.requests + 1
        if unmeasured:
            first = min(unmeasured, key=lambda i: (stats[i][1], ready.index(i)))
        elif requests % s.explore_every == 0 and len(ready) > 1:
            others = [i for i in ready if i != leader]
            first = min(others, key=lambda i: stats[i][2])  # measured longest ago
        if commit:
            state.requests = requests
            state.leader = leader
        head = first if first is not None else leader
        if head is None:
            return by_speed
        rest = [i for i in by_speed if i != head]
        if leader is not None and leader != head:
            rest.remove(leader)
            rest.insert(0, leader)
        return [head, *rest]
