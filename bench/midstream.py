"""``python -m bench.midstream``: what the caller hears when a provider fails mid-stream.

For each case (an LLM answer cut, stalled or empty; a voice cut, stalled or silent on the
first request, after some audio; a recogniser stalled or cut while the caller speaks) the same plugins and
simulators run twice in the same process: behind our mid-stream adapters
(``build_chains``: :mod:`plugins.fallback`) and behind LiveKit's stock ``FallbackAdapter``
over the same guarded providers (:func:`bench.midstream_support.with_stock_adapters`), so
the only difference is the adapter.

Measured per case:
* **gap**: the longest silence the caller gets at the switch. LLM: the longest pause between
  two pieces of the answer text. TTS: the audio is played out in real time as it arrives
  (as the room would), and the gap is the longest stretch the player had nothing to play.
  STT: the time from the end of the caller's speech to the final transcript.
* **recover**: from the failure to the first output of the next provider (LLM, TTS).
* **complete**: the words the caller got against a healthy run (LLM text, TTS audio
  transcribed with PocketSphinx, STT transcript), with repeats and misses counted.

Prints a table with ratios and writes it to ``bench/results/midstream.md``. Bounded: each
request has a time limit, and the whole run takes well under four minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from livekit.agents import utils

from bench.midstream_support import (
    answer,
    recognize_timed,
    speak,
    speech_frames,
    transcribe,
    two_voices,
    voice_specs,
    with_stock_adapters,
    words,
)
from bench.publish import publish
from plugins.chain import build_chains
from plugins.fallback.llm_adapter import LLMFallbackStream
from plugins.fallback.stt_adapter import STTFallbackAdapter
from plugins.resilience.breaker import BreakerConfig
from plugins.resilience.deadlines import DEFAULT_DEADLINES
from plugins.resilience.guard_tts import SILENCE_PEAK
from plugins.resilience.store import StoreConfig, open_store
from plugins.sim.cartesia_sim import CartesiaSimulator
from plugins.sim.deepgram_sim import DeepgramSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.sim.openai_sim import OpenAISimulator
from plugins.spec import ProviderSpec

RESULTS = Path(__file__).parent / "results" / "midstream.md"
QUESTION = "Hi, what do you sell and how much does it cost?"
TEXT = (
    "Thanks for calling Sunny Solar today. "
    "We install panels and batteries for homes. "
    "Would you like to book a free visit?"
)
UTTERANCE = "I would like to book an appointment for next week please"


@dataclass
class Outcome:
    gap_s: float | None  # None: the caller never got the rest
    recover_s: float | None
    got: list[str]
    error: str | None = None


def lcs(expected: list[str], got: list[str]) -> int:
    """Length of the longest common subsequence: the expected words got, in order."""
    n, m = len(expected), len(got)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            table[i][j] = (
                table[i + 1][j + 1] + 1
                if expected[i] == got[j]
                else max(table[i + 1][j], table[i][j + 1])
            )
    return table[0][0]


def compare(expected: list[str], got: list[str]) -> str:
    """``n/m words`` in order, plus the extra (repeated or wrong) words."""
    common = lcs(expected, got)
    n, extra = len(expected), len(got) - common
    return f"{common}/{n} words" + (f", {extra} extra" if extra else "")


def fmt_ms(value: float | None) -> str:
    return "never" if value is None else f"{value * 1000:.0f} ms"


def ratio(stock: float | None, ours: float | None) -> str:
    if ours is None:
        return "-"
    if stock is None:
        return "stock never recovers"
    if max(stock, ours) < 0.02:
        return "same (both < 20 ms)"
    return f"{stock / max(ours, 1e-3):.1f}x"


def playout_gap(arrivals: list[tuple[float, float]]) -> float:
    """Longest underrun of a real-time player fed (arrival time, duration) frames."""
    if not arrivals:
        return 0.0
    t_play = arrivals[0][0]
    worst = 0.0
    for at, duration in arrivals:
        start = max(t_play, at)
        worst = max(worst, start - t_play)
        t_play = start + duration
    return worst


def _store(tmp: str) -> Any:
    config = StoreConfig(breaker=BreakerConfig(consecutive_failures=1, full_jitter=False))
    return open_store(None, Path(tmp), config=config)


def _chains(chains: Any, ours: bool) -> Any:
    return chains if ours else with_stock_adapters(chains)


# -- LLM --------------------------------------------------------------------------------------
async def llm_case(fault: Fault | None, *, ours: bool, reply: str | None = None) -> Outcome:
    async with OpenAISimulator(flavor="openrouter") as a, OpenAISimulator() as b:
        with tempfile.TemporaryDirectory() as tmp:
            store = _store(tmp)
            specs = [
                ProviderSpec("llm", "openrouter", base_url=a.base_url, api_key="sim-key"),
                ProviderSpec("llm", "openai", base_url=b.base_url, api_key="sim-key"),
            ]
            chains = _chains(build_chains(specs, store, probes=False), ours)
            try:
                await answer(chains.llm, "hello", time.perf_counter)  # warm connections
                if fault is not None:
                    a.state.plan.once(fault)
                if reply is not None:
                    a.brain.script_replies([reply])
                streams: list[Any] = []
                original = chains.llm.chat

                def chat(**kw: Any) -> Any:
                    streams.append(original(**kw))
                    return streams[-1]

                chains.llm.chat = chat  # type: ignore[method-assign]
                heard = await answer(chains.llm, QUESTION, time.perf_counter)
            finally:
                await chains.aclose()
                await store.aclose()
    switches = streams[0].switches if streams and isinstance(streams[0], LLMFallbackStream) else []
    recover = switches[0][2] if switches else None
    complete = heard.error is None
    gap = heard.max_gap_s if complete else None
    if complete and recover is None and (fault is not None or reply is not None):
        recover = heard.max_gap_s
    return Outcome(gap, recover if complete else None, words(heard.text), heard.error)


async def hedge_case(*, hedge: bool, ours: bool) -> float | None:
    """Time to first token when the primary is slow (1.5 s) after its p95 was learned."""
    async with OpenAISimulator(flavor="openrouter") as a, OpenAISimulator() as b:
        with tempfile.TemporaryDirectory() as tmp:
            store = _store(tmp)
            specs = [
                ProviderSpec("llm", "openrouter", base_url=a.base_url, api_key="sim-key"),
                ProviderSpec("llm", "openai", base_url=b.base_url, api_key="sim-key"),
            ]
            chains = _chains(build_chains(specs, store, probes=False, hedge_requests=hedge), ours)
            try:
                for _ in range(6):  # learn the primary's latency
                    await answer(chains.llm, QUESTION, time.perf_counter)
                a.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=1.5))
                started = time.perf_counter()
                heard = await answer(chains.llm, QUESTION, time.perf_counter)
            finally:
                await chains.aclose()
                await store.aclose()
    return heard.times[0] - started if heard.times and heard.error is None else None


# -- TTS --------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _tts_chains(
    *, ours: bool, hedge_requests: bool = False
) -> AsyncIterator[tuple[Any, CartesiaSimulator]]:
    """Cartesia then ElevenLabs, each on its simulator; yields the chains and Cartesia's."""
    async with two_voices() as voices:
        primary = voices[0]
        with tempfile.TemporaryDirectory() as tmp:
            store = _store(tmp)
            built = build_chains(
                voice_specs(voices), store, probes=False, hedge_requests=hedge_requests
            )
            chains = _chains(built, ours)
            try:
                yield chains, primary
            finally:
                await chains.aclose()
                await store.aclose()


