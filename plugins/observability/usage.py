"""What one call used and what it cost, per provider: the summary at the end of every call.

Fed by the guards' ``on_usage`` events, priced with the catalog's (or the settings') price per
unit. The summary goes to the call's log and into the CRM note with the transcript.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from plugins.resilience.types import Admission, BreakerState, Failure

_UNIT_NAMES = {"characters": "chars", "audio_seconds": "s audio", "tokens": "tokens"}


@dataclass(frozen=True)
class Price:
    unit: str
    usd_per_unit: float


class CallUsage:
    """A :class:`~plugins.resilience.types.GuardObserver` that totals one call's usage."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)
        self._usage: dict[tuple[str, str], float] = defaultdict(float)

    def on_attempt(self, key: str, *, is_probe: bool) -> None:
        return None

    def on_success(self, key: str, *, latency_s: float | None) -> None:
        return None

    def on_failure(self, key: str, failure: Failure, new_state: BreakerState) -> None:
        return None

    def on_skip(self, key: str, admission: Admission) -> None:
        return None

    def on_usage(self, key: str, unit: str, amount: float) -> None:
        self._usage[(key, unit)] += amount

    def cost_usd(self, key: str, unit: str, amount: float) -> float:
        price = self._prices.get(key)
        return amount * price.usd_per_unit if price and price.unit == unit else 0.0

    def totals(self) -> list[dict[str, object]]:
        return [
            {
                "provider": key,
                "unit": unit,
                "amount": round(amount, 3),
                "cost_usd": round(self.cost_usd(key, unit, amount), 6),
            }
            for (key, unit), amount in sorted(self._usage.items())
        ]

    @property
    def total_cost_usd(self) -> float:
        return sum(self.cost_usd(k, u, a) for (k, u), a in self._usage.items())

    def summary(self) -> str:
        """``Usage: tts:cartesia 1,204 chars ($0.0458); ... Total $0.0512``"""
        if not self._usage:
            return "Usage: none recorded"
        parts = []
        for (key, unit), amount in sorted(self._usage.items()):
            shown = f"{amount:,.1f}" if unit == "audio_seconds" else f"{amount:,.0f}"
            parts.append(
                f"{key} {shown} {_UNIT_NAMES.get(unit, unit)} (${self.cost_usd(key, unit, amount):.4f})"
            )
        return f"Usage: {'; '.join(parts)}. Total ${self.total_cost_usd:.4f}"
