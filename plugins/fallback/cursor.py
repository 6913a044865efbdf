"""One chain cursor for the three slots: which member to try, what failed, who serves now.

LiveKit's three ``FallbackAdapter`` classes each keep a list of members and a per-member
status (``_status[i].available``), walk the members in order for each request, mark a member
unavailable when it fails, replay requests to it in the background until it answers, and
name the member expected to serve next in ``model``/``provider``. Our adapters keep exactly
that state - the parent's status objects are the cursor's, never a copy - and add, once for
all three slots:

* **guarded members** (behind a :class:`~plugins.resilience.guard.Guard`) are tried on every
  request even when marked unavailable: the guard refuses in microseconds while its breaker is
  open, and answers as soon as the shared store says the provider is back, also when another
  call or another worker learned it. They are never replayed to in the background; their
  prober's synthetic request is what brings them back, and its success marks them available
  here at once (so ``model``/``provider`` name them again, as LiveKit's recovery does);
* **typed events**: a :class:`ChainSwitch` each time the member that would serve the next
  request changes (with the member's key and why), a :class:`ChainServed` each time one
  served. No label parsing, no event-name strings;
* **one request walk** (:class:`Walk`): the order of members to try, the first error, the
  background recovery of unguarded members (LiveKit's own code, called at LiveKit's moments),
  and the ``APIConnectionError`` LiveKit raises when every member failed;
* **tiers**: members may share a tier (equal members); a :class:`TierSelector` orders a tier
  for each request (load balancing, issue 15). The default is LiveKit's fixed order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import structlog
from livekit.agents import APIConnectionError, stt

from plugins.resilience.failures import ClassifiedError, ProviderUnavailableError
from plugins.resilience.guard import Guard, GuardedPlugin
from plugins.resilience.types import Admission, BreakerState, Failure, GuardObserver
from plugins.spec import Slot

log = structlog.get_logger(__name__)

M = TypeVar("M")

RECOVERED = "recovered"


class MemberStatus(Protocol):
    """What the cursor reads and writes of LiveKit's per-member status objects."""

    available: bool


@dataclass(frozen=True)
class ChainSwitch:
    """The member that serves the slot's next request changed."""

    slot: Slot
    from_key: str | None
    to_key: str
    reason: str  # why ``from_key`` was left ("402 quota exhausted"), or "recovered"
    at: float  # wall time (epoch seconds)

    @property
    def is_recovery(self) -> bool:
        return self.reason == RECOVERED


@dataclass(frozen=True)
class ChainServed:
    """A member served a caller's request (probes and background replays do not count)."""

    slot: Slot
    key: str
    at: float  # wall time (epoch seconds)


class ChainObserver:
    """Receives a chain's typed events; override what you need."""

    def on_switch(self, event: ChainSwitch) -> None:
        """The serving member changed."""

    def on_served(self, event: ChainServed) -> None:
        """A member served a request."""


class TierSelector(Protocol):
    """Orders the members of one tier (equal members) for one request.

    ``order`` is asked once per request and may move the selector on (a weighted rotation);
    a selector that also has ``peek(tier)`` is asked that instead when the cursor only wants
    to know who would serve next (``model``/``provider``, switch events), so looking does not
    spend a turn.
    """

    def order(self, tier: Sequence[int]) -> Sequence[int]:
        """``tier``: member indices in chain order; returns them in the order to try."""
        ...


class InOrder:
    """LiveKit's order: members are tried as listed."""

    def order(self, tier: Sequence[int]) -> Sequence[int]:
        return tier

    def peek(self, tier: Sequence[int]) -> Sequence[int]:
        return tier


def guard_of(member: object) -> Guard | None:
    """The guard in front of a member, if any (also behind LiveKit's ``stt.StreamAdapter``)."""
    if isinstance(member, stt.StreamAdapter):
        member = member.wrapped_stt
    return member.guard if isinstance(member, GuardedPlugin) else None


def describe(failure: Failure) -> str:
    """``402 quota exhausted``: a failure as a switch reason (never carries a secret)."""
    status = f"{failure.status} " if failure.status else ""
    return f"{status}{failure.kind.value.replace('_', ' ')}"


def reason_of(error: BaseException) -> str:
    """A short, secret-free reason for a failure; "" for a guard's refusal, whose reason its
    guard already told the cursor (``on_skip``)."""
    if isinstance(error, ClassifiedError):
        return describe(error.failure)
    if isinstance(error, ProviderUnavailableError):
        return ""
    if isinstance(error, TimeoutError):
        return "timeout"
    return type(error).__name__