async def tts_hedge_case(*, hedge: bool, ours: bool) -> float | None:
    """Time to first audio when Cartesia is slow (1.5 s) after its p95 was learned."""
    async with _tts_chains(ours=ours, hedge_requests=hedge) as (chains, primary):
        for _ in range(6):  # learn the primary's first-audio latency
            await speak(chains.tts, "Hello there.", time.perf_counter)
        primary.state.plan.once(Fault(FaultType.SLOW_FIRST, delay_s=1.5))
        started = time.perf_counter()
        spoken = await speak(chains.tts, TEXT, time.perf_counter)
    if spoken.error is not None or not spoken.audible_times:
        return None
    return spoken.audible_times[0] - started


async def tts_case(fault: Fault | None, *, ours: bool) -> tuple[Outcome, list[str]]:
    async with _tts_chains(ours=ours) as (chains, primary):
        await speak(chains.tts, "Hello there.", time.perf_counter)  # warm
        if fault is not None:
            # the same fault for both: the first request fails after some audio
            primary.state.plan.once(fault)
        arrivals: list[tuple[float, float, bool]] = []
        spoken = await _speak_timed(chains.tts, arrivals)
    heard = words(transcribe(spoken[0], spoken[1])) if spoken[0].size else []
    audible = [at for at, _, loud in arrivals if loud]
    recover = max((b - a for a, b in itertools.pairwise(audible)), default=None)
    gap = playout_gap([(at, d) for at, d, _ in arrivals]) if spoken[2] is None else None
    if spoken[2] is not None:
        recover = None
    return Outcome(gap, recover, heard, spoken[2]), heard


