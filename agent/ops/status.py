"""``python -m agent status``: every provider's health, read from the shared store.

Reads the same store the workers write (SQLite in DATA_DIR, or REDIS_URL), so it shows what a
running pool knows, not what this process knows. Every provider the settings configure is
listed in chain order, also before its first call (its key missing, or not used yet), and
providers the store remembers but the settings no longer name follow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

from agent.settings import Settings
from plugins.catalog import CATALOG, SLOTS
from plugins.observability.health_view import HealthRow, health_row, render_table
from plugins.resilience.store import open_store
from plugins.resilience.types import BreakerState, ProviderHealth

#: How long ``status`` waits on the store in all; a hung Redis gets an answer, not a hang.
READ_DEADLINE_S = 10.0


@dataclass(frozen=True)
class ProviderStatus:
    key: str
    health: ProviderHealth | None  # None: no call has used it yet
    note: str  # "" or why it is not in use: "no key (CARTESIA_API_KEY not set)"

    @property
    def row(self) -> HealthRow:
        if self.health is not None:
            return health_row(self.health)
        slot, _, provider = self.key.partition(":")
        return HealthRow(slot, provider, self.note or "not used yet", "-", "-", 0, "")


async def read_status(settings: Settings) -> list[ProviderStatus]:
    store = open_store(settings.redis_url, settings.data_dir)
    try:
        async with asyncio.timeout(READ_DEADLINE_S):
            healths = {h.key: h for h in await store.all_health()}
    finally:
        await store.aclose()
    out: list[ProviderStatus] = []
    for slot in SLOTS:
        for spec in settings.provider_specs(slot):
            provider = CATALOG.lookup(spec.slot, spec.name)
            note = "" if provider.has_key(spec) else f"no key ({provider.key_hint} not set)"
            out.append(ProviderStatus(spec.key, healths.pop(spec.key, None), note))
    order: dict[str, int] = {slot: i for i, slot in enumerate(SLOTS)}
    for key in sorted(healths, key=lambda k: (order.get(k.partition(":")[0], 9), k)):
        out.append(ProviderStatus(key, healths[key], "not configured"))
    return out


def status_json(s: ProviderStatus) -> dict[str, Any]:
    h = s.health or ProviderHealth(s.key, BreakerState.CLOSED)
    item = asdict(h)
    item["state"] = h.state.value
    item["last_failure"] = h.last_failure.value if h.last_failure else None
    item["success_rate"] = h.success_rate
    item["label"] = s.row.state
    item["note"] = s.note
    finite: dict[str, Any] = _finite(item)
    return finite


def _finite(value: Any) -> Any:
    """``value`` with every non-finite number as None: JSON has no ``Infinity``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def run(argv: list[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent status", description=__doc__)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        statuses = asyncio.run(read_status(settings))
    except Exception as e:  # an unreachable Redis or unreadable file: say which, don't trace
        sys.stderr.write(store_fault_text(settings, e) + "\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps([status_json(s) for s in statuses], indent=2) + "\n")
        return 0
    where = "Redis (REDIS_URL)" if settings.redis_url else f"{settings.data_dir}/"
    table = render_table([s.row for s in statuses])
    sys.stdout.write(f"Provider health (store: {where})\n{table}\n")
    return 0


def store_fault_text(settings: Settings, error: BaseException) -> str:
    """What ``status`` and ``doctor`` say when the shared health store fails."""
    where = "REDIS_URL" if settings.redis_url else f"DATA_DIR ({settings.data_dir})"
    what = "no answer in time (hung?)" if isinstance(error, TimeoutError) else f"{error}"
    return (
        f"Health store at {where} is failing: {type(error).__name__}: {what}. Calls keep "
        "running (each worker process decides from its own in-memory breakers, so they no "
        "longer share what they learn); fix the store or point REDIS_URL/DATA_DIR elsewhere."
    )