class ChainCursor(Generic[M]):
    """The shared walk over one adapter's members (see the module docstring).

    ``status`` is the parent adapter's own list (LiveKit's ``_status``): the cursor reads and
    writes ``available`` there. ``announce(member, available)`` emits LiveKit's
    ``*_availability_changed`` event; the adapter forwards every such event (its own and
    those of LiveKit's recovery tasks) to :meth:`availability_changed`. ``order`` gives the
    base order of a request (LiveKit's, e.g. ``sticky``); ``tiers`` groups equal members.
    """

    def __init__(
        self,
        slot: Slot,
        members: Sequence[M],
        status: Sequence[MemberStatus],
        *,
        announce: Callable[[M, bool], None],
        keys: Sequence[str] | None = None,
        order: Callable[[], list[int]] | None = None,
        tiers: Sequence[int] | None = None,
        selector: TierSelector | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keys is not None and len(keys) != len(members):
            raise ValueError(f"{len(keys)} keys given for {len(members)} {slot} members")
        if tiers is not None and len(tiers) != len(members):
            raise ValueError(f"{len(tiers)} tiers given for {len(members)} {slot} members")
        self.slot = slot
        self.members = list(members)
        self.status = status
        self.keys = list(keys) if keys is not None else [_default_key(m) for m in members]
        self.guards = [guard_of(m) for m in members]
        self.tiers = list(tiers) if tiers is not None else list(range(len(members)))
        self.selector: TierSelector = selector or InOrder()
        self._announce = announce
        self._order = order or (lambda: list(range(len(self.members))))
        self._clock = clock
        self._observers: list[ChainObserver] = []
        self._reasons: dict[int, str] = {}
        self._serving = self.serving()
        self._watches: list[tuple[Guard, GuardObserver]] = []
        for index, guard in enumerate(self.guards):
            if guard is not None:
                watch = _GuardWatch(self, index)
                guard.observers.append(watch)
                self._watches.append((guard, watch))

    # -- who serves ---------------------------------------------------------------------------
    def serving(self) -> int:
        """The member the next request goes to first (LiveKit's ``_next_instance``)."""
        order = self.order()
        for index in order:
            if self.status[index].available:
                return index
        return order[0]

    def serving_key(self) -> str:
        return self.keys[self.serving()]

    def order(self, *, commit: bool = False) -> list[int]:
        """Member indices in the order a request tries them: tier by tier, each tier ordered
        by the selector (``commit``: for a request, which may move the selector on)."""
        base = self._order()
        pick = self.selector.order if commit else getattr(self.selector, "peek", None)
        pick = pick or self.selector.order
        out: list[int] = []
        seen: set[int] = set()
        for index in base:
            if index in seen:
                continue
            tier = [i for i in base if self.tiers[i] == self.tiers[index]]
            seen.update(tier)
            out.extend(pick(tier) if len(tier) > 1 else tier)
        return out

    def is_guarded(self, index: int) -> bool:
        return self.guards[index] is not None

    # -- one request --------------------------------------------------------------------------
    def request(self, recover: Callable[[int], None], *, defer_recovery: bool = False) -> Walk[M]:
        """Start one request's walk. ``recover(i)`` starts LiveKit's background recovery of
        an unguarded member that failed or was skipped (``defer_recovery``: at ``finish()``,
        as LiveKit's TTS stream does, once the text to replay is known)."""
        return Walk(self, recover, defer_recovery)

    # -- state changes ------------------------------------------------------------------------
    def mark(self, index: int, available: bool, reason: str = "") -> None:
        """Set a member's availability in the parent's status, announcing a change."""
        if not available:
            self.note(index, reason)
        status = self.status[index]
        if status.available == available:
            return
        status.available = available
        self._announce(self.members[index], available)

    def note(self, index: int, reason: str) -> None:
        """Why a member is down (kept for the switch event that leaves it)."""
        if reason:
            self._reasons[index] = reason

    def served(self, index: int) -> None:
        self.mark(index, True)
        event = ChainServed(self.slot, self.keys[index], self._clock())
        for observer in list(self._observers):
            _tell(lambda o: o.on_served(event), observer)

    def availability_changed(self, member: Any, available: bool) -> None:
        """LiveKit's availability event (ours or its recovery task's): publish a switch when
        the member that serves next changed."""
        before, after = self._serving, self.serving()
        if before == after:
            return
        self._serving = after
        order = self.order()
        went_up = order.index(after) < order.index(before)
        reason = RECOVERED if went_up else self._reasons.get(before, "failed")
        event = ChainSwitch(self.slot, self.keys[before], self.keys[after], reason, self._clock())
        log.info(
            "chain switched",
            slot=self.slot,
            source=event.from_key,
            target=event.to_key,
            reason=reason,
        )
        for observer in list(self._observers):
            _tell(lambda o: o.on_switch(event), observer)

    # -- observers ----------------------------------------------------------------------------
    def subscribe(self, observer: ChainObserver) -> None:
        self._observers.append(observer)

    def unsubscribe(self, observer: ChainObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def close(self) -> None:
        """Stop listening to the guards (the adapter's ``aclose``)."""
        for guard, watch in self._watches:
            if watch in guard.observers:
                guard.observers.remove(watch)
        self._watches.clear()


class Walk(Generic[M]):
    """One request's pass over the chain.

    ``order`` holds the members to try, in order: those available, all of them when every
    one is down (LiveKit), and guarded members always (their guard decides, in microseconds).
    Unguarded members left out are handed to LiveKit's recovery, as LiveKit does.
    """

    def __init__(self, cursor: ChainCursor[M], recover: Callable[[int], None], defer: bool) -> None:
        self.cursor = cursor
        self.started_at = time.time()
        self.first_error: BaseException | None = None
        self._recover = recover
        self._defer = defer
        self._pending: list[int] = []
        order = cursor.order(commit=True)
        all_down = not any(cursor.status[i].available for i in order)
        if all_down:
            log.error(f"all {cursor.slot.upper()}s are unavailable, retrying..")
        self.order: list[int] = []
        for index in order:
            if cursor.status[index].available or all_down or cursor.is_guarded(index):
                self.order.append(index)
            else:
                self._recovery(index)

    def failed(self, index: int, error: BaseException) -> None:
        """A member failed this request: remember the first error, mark it unavailable,
        recover it in the background if it is not guarded."""
        self.first_error = self.first_error or error
        self.cursor.mark(index, False, reason_of(error))
        self._recovery(index)

    def served(self, index: int) -> None:
        self.cursor.served(index)

    def after(self, index: int) -> int | None:
        """The member after ``index`` in this walk (the next to try), if any."""
        position = self.order.index(index)
        return self.order[position + 1] if position + 1 < len(self.order) else None

    def finish(self) -> None:
        """Start the deferred recoveries (``defer_recovery``)."""
        pending, self._pending = self._pending, []
        for index in pending:
            self._recover(index)

    def error(self, detail: str = "") -> APIConnectionError:
        """LiveKit's error when every member failed, with the first member's error as cause."""
        labels = [str(getattr(m, "label", m)) for m in self.cursor.members]
        elapsed = time.time() - self.started_at
        first = f": {self.first_error}" if self.first_error is not None else ""
        error = APIConnectionError(
            f"all {self.cursor.slot.upper()}s failed ({labels}) after {elapsed:.2f} seconds"
            f"{detail}{first}"
        )
        error.__cause__ = self.first_error
        return error

    def _recovery(self, index: int) -> None:
        if self.cursor.is_guarded(index):
            return  # its prober brings it back
        if self._defer:
            self._pending.append(index)
        else:
            self._recover(index)


class _GuardWatch(GuardObserver):
    """What a member's guard tells the cursor: why it refused or failed (the switch reason),
    and that its prober's synthetic request succeeded (the member is back)."""

    def __init__(self, cursor: ChainCursor[Any], index: int) -> None:
        self._cursor = cursor
        self._index = index

    def on_success(self, key: str, *, latency_s: float | None, is_probe: bool = False) -> None:
        if is_probe:
            self._cursor.mark(self._index, True)

    def on_failure(self, key: str, failure: Failure, new_state: BreakerState) -> None:
        self._cursor.note(self._index, describe(failure))

    def on_skip(self, key: str, admission: Admission) -> None:
        self._cursor.note(self._index, admission.reason or admission.state.value)


def _default_key(member: object) -> str:
    guard = guard_of(member)
    return guard.key if guard is not None else str(getattr(member, "label", type(member)))


def _tell(event: Callable[[ChainObserver], None], observer: ChainObserver) -> None:
    try:
        event(observer)
    except Exception:
        log.exception("chain observer failed", observer=type(observer).__name__)
