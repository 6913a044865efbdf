"""``python -m bench.prewarm``: first audio of a call's first turn, with and without prewarm.

Each "call" builds its chains afresh (as a LiveKit job process does, with its own HTTP
session, so nothing is connected yet) against the Cartesia WebSocket simulator (and ElevenLabs', second in the chain) with a
handshake delay standing in for DNS + TCP + TLS + the WebSocket upgrade to a real region
(``--handshake``, default 0.25 s). The call starts, the session's ``prewarm()`` runs (or not),
the first turn's text arrives ``--lead`` seconds later (the LLM writing its greeting, 0.4 s),
and first audio is timed from that text to the first audible frame. Three ways, interleaved
call by call in the same run:

* **none**: our adapter with ``prewarm=False`` (connections open on first use);
* **ours**: our adapter's ``prewarm()`` (the member that will serve, from the shared store);
* **stock**: LiveKit's ``tts.FallbackAdapter.prewarm()`` over the same guarded members (member 0).

A fourth pair repeats none/ours/stock with the primary's breaker already open in the shared
store (another call learned it is down): ours warms the member that will serve, LiveKit's
warms the dead primary. Prints medians and p90s with ratios and writes
``bench/results/prewarm.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
from livekit.agents import utils

from bench.midstream_support import speak, with_stock_adapters
from bench.publish import publish
from plugins.chain import build_chains
from plugins.resilience.store import open_store
from plugins.resilience.types import BreakerState
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.elevenlabs_sim import ElevenLabsSimulator
from plugins.spec import ProviderSpec

RESULTS = Path(__file__).parent / "results" / "prewarm.md"
GREETING = "Hi, thanks for calling Sunny Solar. How can I help you today?"
MODES = ("none", "ours", "stock")


async def one_call(
    store: Any, cartesia: CartesiaSimulator, elevenlabs: ElevenLabsSimulator, mode: str, lead: float
) -> float | None:
    specs = [
        ProviderSpec("tts", "cartesia", base_url=cartesia.base_url, api_key="sim-key"),
        ProviderSpec("tts", "elevenlabs", base_url=elevenlabs.base_url, api_key="sim-key"),
    ]
    chains = build_chains(specs, store, probes=False, prewarm=mode != "none")
    if mode == "stock":
        chains = with_stock_adapters(chains)
    try:
        if mode != "none":
            chains.tts.prewarm()  # what LiveKit's session does as the call starts
        await asyncio.sleep(lead)  # the modelled LLM lead before the first sentence
        started = time.perf_counter()
        spoken = await speak(chains.tts, GREETING, time.perf_counter)
        if spoken.error is not None or not spoken.audible_times:
            return None
        return spoken.audible_times[0] - started
    finally:
        await chains.aclose()


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f} ms"


async def main_async(calls: int, handshake: float, lead: float) -> str:
    from plugins.local.hibari_tts import HibariEngine

    HibariEngine.shared().synthesize("warm up")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows: list[str] = []
    async with (
        utils.http_context.open(),
        CartesiaSimulator(connect_delay_s=handshake) as cartesia,
        ElevenLabsSimulator(connect_delay_s=handshake) as elevenlabs,
    ):
        for primary_down in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                store = open_store(None, Path(tmp))
                if primary_down:
                    await store.set_override("tts:cartesia", BreakerState.FORCED_OPEN)
                times: dict[str, list[float]] = {m: [] for m in MODES}
                for _ in range(calls):
                    for mode in MODES:
                        t = await one_call(store, cartesia, elevenlabs, mode, lead)
                        if t is not None:
                            times[mode].append(t)
                await store.aclose()
            none = statistics.median(times["none"]) if times["none"] else None
            label = "primary down (breaker open)" if primary_down else "primary healthy"
            for mode in MODES:
                med = statistics.median(times[mode]) if times[mode] else None
                ratio = f"{none / med:.1f}x" if none and med else "-"
                line = (
                    f"| {label} | {mode} | {len(times[mode])}/{calls} | {_ms(times[mode], 0.5)} | "
                    f"{_ms(times[mode], 0.9)} | {ratio} |"
                )
                rows.append(line)
                print(line, flush=True)
    header = (
        "# First audio of a call's first turn: prewarm vs none\n\n"
        f"Cartesia WebSocket simulator with a {handshake:g} s handshake (DNS + TCP + TLS + "
        "upgrade to a real region), and the ElevenLabs simulator behind it with the same. "
        f"Fresh chains per call (a job process), first text {lead:g} s after the call "
        f"starts; {calls} calls per way, interleaved. First audio: first text handed to the "
        "TTS -> first audible frame. none: connections on first use; ours: our adapter's "
        "prewarm() (the member that will serve, read from the shared store); stock: LiveKit's "
        "tts.FallbackAdapter.prewarm() (member 0) over the same guarded members. "
        f"ratio: none / this way (median). Load average at the start: {load} (2 cores).\n\n"
        "| primary | prewarm | calls ok | first audio p50 | p90 | none/this |\n"
        "|---|---|---|---|---|---|\n"
    )
    return header + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=10, help="calls per way")
    parser.add_argument("--handshake", type=float, default=0.25, help="simulated handshake (s)")
    parser.add_argument("--lead", type=float, default=0.4, help="call start -> first text (s)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    report = asyncio.run(main_async(args.calls, args.handshake, args.lead))
    publish(report, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