async def _speak_timed(
    model: Any, arrivals: list[tuple[float, float, bool]]
) -> tuple[np.ndarray, int, str | None]:
    pieces: list[np.ndarray] = []
    error = None
    try:
        async with model.stream() as stream:
            for i in range(0, len(TEXT), 12):
                stream.push_text(TEXT[i : i + 12])
            stream.end_input()
            async for audio in stream:
                data = np.frombuffer(audio.frame.data, dtype=np.int16).copy()
                pieces.append(data)
                loud = bool(data.size) and int(np.abs(data).max()) > SILENCE_PEAK
                arrivals.append((time.perf_counter(), audio.frame.duration, loud))
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
    pcm = np.concatenate(pieces) if pieces else np.zeros(0, np.int16)
    return pcm, model.sample_rate, error


# -- STT --------------------------------------------------------------------------------------
async def stt_case(fault: Fault | None, *, ours: bool, frames: list[Any]) -> Outcome:
    """The gap: from the caller's last word on the line (the frame where the trailing second of
    silence starts, as paced) to the last final transcript with words. Not to the stream's
    end: the stream lives for the call, and its end waits for the input to end (the trailing
    second) and for the provider to close, which a caller does not wait for."""
    speech_end_s = sum(f.duration for f in frames) - 1.0  # speech_frames: trailing 1 s
    async with utils.http_context.open(), DeepgramSimulator() as sim:
        with tempfile.TemporaryDirectory() as tmp:
            store = _store(tmp)
            spec = ProviderSpec("stt", "deepgram", base_url=sim.base_url, api_key="sim-key")
            chains = _chains(build_chains([spec], store, probes=False), ours)
            try:
                if fault is not None:
                    sim.state.plan.always(fault)
                heard = await recognize_timed(
                    chains.stt, frames, pace=1.0, speech_end_s=speech_end_s
                )
            finally:
                await chains.aclose()
                await store.aclose()
    adapter = chains.stt if isinstance(chains.stt, STTFallbackAdapter) else None
    recover = None
    if adapter is not None:
        won = [h for h in adapter.hedges if h.winner == h.target and h.won_s is not None]
        if won:  # the hedge gave the utterance: from its start to its final
            recover = won[0].won_s
        elif adapter.switches:
            recover = adapter.switches[0].recovered_s
    got = words(heard.text)
    gap = heard.gap_s if got and heard.error is None else None
    return Outcome(gap, recover, got, heard.error)


# -- the run ----------------------------------------------------------------------------------
async def timed(coro: Awaitable[Any], limit: float) -> Any:
    return await asyncio.wait_for(coro, limit)


CASES = ("llm", "tts", "stt")


async def main_async(limit: float, cases: tuple[str, ...] = CASES) -> str:
    from plugins.local.hibari_tts import HibariEngine
    from plugins.local.sphinx_stt import SphinxEngine

    SphinxEngine.shared()
    HibariEngine.shared().synthesize("warm up")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows: list[str] = []

    def row(case: str, expected: list[str], ours: Outcome, stock: Outcome) -> None:
        for outcome in (ours, stock):
            # the rest never came: a sentence or more is missing. PocketSphinx's own noise is
            # smaller: healthy runs of the same voice heard 18-21 of 21 words (at 0.9 a run
            # that misheard one more word than the reference read as "never")
            if lcs(expected, outcome.got) < 0.75 * len(expected):
                outcome.gap_s = outcome.recover_s = None
        line = (
            f"| {case} | {fmt_ms(ours.gap_s)} | {fmt_ms(stock.gap_s)} | "
            f"{ratio(stock.gap_s, ours.gap_s)} | {fmt_ms(ours.recover_s)} | "
            f"{fmt_ms(stock.recover_s)} | "
            f"{compare(expected, ours.got)} | {compare(expected, stock.got)} |"
        )
        rows.append(line)
        print(line, flush=True)

    llm_cases: list[tuple[str, Fault | None, str | None]] = [
        ("llm cut mid-answer", Fault(FaultType.CUT, after_chunks=6), None),
        ("llm stall mid-answer", Fault(FaultType.STALL, after_chunks=6), None),
        ("llm empty reply", Fault(FaultType.EMPTY), None),
        ("llm blank reply", None, "   "),
    ]
    if "llm" in cases:
        await llm_rows(limit, llm_cases, row, rows)
    if "tts" in cases:
        await tts_rows(limit, row, rows)
    if "stt" in cases:
        await stt_rows(limit, row)
    return _report(load, rows)


