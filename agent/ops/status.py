"""``python -m agent status``: every provider's health, read from the shared store.

Reads the same store the workers write (SQLite in DATA_DIR, or REDIS_URL), so it shows what a
running pool knows, not what this process knows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from dataclasses import asdict
from typing import Any

from agent.settings import Settings
from plugins.observability.health_view import health_row, render_table
from plugins.resilience.store import open_store
from plugins.resilience.types import ProviderHealth

_SLOT_ORDER = {"stt": 0, "llm": 1, "tts": 2}


#: How long ``status`` waits on the store in all; a hung Redis gets an answer, not a hang.
READ_DEADLINE_S = 10.0


async def read_health(settings: Settings) -> list[ProviderHealth]:
    store = open_store(settings.redis_url, settings.data_dir)
    try:
        async with asyncio.timeout(READ_DEADLINE_S):
            healths = await store.all_health()
    finally:
        await store.aclose()
    return sorted(healths, key=lambda h: (_SLOT_ORDER.get(h.key.split(":")[0], 9), h.key))


def health_json(h: ProviderHealth) -> dict[str, Any]:
    item = asdict(h)
    item["state"] = h.state.value
    item["last_failure"] = h.last_failure.value if h.last_failure else None
    item["success_rate"] = h.success_rate
    item["label"] = health_row(h).state
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
        healths = asyncio.run(read_health(settings))
    except Exception as e:  # an unreachable Redis or unreadable file: say which, don't trace
        sys.stderr.write(store_fault_text(settings, e) + "\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps([health_json(h) for h in healths], indent=2) + "\n")
        return 0
    where = "Redis (REDIS_URL)" if settings.redis_url else f"{settings.data_dir}/"
    table = render_table([health_row(h) for h in healths])
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
