"""Failover benchmark: stock LiveKit FallbackAdapter vs our guarded chains, same plugins, same run.

``python -m bench.failover [--calls N] [--limit S] [--slots llm,tts]``

For each slot (LLM through the OpenAI simulator, TTS through the Cartesia simulator) and each
fault class, both chains answer the same sequence of N requests (primary = the real LiveKit
plugin pointed at the simulator, fallback = the local floor):

* first: time to first token/audio of the request that meets the fault;
* after: median time to first token/audio of the later requests;
* attempts: requests the failing provider received over the N requests (recovery replays
  included), and the synthetic probes our chain sent among them;
* happy-path overhead of the guard: median per request, guard vs bare plugin (local engine,
  so the provider's own latency does not drown the figure).

A stock request still waiting after ``--limit`` seconds is abandoned and shown as "> limit".
Prints a table and writes it to ``bench/results/failover.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from livekit.agents import llm, tts, utils

from bench.publish import publish
from plugins.catalog import definition_for
from plugins.chain import build_chains
from plugins.local.scripted_llm import ScriptedLLM
from plugins.providers.definition import BuildContext
from plugins.resilience.deadlines import DEFAULT_DEADLINES, AdaptiveDeadline
from plugins.resilience.guard import Guard
from plugins.resilience.guard_llm import GuardedLLM
from plugins.resilience.guard_tts import GuardedTTS
from plugins.resilience.store import open_store
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.sim.http_common import HttpSimulator
from plugins.sim.openai_sim import OpenAISimulator
from plugins.spec import ProviderSpec

RESULTS = Path(__file__).parent / "results" / "failover.md"

FAULTS: dict[str, Fault] = {
    "silent (hang)": Fault(FaultType.HANG),
    "slow first (3 s)": Fault(FaultType.SLOW_FIRST, delay_s=3.0),
    "500": Fault(FaultType.STATUS, status=500),
    "429 Retry-After 30": Fault(FaultType.STATUS, status=429, retry_after_s=30),
    "quota": Fault(FaultType.QUOTA),
    "reset": Fault(FaultType.RESET),
}

QUESTION = "Hi, what do you sell?"
SEQ_CALLS = 5  # calls in the sequence measurement
SEQ_TURNS = 3  # requests per call there
TEXT = "Thanks for calling. How can I help you today?"


@dataclass
class Run:
    first_s: float | None  # None: still waiting at the limit
    after_s: list[float] = field(default_factory=list)
    attempts: int = 0
    probes: int = 0
    stopped: bool = False  # gave up after two requests in a row waited the whole limit


def fmt_s(value: float | None, limit: float) -> str:
    if value is None:
        return f"> {limit:.0f} s"
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def ratio(stock: float | None, ours: float | None, limit: float) -> str:
    if ours is None or ours <= 0:
        return "-"
    value = (limit if stock is None else stock) / ours
    return f"{'>' if stock is None else ''}{value:.0f}x" if value >= 10 else f"{value:.1f}x"


# -- one request, timed to its first token/audio ----------------------------------------------


async def first_token(model: llm.LLM[Any]) -> float:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=QUESTION)
    started = time.perf_counter()
    first: float | None = None
    async with model.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if first is None and chunk.delta and chunk.delta.content:
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("no text")
    return first


async def first_audio(model: tts.TTS[Any]) -> float:
    started = time.perf_counter()
    first: float | None = None
    stream = model.stream()
    stream.push_text(TEXT)
    stream.end_input()
    try:
        async for _ in stream:
            if first is None:
                first = time.perf_counter() - started
    finally:
        await stream.aclose()
    if first is None:
        raise RuntimeError("no audio")
    return first


async def timed(fn: Callable[[], Awaitable[float]], limit: float) -> float | None:
    try:
        return await asyncio.wait_for(fn(), limit)
    except TimeoutError:
        return None


# -- the two chains -------------------------------------------------------------------------


def spec_for(slot: str, sim: HttpSimulator) -> ProviderSpec:
    if slot == "llm":
        return ProviderSpec("llm", "openai", base_url=sim.base_url, api_key="sim-key")
    return ProviderSpec("tts", "cartesia", base_url=sim.base_url, api_key="sim-key")


def stock_adapter(slot: str, sim: HttpSimulator) -> Any:
    spec = spec_for(slot, sim)
    primary = definition_for(spec).build(spec, BuildContext())
    if slot == "llm":
        return llm.FallbackAdapter([primary, ScriptedLLM()])  # type: ignore[list-item]
    from plugins.local.espeak_tts import EspeakTTS

    return tts.FallbackAdapter([primary, EspeakTTS()])  # type: ignore[list-item]


async def scenario(
    slot: str, fault: Fault | None, calls: int, limit: float, *, ours: bool, pace: float = 0.0
) -> Run:
    sim: HttpSimulator = OpenAISimulator() if slot == "llm" else CartesiaSimulator()
    request = first_token if slot == "llm" else first_audio
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(None, Path(tmp))
        async with utils.http_context.open(), sim:
            if ours:
                chains = build_chains([spec_for(slot, sim)], store)
                adapter: Any = chains.llm if slot == "llm" else chains.tts
            else:
                adapter = stock_adapter(slot, sim)
            await timed(lambda: request(adapter), limit)  # warm: connection, engines
            await asyncio.sleep(0.05)
            sim.state.log.clear()
            if fault is not None:
                sim.state.plan.always(fault)
            run = Run(first_s=await timed(lambda: request(adapter), limit))
            at_limit = 1 if run.first_s is None else 0
            for _ in range(calls - 1):
                if at_limit >= 2:
                    run.stopped = True  # every request waits the limit: stop paying for it
                    break
                await asyncio.sleep(pace)
                value = await timed(lambda: request(adapter), limit)
                if value is None:
                    at_limit += 1
                else:
                    at_limit = 0
                    run.after_s.append(value)
            await asyncio.sleep(0.05)
            run.attempts = _failing_attempts(sim)
            if ours:
                run.probes = sum(p.sent for p in chains.probers.values())
                await chains.aclose()
            else:
                await adapter.aclose()
        await store.aclose()
    return run


def _failing_attempts(sim: HttpSimulator) -> int:
    # a request is one context/POST; a WebSocket handshake counts only when it failed
    return sum(
        1 for a in sim.state.log.items() if not (a.route.startswith("GET") and a.fault is None)
    )


@dataclass
class CallSequence:
    attempts: int = 0  # requests the dead provider received over every call
    probes: int = 0  # of which synthetic probes (ours)
    first_call_s: list[float] = field(default_factory=list)  # answer times, first call
    later_calls_s: list[float] = field(default_factory=list)  # answer times, later calls


async def call_sequence(
    slot: str, fault: Fault, n_calls: int, turns: int, limit: float, *, ours: bool
) -> CallSequence:
    """``n_calls`` calls one after the other, each with its own chain (as LiveKit gives each
    call its own process), ``turns`` requests each, against a primary that is down throughout.
    Ours share one health store, as every call on a machine does."""
    sim: HttpSimulator = OpenAISimulator() if slot == "llm" else CartesiaSimulator()
    request = first_token if slot == "llm" else first_audio
    out = CallSequence()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(None, Path(tmp))
        async with utils.http_context.open(), sim:
            sim.state.plan.always(fault)
            for call in range(n_calls):
                if ours:
                    chains = build_chains([spec_for(slot, sim)], store)
                    adapter: Any = chains.llm if slot == "llm" else chains.tts
                else:
                    adapter = stock_adapter(slot, sim)
                for _ in range(turns):
                    value = await timed(lambda a=adapter: request(a), limit)
                    if value is not None:
                        (out.first_call_s if call == 0 else out.later_calls_s).append(value)
                await asyncio.sleep(0.05)  # let background recovery replays land
                if ours:
                    out.probes += sum(p.sent for p in chains.probers.values())
                    await chains.aclose()
                else:
                    await adapter.aclose()
            out.attempts = _failing_attempts(sim)
        await store.aclose()
    return out


class _ToneEngine:
    """A fixed, instant "voice": isolates the guard's own cost from synthesis time."""

    sample_rate = 16000

    def synthesize(self, text: str) -> Any:
        import numpy as np

        t = np.arange(len(text) * 400) / self.sample_rate
        return (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def _tone_tts() -> tts.TTS[Any]:
    from plugins.local.pcm_tts import EngineTTS

    return EngineTTS(
        load_engine=_ToneEngine, sample_rate=16000, label="tone", provider="bench", model="tone"
    )


async def happy_overhead(samples: int) -> dict[str, float]:
    """Median per-request cost of the guard over a local engine (no network noise)."""

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(None, Path(tmp))
        bare_llm = ScriptedLLM()
        guard = Guard("llm:bench", store, deadline=AdaptiveDeadline(DEFAULT_DEADLINES["llm"]))
        guarded_llm = GuardedLLM(ScriptedLLM(), guard)
        tguard = Guard("tts:bench", store, deadline=AdaptiveDeadline(DEFAULT_DEADLINES["tts"]))
        bare_tts, guarded_tts = _tone_tts(), GuardedTTS(_tone_tts(), tguard)
        out: dict[str, float] = {}
        cases: list[tuple[str, Any, Any, Callable[[Any], Awaitable[float]]]] = [
            ("llm", bare_llm, guarded_llm, first_token),
            ("tts", bare_tts, guarded_tts, first_audio),
        ]
        for name, bare, guarded, fn in cases:
            for _ in range(5):
                await fn(bare)
                await fn(guarded)
            b: list[float] = []
            g: list[float] = []
            for _ in range(samples):  # interleaved so drift hits both alike
                b.append(await fn(bare))
                g.append(await fn(guarded))
            out[f"{name}_bare_ms"] = statistics.median(b) * 1000
            out[f"{name}_guarded_ms"] = statistics.median(g) * 1000
            out[f"{name}_overhead_ms"] = out[f"{name}_guarded_ms"] - out[f"{name}_bare_ms"]
        await guard.drain()
        await tguard.drain()
        t0 = time.perf_counter()
        for _ in range(samples):
            await store.admit("llm:bench")
        out["admit_ms"] = (time.perf_counter() - t0) / samples * 1000
        await store.aclose()
    return out


async def main_async(
    calls: int,
    limit: float,
    slots: list[str],
    samples: int,
    pace: float,
    sections: frozenset[str] = frozenset({"faults", "sequence"}),
) -> str:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    import logging

    logging.getLogger("livekit.agents").setLevel(logging.CRITICAL)
    rows: list[str] = []
    header = (
        "| slot | fault | first: stock | first: ours | ratio | later (median): stock | "
        "later: ours | attempts on failing provider: stock | ours (probes) |"
    )
    rows += [header, "|" + "---|" * 9]
    started = time.perf_counter()
    for slot in slots if "faults" in sections else []:
        for name, fault in FAULTS.items():
            stock = await scenario(slot, fault, calls, limit, ours=False, pace=pace)
            ours = await scenario(slot, fault, calls, limit, ours=True, pace=pace)
            s_after = statistics.median(stock.after_s) if stock.after_s else None
            o_after = statistics.median(ours.after_s) if ours.after_s else None
            rows.append(
                f"| {slot} | {name} | {fmt_s(stock.first_s, limit)} | {fmt_s(ours.first_s, limit)} "
                f"| {ratio(stock.first_s, ours.first_s, limit)} | {fmt_s(s_after, limit)} "
                f"| {fmt_s(o_after, limit)} | {stock.attempts}{'*' if stock.stopped else ''} "
                f"| {ours.attempts} ({ours.probes}) |"
            )
            print(rows[-1], flush=True)
    sequence_rows = [
        "| slot | primary down with | requests it received: stock | ours (probes) | "
        "answer, first call: stock / ours (median) | answer, later calls: stock / ours |",
        "|" + "---|" * 6,
    ]
    for slot in slots if "sequence" in sections else []:
        for name in ("500", "reset"):
            fault = FAULTS[name]
            st = await call_sequence(slot, fault, SEQ_CALLS, SEQ_TURNS, limit, ours=False)
            us = await call_sequence(slot, fault, SEQ_CALLS, SEQ_TURNS, limit, ours=True)
            sequence_rows.append(
                f"| {slot} | {name} | {st.attempts} | {us.attempts} ({us.probes}) "
                f"| {fmt_s(_median(st.first_call_s), limit)} / {fmt_s(_median(us.first_call_s), limit)} "
                f"| {fmt_s(_median(st.later_calls_s), limit)} / {fmt_s(_median(us.later_calls_s), limit)} |"
            )
            print(sequence_rows[-1], flush=True)
    overhead = await happy_overhead(samples)
    elapsed = time.perf_counter() - started
    lines = [
        "# Failover benchmark: stock LiveKit FallbackAdapter vs guarded chains",
        "",
        f"N = {calls} sequential requests per scenario, {pace:.1f} s apart, after one warm-up; primary = real LiveKit "
        "plugin (openai.LLM / cartesia.TTS streaming) on the local simulator, fallback = the "
        f"local floor (scripted LLM / eSpeak). Stock requests are abandoned after {limit:.0f} s "
        '("> limit"). Attempts count every request the failing simulator received during the '
        "N requests, background recovery replays included; ours also counts synthetic probes "
        "(in brackets). * = stopped after two stock requests in a row waited the whole limit.",
        "",
        *rows,
        "",
        "TTS streams over Cartesia's WebSocket (one context per request; a handshake counts "
        "only when it failed), which shapes two rows. Under 'reset', aiohttp itself re-sends a "
        "failed handshake once (a GET is idempotent), so each handshake attempt reaches the "
        "provider twice, stock's and ours alike. A 429 on an open socket comes in-band, without "
        "Retry-After, as Cartesia sends it, so ours probes after the breaker's first open time "
        "instead of waiting the 30 s a header would have said. Probe times are fully jittered: "
        "how many fall inside the run's window varies between runs.",
        "",
        f"A sequence of {SEQ_CALLS} calls, {SEQ_TURNS} turns each, one after the other, each "
        "call with its own chain (LiveKit runs each call in its own process); the primary is "
        "down throughout. Stock: every call starts knowing nothing and LiveKit's recovery "
        "replays real requests; ours: the calls share the machine's health store, so the "
        "lesson of the first call serves the others, and a dead provider gets at most one "
        "synthetic probe per cooldown window.",
        "",
        *sequence_rows,
        "",
        f"Happy-path guard overhead (median of {samples}, local engines - scripted LLM, a tone "
        "TTS - so provider latency does not hide it; real SQLite store):",
        "",
        "| slot | bare | guarded | overhead |",
        "|---|---|---|---|",
        f"| llm first token | {overhead['llm_bare_ms']:.2f} ms | {overhead['llm_guarded_ms']:.2f} ms "
        f"| {overhead['llm_overhead_ms']:.2f} ms |",
        f"| tts first audio | {overhead['tts_bare_ms']:.2f} ms | {overhead['tts_guarded_ms']:.2f} ms "
        f"| {overhead['tts_overhead_ms']:.2f} ms |",
        "",
        f"Store admit alone: {overhead['admit_ms']:.3f} ms per call. Total run: {elapsed:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=10, help="requests per scenario")
    parser.add_argument("--limit", type=float, default=8.0, help="cap on a stock request, s")
    parser.add_argument("--slots", default="llm,tts")
    parser.add_argument("--samples", type=int, default=200, help="happy-path samples")
    parser.add_argument("--pace", type=float, default=0.8, help="seconds between requests")
    parser.add_argument(
        "--sections",
        default="faults,sequence",
        help="faults (one chain per fault class), sequence (a sequence of calls), or both",
    )
    args = parser.parse_args(argv)
    sections = frozenset(x.strip() for x in args.sections.split(",") if x.strip())
    if not sections or sections - {"faults", "sequence"}:
        parser.error("--sections: choose faults, sequence or both")
    slots = [s.strip() for s in args.slots.split(",") if s.strip()]
    bad = [s for s in slots if s not in ("llm", "tts")]
    if bad:
        parser.error(f"--slots: unknown slot(s) {bad}; choose from llm, tts")
    report = asyncio.run(
        main_async(args.calls, args.limit, slots, args.samples, args.pace, sections)
    )
    publish(report, RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
