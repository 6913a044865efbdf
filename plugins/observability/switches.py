"""Which provider a call is using in each slot, and when that changes.

The guards report attempts, successes, failures and skips per provider; a *switch* is the
call's view of them: the slot moved from one provider to another (falling back down the chain,
or returning up it when a better provider recovered). The health log, the metrics and the
journal all want switches, so they are derived once, here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from plugins.resilience.types import Admission, BreakerState, Failure


@dataclass(frozen=True)
class SwitchEvent:
    slot: str
    from_provider: str | None
    to_provider: str
    reason: str  # why the previous provider was left, e.g. "402 quota exhausted"

    @property
    def is_fallback(self) -> bool:
        return self.reason != "recovered"


SwitchListener = Callable[[SwitchEvent], None]


class SwitchTracker:
    """A :class:`~plugins.resilience.types.GuardObserver` that turns guard events into switches.

    ``chains`` maps slot -> provider names in chain order, so a move down the chain is a
    fallback and a move up is a recovery.
    """

    def __init__(self, chains: Mapping[str, Sequence[str]]) -> None:
        self._order = {slot: list(names) for slot, names in chains.items()}
        self._active: dict[str, str | None] = dict.fromkeys(chains)
        self._last_reason: dict[str, str] = {}
        self._listeners: list[SwitchListener] = []

    def set_chains(self, chains: Mapping[str, Sequence[str]]) -> None:
        """The chain order, once the chains are built (the guards need the tracker before)."""
        self._order = {slot: list(names) for slot, names in chains.items()}
        for slot in chains:
            self._active.setdefault(slot, None)

    def subscribe(self, listener: SwitchListener) -> None:
        self._listeners.append(listener)

    def active(self, slot: str) -> str | None:
        return self._active.get(slot)

    # GuardObserver -------------------------------------------------------------------------
    def on_attempt(self, key: str, *, is_probe: bool) -> None:
        if not is_probe:
            slot, _, provider = key.partition(":")
            self._use(slot, provider)

    def on_success(self, key: str, *, latency_s: float | None) -> None:
        slot, _, provider = key.partition(":")
        self._use(slot, provider)

    def on_failure(self, key: str, failure: Failure, new_state: BreakerState) -> None:
        slot, _, _ = key.partition(":")
        status = f"{failure.status} " if failure.status else ""
        self._last_reason[slot] = f"{status}{failure.kind.value.replace('_', ' ')}"

    def on_skip(self, key: str, admission: Admission) -> None:
        slot, _, provider = key.partition(":")
        if self._active.get(slot) == provider or self._active.get(slot) is None:
            self._last_reason[slot] = admission.reason or admission.state.value

    def on_usage(self, key: str, unit: str, amount: float) -> None:
        return None

    # ---------------------------------------------------------------------------------------
    def _use(self, slot: str, provider: str) -> None:
        previous = self._active.get(slot)
        if previous == provider:
            return
        self._active[slot] = provider
        order = self._order.get(slot, [])
        if previous is None:
            # The first provider a call uses is where it starts, unless the ones ahead of it
            # were just skipped or failed: then the call already fell back from the primary.
            if slot not in self._last_reason or not order or provider == order[0]:
                return
            previous = order[0]
        went_up = (
            provider in order
            and previous in order
            and order.index(provider) < order.index(previous)
        )
        reason = "recovered" if went_up else self._last_reason.pop(slot, "unavailable")
        event = SwitchEvent(slot, previous, provider, reason)
        for listener in self._listeners:
            listener(event)
