"""What one call used and what it cost, per provider: the summary at the end of every call.

Fed by the guards' ``on_usage`` events (each provider in its own unit: characters, audio
seconds, tokens) and ``on_cost`` events (that usage priced at the catalog's or the settings'
rate); the summary goes to the call's log and into the CRM note with the transcript.
"""

from __future__ import annotations

from collections import defaultdict

from plugins.resilience.types import GuardObserver

COST_UNIT = "usd"
_UNIT_NAMES = {"characters": "chars", "audio_seconds": "s audio", "tokens": "tokens"}


class CallUsage(GuardObserver):
    """A guard observer that totals one call's usage and cost."""

    def __init__(self) -> None:
        self._usage: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def on_usage(self, key: str, unit: str, amount: float) -> None:
        self._usage[key][unit] += amount

    def on_cost(self, key: str, usd: float) -> None:
        self._usage[key][COST_UNIT] += usd

    def totals(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for key, units in sorted(self._usage.items()):
            for unit, amount in sorted(units.items()):
                if unit != COST_UNIT:
                    rows.append(
                        {
                            "provider": key,
                            "unit": unit,
                            "amount": round(amount, 3),
                            "cost_usd": round(units.get(COST_UNIT, 0.0), 6),
                        }
                    )
        return rows

    @property
    def total_cost_usd(self) -> float:
        return sum(units.get(COST_UNIT, 0.0) for units in self._usage.values())

    def summary(self) -> str:
        """``Usage: tts:cartesia 1,204 chars ($0.0458); ... Total $0.0512``"""
        rows = self.totals()
        if not rows:
            return "Usage: none recorded"
        parts = []
        for row in rows:
            amount = float(str(row["amount"]))
            unit = str(row["unit"])
            shown = f"{amount:,.1f}" if unit == "audio_seconds" else f"{amount:,.0f}"
            cost = float(str(row["cost_usd"]))
            parts.append(f"{row['provider']} {shown} {_UNIT_NAMES.get(unit, unit)} (${cost:.4f})")
        return f"Usage: {'; '.join(parts)}. Total ${self.total_cost_usd:.4f}"