async def llm_rows(
    limit: float,
    llm_cases: list[tuple[str, Fault | None, str | None]],
    row: Any,
    rows: list[str],
) -> None:
    healthy = await timed(llm_case(None, ours=True), limit)
    for name, fault, reply in llm_cases:
        ours = await timed(llm_case(fault, ours=True, reply=reply), limit)
        stock = await timed(llm_case(fault, ours=False, reply=reply), limit)
        row(name, healthy.got, ours, stock)

    hedged = await timed(hedge_case(hedge=True, ours=True), limit)
    unhedged = await timed(hedge_case(hedge=False, ours=True), limit)
    stock_first = await timed(hedge_case(hedge=False, ours=False), limit)
    line = (
        f"| llm slow first token (1.5 s), hedge_requests | first token {fmt_ms(hedged)} | "
        f"first token {fmt_ms(stock_first)} | {ratio(stock_first, hedged)} | "
        f"(ours without hedge: {fmt_ms(unhedged)}) | | | |"
    )
    rows.append(line)
    print(line, flush=True)


async def tts_rows(limit: float, row: Any, rows: list[str]) -> None:
    healthy_tts, _ = await timed(tts_case(None, ours=True), limit)
    for name, fault in [
        ("tts cut mid-utterance", Fault(FaultType.CUT, after_chunks=25)),  # 1 s of audio
        ("tts stall mid-utterance", Fault(FaultType.STALL, after_chunks=25)),
        ("tts silent audio", Fault(FaultType.SILENT)),
    ]:
        ours, _ = await timed(tts_case(fault, ours=True), limit)
        stock, _ = await timed(tts_case(fault, ours=False), limit)
        row(name, healthy_tts.got, ours, stock)

    tts_hedged = await timed(tts_hedge_case(hedge=True, ours=True), limit)
    tts_unhedged = await timed(tts_hedge_case(hedge=False, ours=True), limit)
    tts_stock_first = await timed(tts_hedge_case(hedge=False, ours=False), limit)
    line = (
        f"| tts slow first audio (1.5 s), hedge_requests | first audio {fmt_ms(tts_hedged)} | "
        f"first audio {fmt_ms(tts_stock_first)} | {ratio(tts_stock_first, tts_hedged)} | "
        f"(ours without hedge: {fmt_ms(tts_unhedged)}) | | | |"
    )
    rows.append(line)
    print(line, flush=True)


async def stt_rows(limit: float, row: Any) -> None:
    frames = speech_frames(UTTERANCE)
    # the first recognition in the process warms the simulator's decoder: not measured
    await timed(stt_case(None, ours=False, frames=frames), limit)
    healthy_stt = await timed(stt_case(None, ours=True, frames=frames), limit)
    stock_healthy = await timed(stt_case(None, ours=False, frames=frames), limit)
    row("stt healthy (no fault: the reference)", healthy_stt.got, healthy_stt, stock_healthy)
    for name, fault in [
        ("stt stall during speech", Fault(FaultType.STALL, after_chunks=0)),
        ("stt cut during speech", Fault(FaultType.CUT, after_chunks=1)),
    ]:
        ours = await timed(stt_case(fault, ours=True, frames=frames), limit)
        stock = await timed(stt_case(fault, ours=False, frames=frames), limit)
        row(name, healthy_stt.got, ours, stock)


def _report(load: str, rows: list[str]) -> str:
    deadlines = ", ".join(
        f"{slot} first {d.floor_s:g}-{d.ceiling_s:g} s / stall {d.stall_floor:g}-{d.stall_s:g} s"
        for slot, d in DEFAULT_DEADLINES.items()
    )
    header = (
        "# Mid-stream failover: ours vs LiveKit's stock FallbackAdapter\n\n"
        "Same plugins, simulators and guards in the same run; only the adapter differs.\n"
        f"Default deadlines (learned from each provider, within these bounds): {deadlines}; "
        f"STT endpoint window {DEFAULT_DEADLINES['stt'].endpoint_s:g} s until timed. "
        f"Load average at the start: {load}.\n"
        "gap: longest silence the caller gets (LLM: between answer pieces; TTS: real-time "
        "playout underrun; STT: end of speech to final transcript). recover: failure to the "
        "next provider's first output (TTS: longest wait between audible frames as they "
        "arrive; STT: failure to the replayed utterance's transcript). 'never': the caller "
        "never got the rest. words: the caller's words against a healthy run (TTS through "
        "PocketSphinx), in order; 'extra' counts repeated or wrong words.\n\n"
        "| case | gap ours | gap stock | stock/ours | recover ours | recover stock | "
        "words ours | words stock |\n|---|---|---|---|---|---|---|---|\n"
    )
    return header + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--limit", type=float, default=30.0, help="seconds per request")
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help="comma-separated slots to run (llm,tts,stt); the results file is written only "
        "when all run",
    )
    args = parser.parse_args(argv)
    cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    report = asyncio.run(main_async(args.limit, cases))
    if set(cases) == set(CASES):
        publish(report, RESULTS)
    else:
        print(report)
        print(f"not written to {RESULTS}: only {', '.join(cases)} ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
