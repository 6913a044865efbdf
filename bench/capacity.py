"""How many simultaneous calls one 2-core worker sustains, searched up to the breaking point.

A call is what LiveKit runs in a job process: the worker's own ``build_session`` (guarded
chains over ``FallbackAdapter``) and ``SalesAgent``, driven by a
:class:`~plugins.sim.phone_line.PhoneLine` whose caller speaks pre-synthesized lines at the pace
of a real call. Each call runs in its own process forked, as LiveKit forks its job processes,
from a forkserver that preloaded the same modules (and freezes them the same way,
``livekit.agents.ipc._preload_freeze``); each process loads what ``agent.worker.prewarm``
loads, runs one call, and reports. The response time is the agent's: end of the caller's
speech -> first agent audio (``AgentTurn.latency_s``). A level *holds* when every turn is
answered and the p95 response time is under the bound (1.5 s). Calls start at random moments
within 3 s. The search doubles N until a level fails (no fixed ceiling below ``--max-calls``),
then bisects between the last level that held and the first that failed.

Configurations:

* ``cloud``: Deepgram STT, OpenAI LLM, Cartesia TTS, each a real LiveKit plugin pointed at its
  simulator (fake keys) in this process. A real cloud STT recognises on the provider's
  machines, so the Deepgram simulator answers with the caller's script.
* ``local``: every slot local, what a total outage leaves: local-stt (Whisper), the scripted
  LLM, local-tts (hibari), the models in the worker's one shared speech service, started and
  supervised here as the worker does.
* ``local-stt`` / ``local-tts``: one slot local, the rest cloud: they split the local call's
  extra cost between STT and TTS for ``agent.load.MEASURED_WEIGHTS``.
* ``stock`` / ``stock-local``: stock LiveKit at the same N as ours: the plugins handed straight
  to ``AgentSession`` (no guards, no fallback); stock-local loads Whisper and hibari in every
  job process, as a LiveKit prewarm does.

Memory per call is the call process's USS (unique memory, what a forked job process costs beyond
what it shares) and RSS at the end of the call, broken down by what the process had loaded at
each step; the shared speech service's memory is counted once per worker.

Run from the repo root: ``.venv/bin/python -m bench.capacity`` (about 15 minutes) or
``--quick`` (under 5 minutes; ends with one ``capacity: ...`` line). The table is written to
``bench/results/capacity.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "capacity.md"
CALLER_LINES = (
    "Hi, I would like to know your pricing.",
    "Great, please send me the details by email.",
)
STAGGER_S = 3.0
#: The machine counts as quiet (weights may be written) below this 1-minute load per core.
QUIET_LOAD_PER_CORE = 0.5
SIM_STT_TEXT = "hi I would like to know your pricing"
CONFIGS: dict[str, dict[str, list[str]]] = {
    "cloud": {"stt": ["deepgram"], "llm": ["openai"], "tts": ["cartesia"]},
    "local": {"stt": ["local-stt"], "llm": ["free-llm"], "tts": ["local-tts"]},
    "local-stt": {"stt": ["local-stt"], "llm": ["openai"], "tts": ["cartesia"]},
    "local-tts": {"stt": ["deepgram"], "llm": ["openai"], "tts": ["local-tts"]},
    "stock": {"stt": ["deepgram"], "llm": ["openai"], "tts": ["cartesia"]},
    "stock-local": {"stt": ["local-stt"], "llm": ["free-llm"], "tts": ["local-tts"]},
}
# What the forkserver imports once, as LiveKit's worker preloads its plugins; the freeze last.
PRELOAD = [
    "bench.capacity",
    "agent.worker",
    "agent.sales_agent",
    "plugins.sim.phone_line",
    "plugins.local.espeak_tts",
    "plugins.local.hibari_tts",
    "plugins.local.whisper_stt",
    "plugins.local.sphinx_stt",
    "livekit.agents.ipc._preload",
    "livekit.agents.ipc._preload_freeze",
]
STAGES = ("forked", "vad", "models", "call")
#: LiveKit's own per-turn metrics (``ChatMessage.metrics``), read off each committed message:
#: where a response's time goes, the same way for ours and for stock.
PARTS = {
    "end_of_turn_delay": "end of turn",
    "transcription_delay": "transcript",
    "llm_node_ttft": "LLM first token",
    "tts_node_ttfb": "TTS first audio",
    "e2e_latency": "LiveKit e2e",
}


# ---------------------------------------------------------------------------------------------
# one call (a forked job process)
# ---------------------------------------------------------------------------------------------


def _memory() -> tuple[float, float]:
    import psutil

    info = psutil.Process().memory_full_info()
    return info.uss / 2**20, info.rss / 2**20


def child_main(conn: Connection, spec: dict[str, Any]) -> None:
    """A job process: prewarm like the worker, say ready, run one call on "go", report."""
    try:
        asyncio.run(_child(conn, spec))
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


async def _child(conn: Connection, spec: dict[str, Any]) -> None:
    from livekit.plugins import silero

    from agent.settings import load_settings
    from agent.simulate.simulators import sim_settings
    from plugins.local.prewarm import prewarm_local_providers
    from plugins.local.speech_client import SOCKET_ENV

    stages = {"forked": _memory()}
    config = spec["config"]
    if config == "stock-local":
        os.environ.pop(SOCKET_ENV, None)  # stock LiveKit: every job process loads its models
    audio = {line: np.load(spec["audio"][line]) for line in CALLER_LINES}
    vad = silero.VAD.load()
    stages["vad"] = _memory()
    names = {*(n for slot in CONFIGS[config].values() for n in slot), "free-tts"}
    await asyncio.to_thread(prewarm_local_providers, names)
    stages["models"] = _memory()
    base = sim_settings(load_settings(), spec["urls"], Path(spec["data_dir"]))
    conn.send(("ready", None))
    await asyncio.to_thread(conn.recv)  # "go"
    result = await _one_call(base, config, spec["call_id"], vad, audio, int(spec["audio_rate"]))
    stages["call"] = _memory()
    result["stages"] = stages
    conn.send(("result", result))


async def _one_call(
    base: Any, config: str, call_id: str, vad: Any, audio: dict[str, Any], rate: int
) -> dict[str, Any]:
    from agent.sales_agent import SalesAgent
    from agent.worker import build_session
    from plugins.sim.phone_line import PhoneLine

    providers = CONFIGS[config]
    settings = base.model_copy(
        update={
            "stt_providers": providers["stt"],
            "llm_providers": providers["llm"],
            "tts_providers": providers["tts"],
        }
    )

    def voice(text: str) -> tuple[Any, int]:
        return audio[text], rate

    await asyncio.sleep(random.Random(call_id).uniform(0.0, STAGGER_S))
    cpu0, wall0 = time.process_time(), time.monotonic()
    closers: list[Any] = []
    if config.startswith("stock"):
        session = _stock_session(settings, vad, closers)
    else:
        session, chains = await build_session(settings, vad=vad, call_id=call_id)
        closers.append(chains.aclose)
    latencies: list[float] = []
    unanswered = 0
    parts: dict[str, list[float]] = {name: [] for name in PARTS}

    def on_item(ev: Any) -> None:
        metrics = getattr(ev.item, "metrics", None) or {}
        for name in PARTS:
            if isinstance(metrics.get(name), int | float):
                parts[name].append(float(metrics[name]))

    session.on("conversation_item_added", on_item)
    async with PhoneLine(session, SalesAgent(greeting="Hi, this is Alex."), voice=voice) as line:
        await line.listen()
        for text in CALLER_LINES:
            turn = await line.say(text)
            if turn.latency_s is None or not turn.answered or turn.error:
                unanswered += 1
            else:
                latencies.append(turn.latency_s)
    for close in closers:
        await close()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return {
        "latencies": latencies,
        "unanswered": unanswered,
        "cpu_s": cpu,
        "wall_s": wall,
        "parts": parts,
    }


def _stock_session(settings: Any, vad: Any, closers: list[Any]) -> Any:
    """Stock LiveKit: the plugins handed straight to the session (a non-streaming STT in
    LiveKit's StreamAdapter, as LiveKit's docs do)."""
    import aiohttp
    from livekit.agents import AgentSession
    from livekit.agents.llm import LLM
    from livekit.agents.stt import STT, StreamAdapter
    from livekit.agents.tts import TTS

    from agent.worker import turn_handling
    from plugins.catalog import definition_for
    from plugins.providers.definition import BuildContext

    http = aiohttp.ClientSession()
    closers.append(http.close)
    ctx = BuildContext(http_session=http)
    stt_spec, llm_spec, tts_spec = (settings.provider_specs(s)[0] for s in ("stt", "llm", "tts"))
    stt = definition_for(stt_spec).build(stt_spec, ctx)
    llm = definition_for(llm_spec).build(llm_spec, ctx)
    tts = definition_for(tts_spec).build(tts_spec, ctx)
    assert isinstance(stt, STT) and isinstance(llm, LLM) and isinstance(tts, TTS)
    if not stt.capabilities.streaming:
        stt = StreamAdapter(stt=stt, vad=vad)
    # LiveKit's own turn handling, as the worker asks for it (the same end-of-turn model)
    return AgentSession(stt=stt, llm=llm, tts=tts, vad=vad, turn_handling=turn_handling(settings))


# ---------------------------------------------------------------------------------------------
# levels (parent process)
# ---------------------------------------------------------------------------------------------


@dataclass
class Level:
    config: str
    calls: int
    latencies: list[float] = field(default_factory=list)
    unanswered: int = 0
    cpu_share: list[float] = field(default_factory=list)  # per call, of the whole machine
    stages: list[dict[str, tuple[float, float]]] = field(default_factory=list)
    service_mb: tuple[float, float] | None = None  # shared speech service (USS, RSS)
    failed: list[str] = field(default_factory=list)
    load_avg: float = 0.0
    parts: dict[str, list[float]] = field(default_factory=dict)  # PARTS, every turn

    @property
    def p95(self) -> float | None:
        if not self.latencies:
            return None
        return float(np.percentile(self.latencies, 95))

    @property
    def p50(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None

    def holds(self, bound_s: float) -> bool:
        p95 = self.p95
        return not self.failed and self.unanswered == 0 and p95 is not None and p95 < bound_s

    def memory(self, stage: str = "call") -> tuple[float | None, float | None]:
        """Mean (USS, RSS) per call process at ``stage``."""
        values = [s[stage] for s in self.stages if stage in s]
        if not values:
            return None, None
        return _mean([v[0] for v in values]), _mean([v[1] for v in values])


class Runner:
    """Forks one job process per call from a preloaded forkserver, as LiveKit does."""

    def __init__(
        self,
        urls: dict[str, str],
        audio: dict[str, Any],
        workdir: Path,
        *,
        ready_timeout_s: float = 240.0,
        call_timeout_s: float = 240.0,
    ) -> None:
        self._ready_timeout_s = ready_timeout_s  # a call process loading what prewarm loads
        self._call_timeout_s = call_timeout_s  # one call, greeting to goodbye
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(PRELOAD)
        self._urls = urls
        self._audio = audio
        self._workdir = workdir
        self._calls = 0
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=256)
        self.speech_pid: int | None = None

    async def _recv(self, conn: Connection, timeout_s: float) -> tuple[str, Any]:
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(self._threads, conn.poll, timeout_s)
        if not ready:
            return "error", f"no message within {timeout_s:.0f} s"
        try:
            message: tuple[str, Any] = await loop.run_in_executor(self._threads, conn.recv)
        except EOFError:
            return "error", "the call process exited"
        return message

    async def run(self, plan: list[tuple[str, int]]) -> list[Level]:
        """One level: ``n`` calls of each config in ``plan``, all at once."""
        child = importlib.import_module("bench.capacity").child_main
        levels = [Level(config, n, load_avg=os.getloadavg()[0]) for config, n in plan]
        procs: list[tuple[Any, Connection, Level]] = []
        for level in levels:
            for _ in range(level.calls):
                self._calls += 1
                data_dir = self._workdir / f"call-{self._calls}"
                data_dir.mkdir(parents=True)
                spec = {
                    "config": level.config,
                    "call_id": f"bench-{level.config}-{self._calls}",
                    "urls": self._urls,
                    "data_dir": str(data_dir),
                    **self._audio,
                }
                parent_end, child_end = self._ctx.Pipe()
                proc = self._ctx.Process(target=child, args=(child_end, spec), daemon=True)
                proc.start()
                child_end.close()
                procs.append((proc, parent_end, level))
        ready = await asyncio.gather(
            *(self._recv(conn, self._ready_timeout_s) for _, conn, _ in procs)
        )
        go = []
        for (proc, conn, level), (kind, detail) in zip(procs, ready, strict=True):
            if kind != "ready":
                level.failed.append(f"a call process did not start: {detail}")
                continue
            conn.send("go")
            go.append((proc, conn, level))
        service_peak: tuple[float, float] | None = None
        results = asyncio.gather(*(self._recv(conn, self._call_timeout_s) for _, conn, _ in go))
        while not results.done():
            service_peak = _max_memory(service_peak, self._service_memory())
            await asyncio.sleep(1.0)
        for (_proc, _conn, level), (kind, detail) in zip(go, await results, strict=True):
            if kind != "result":
                level.failed.append(f"a call gave no result: {detail}")
            else:
                level.latencies.extend(detail["latencies"])
                level.unanswered += detail["unanswered"]
                level.cpu_share.append(detail["cpu_s"] / detail["wall_s"] / (os.cpu_count() or 1))
                level.stages.append({k: tuple(v) for k, v in detail["stages"].items()})
                for name, values in detail["parts"].items():
                    level.parts.setdefault(name, []).extend(values)
        for proc, conn, _ in procs:
            conn.close()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for level in levels:
            if not level.config.startswith("stock") and level.config != "cloud":
                level.service_mb = service_peak
        return levels

    def _service_memory(self) -> tuple[float, float] | None:
        if self.speech_pid is None:
            return None
        import psutil

        with contextlib.suppress(psutil.Error):
            info = psutil.Process(self.speech_pid).memory_full_info()
            return info.uss / 2**20, info.rss / 2**20
        return None

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def _max_memory(
    a: tuple[float, float] | None, b: tuple[float, float] | None
) -> tuple[float, float] | None:
    if a is None or b is None:
        return a or b
    return max(a[0], b[0]), max(a[1], b[1])


def _caller_audio(workdir: Path) -> dict[str, Any]:
    """The caller's lines, voiced once here at the line's rate: a call process only plays them
    (the load generator must not spend the CPU it measures)."""
    from plugins.local.audio import resample
    from plugins.local.hibari_tts import HibariEngine
    from plugins.sim.phone_line import DEFAULT_LINE_RATE

    engine = HibariEngine.shared()
    paths = {}
    for n, line in enumerate(CALLER_LINES):
        path = workdir / f"caller-{n}.npy"
        np.save(path, resample(engine.synthesize(line), engine.sample_rate, DEFAULT_LINE_RATE))
        paths[line] = str(path)
    return {"audio": paths, "audio_rate": DEFAULT_LINE_RATE}


def _memoised_voice(speak: Any) -> Any:
    cache: dict[tuple[str, int, bool], Any] = {}
    lock = threading.Lock()

    def voiced(text: str, sample_rate: int, *, silent: bool = False) -> Any:
        key = (text, sample_rate, silent)
        with lock:
            pcm = cache.get(key)
        if pcm is None:
            pcm = speak(text, sample_rate, silent=silent)
            with lock:
                cache[key] = pcm
        return pcm

    return voiced


async def _simulators() -> tuple[dict[str, str], list[Any]]:
    from plugins.sim import cartesia_sim, deepgram_sim
    from plugins.sim.cartesia_sim import CartesiaSimulator
    from plugins.sim.openai_sim import OpenAISimulator

    # The provider's recogniser and voice run on the provider's machines, not the worker's: the
    # Deepgram simulator answers with the caller's script, and the Cartesia simulator voices
    # each distinct reply once (hibari) and replays it, so the simulators' own CPU stays small.
    cartesia_sim.speak = _memoised_voice(cartesia_sim.speak)  # type: ignore[attr-defined]
    sims: dict[str, Any] = {
        "deepgram": deepgram_sim.DeepgramSimulator(script=SIM_STT_TEXT),
        "openai": OpenAISimulator(flavor="openai", token_interval_s=0.01),
        "cartesia": CartesiaSimulator(),
    }
    for sim in sims.values():
        await sim.start()
    return {name: sim.base_url for name, sim in sims.items()}, list(sims.values())


async def search(
    runner: Runner,
    config: str,
    bound_s: float,
    *,
    start: int,
    ceiling: int,
    deadline: float,
    max_levels: int,
    growth: float = 2.0,
) -> tuple[Level | None, list[Level]]:
    """Largest N that holds: grow from ``start`` (x ``growth``) until a level fails (or
    ``ceiling``), then bisect between the last hold and the first failure; at most
    ``max_levels`` levels."""
    runs: list[Level] = []
    best: Level | None = None
    low, high = 0, None  # holds at low, fails at high
    n = start
    while time.monotonic() < deadline and len(runs) < max_levels:
        [level] = await runner.run([(config, n)])
        runs.append(level)
        _print_level(level, bound_s)
        if level.holds(bound_s):
            best, low = level, n
        else:
            high = n
        if high is None:
            if n >= ceiling:
                break
            n = min(max(n + 1, round(n * growth)), ceiling)
        elif high - low > 1:
            n = (low + high) // 2 if low else max(1, high // 2)
            if n in (r.calls for r in runs):
                break
        else:
            break
    return best, runs


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_level(level: Level, bound_s: float) -> None:
    verdict = "holds" if level.holds(bound_s) else "FAILS"
    uss, rss = level.memory()
    print(
        f"  {level.config:<11} N={level.calls:<3} p50={_fmt(level.p50)} s p95={_fmt(level.p95)} s "
        f"unanswered={level.unanswered} cpu/call={_fmt(_mean(level.cpu_share), 3)} "
        f"uss/call={_fmt(uss, 0)} MB rss/call={_fmt(rss, 0)} MB load={level.load_avg:.1f}  "
        f"{verdict}" + (f" ({'; '.join(level.failed[:2])})" if level.failed else ""),
        flush=True,
    )


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def weights_from(capacity: dict[str, int], cpu: dict[str, float]) -> tuple[float, dict[str, float]]:
    """Per-call weights for ``agent.load``: a call weighs 1/capacity of its configuration, so
    the projected load reaches 1.0 at the measured capacity; the local call's extra over a cloud
    call is split between STT and TTS by the CPU the single-slot runs added."""
    base = 1.0 / capacity["cloud"]
    extra_total = max(1.0 / capacity["local"] - base, 0.0)
    stt_cpu = max(cpu.get("local-stt", 0.0) - cpu["cloud"], 0.0)
    tts_cpu = max(cpu.get("local-tts", 0.0) - cpu["cloud"], 0.0)
    share = stt_cpu / (stt_cpu + tts_cpu) if stt_cpu + tts_cpu > 0 else 0.5
    return base, {
        "stt:local-stt": extra_total * share,
        "tts:local-tts": extra_total * (1 - share),
    }


@dataclass
class Outcome:
    cloud: Level | None = None
    local: Level | None = None
    stock: Level | None = None
    stock_local: Level | None = None
    runs: list[Level] = field(default_factory=list)
    singles: list[Level] = field(default_factory=list)
    warmup: list[Level] = field(default_factory=list)  # one call alone of each kind
    load_before: float = 0.0  # 1-minute load average before the bench started anything

    def weights(self) -> tuple[float, dict[str, float]] | None:
        """``agent.load`` weights from this run, when both capacities were found."""
        if self.cloud is None or self.local is None:
            return None
        cpu = {"cloud": _mean(self.cloud.cpu_share) or 0.0}
        for level in self.singles:
            cpu[level.config] = _mean(level.cpu_share) or 0.0
        return weights_from({"cloud": self.cloud.calls, "local": self.local.calls}, cpu)

    def ratio(self, ours: Level | None, stock: Level | None) -> float | None:
        if ours is None or stock is None or not ours.p95 or not stock.p95:
            return None
        return ours.p95 / stock.p95

    def measured(self, config: str, best: Level | None) -> Level | None:
        """The level to read memory from: the capacity level, else the first run of it."""
        return best or next((r for r in self.runs if r.config == config and r.stages), None)

    def uss_per_call(self) -> float | None:
        levels = (self.measured("cloud", self.cloud), self.measured("local", self.local))
        values = [lvl.memory()[0] for lvl in levels if lvl is not None]
        known = [v for v in values if v is not None]
        return max(known) if known else None


async def bench(args: argparse.Namespace) -> tuple[str, Outcome]:
    from plugins.local.speech_supervisor import SpeechServiceSupervisor

    started = time.monotonic()
    deadline = started + args.budget_s
    out = Outcome(load_before=os.getloadavg()[0])
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        workdir = Path(tmp)
        audio = _caller_audio(workdir)
        urls, sims = await _simulators()
        speech = SpeechServiceSupervisor(str(workdir / "speech.sock"))
        speech.start()  # exports the socket path before the forkserver starts, as the worker does
        # quick: a level that cannot even start or finish its calls in time has failed; waiting
        # longer would only break the 5-minute promise
        timeouts = (60.0, 90.0) if args.quick else (240.0, 240.0)
        runner = Runner(
            urls, audio, workdir, ready_timeout_s=timeouts[0], call_timeout_s=timeouts[1]
        )
        try:
            if not await asyncio.to_thread(speech.wait_ready, 180):
                raise RuntimeError("the shared speech service did not start")
            runner.speech_pid = speech.pid
            print(
                f"bound: p95 response time < {args.bound_s} s; {os.cpu_count()} cores; "
                f"load average {os.getloadavg()[0]:.1f}; speech service ready in "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
            # one call of each kind alone first, not counted: the simulated voice learns the
            # replies and the shared service has recognised and voiced once, as on a worker in
            # service; the stock call is the baseline a single call cannot beat
            for config in ("cloud", "local", "stock"):
                out.warmup += await runner.run([(config, 1)])
                print(f"  warm-up {config}: p95={_fmt(out.warmup[-1].p95)} s", flush=True)
            levels, growth = (2, 1.5) if args.quick else (6, 2.0)
            # each search leaves time for the comparisons that follow it
            share = (deadline - time.monotonic()) / (2.6 if args.quick else 2.4)
            out.cloud, runs = await search(
                runner, "cloud", args.bound_s, start=args.cloud_start, ceiling=args.max_calls,
                deadline=time.monotonic() + share, max_levels=levels, growth=growth,
            )  # fmt: skip
            out.runs += runs
            if out.cloud is not None:
                [out.stock] = await runner.run([("stock", out.cloud.calls)])
                _print_level(out.stock, args.bound_s)
                out.runs.append(out.stock)
            out.local, runs = await search(
                runner, "local", args.bound_s, start=args.local_start, ceiling=args.max_calls,
                deadline=time.monotonic() + share, max_levels=levels, growth=growth,
            )  # fmt: skip
            out.runs += runs
            if out.local is not None and not args.quick and time.monotonic() < deadline:
                [out.stock_local] = await runner.run([("stock-local", out.local.calls)])
                _print_level(out.stock_local, args.bound_s)
                out.runs.append(out.stock_local)
            if time.monotonic() < deadline:
                out.singles = await runner.run([("local-stt", 2), ("local-tts", 2)])
                for level in out.singles:
                    _print_level(level, args.bound_s)
                out.runs += out.singles
        finally:
            runner.close()
            await asyncio.to_thread(speech.stop)
            for sim in sims:
                await sim.aclose()
    return _report(args, out, time.monotonic() - started), out


def _memory_rows(out: Outcome) -> list[str]:
    rows = [
        "| component | cloud call USS MB | local call USS MB | stock-local call USS MB |",
        "|---|---|---|---|",
    ]
    names = {
        "forked": "process forked from the preloaded forkserver (interpreter, LiveKit, plugins)",
        "vad": "+ Silero VAD",
        "models": "+ local models in the call process (eSpeak; stock: Whisper, hibari)",
        "call": "+ the call (session, chains, audio buffers)",
    }
    columns = (
        out.measured("cloud", out.cloud),
        out.measured("local", out.local),
        out.measured("stock-local", out.stock_local),
    )
    previous: list[float | None] = [0.0, 0.0, 0.0]
    for stage in STAGES:
        cells = []
        for n, level in enumerate(columns):
            uss = level.memory(stage)[0] if level is not None else None
            before = previous[n]
            cells.append("-" if uss is None or before is None else f"{uss - before:+.0f}")
            previous[n] = uss
        rows.append(f"| {names[stage]} | " + " | ".join(cells) + " |")
    totals = []
    for level in columns:
        uss, rss = level.memory() if level is not None else (None, None)
        totals.append(f"**{_fmt(uss, 0)}** (RSS {_fmt(rss, 0)})")
    rows.append("| per call process, total | " + " | ".join(totals) + " |")
    local = out.measured("local", out.local)
    service = local.service_mb if local is not None else None
    if service is not None:
        rows.append(
            f"| shared speech service, once per worker (Whisper + hibari), peak | - | "
            f"{service[0]:.0f} (RSS {service[1]:.0f}) | - |"
        )
    return rows


def _report(args: argparse.Namespace, out: Outcome, elapsed_s: float) -> str:
    mode = " --quick" if args.quick else ""
    lines = [
        "# Capacity of one worker",
        "",
        f"Command: `.venv/bin/python -m bench.capacity{mode}` ({elapsed_s:.0f} s). Machine: "
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"load average {_fmt(_mean([r.load_avg for r in out.runs]), 1)} during the run "
        "(the machine is shared with other work; see the load column). Bound: p95 response "
        f"time (end of caller speech -> first agent audio) < {args.bound_s} s, every turn "
        f"answered. {len(CALLER_LINES)} caller turns per call, real-time pace; one job process "
        "per call, forked from a preloaded forkserver as LiveKit does.",
        "",
        "| providers | calls that hold | p50 s | p95 s | stock LiveKit p95 s (same N) | "
        "ours / stock | CPU per call | USS per call MB | RSS per call MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, best, stock in (
        ("cloud (simulated)", out.cloud, out.stock),
        ("all local", out.local, out.stock_local),
    ):
        if best is None:
            lines.append(f"| {name} | none within the bound | | | | | | | |")
            continue
        uss, rss = best.memory()
        lines.append(
            f"| {name} | **{best.calls}** | {_fmt(best.p50)} | {_fmt(best.p95)} | "
            f"{_fmt(stock.p95 if stock else None)} | {_fmt(out.ratio(best, stock))} | "
            f"{_fmt(_mean(best.cpu_share), 3)} | {_fmt(uss, 0)} | {_fmt(rss, 0)} |"
        )
    lines += [
        "",
        "Where a call's memory goes (mean per call process, USS added at each step; read at "
        "the capacity level, else at the first level run):",
        "",
    ]
    lines += _memory_rows(out)
    lines += [
        "",
        "Every run:",
        "",
        "| config | N | p50 s | p95 s | unanswered | CPU/call | USS/call MB | load avg | holds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in out.runs:
        lines.append(
            f"| {level.config} | {level.calls} | {_fmt(level.p50)} | {_fmt(level.p95)} | "
            f"{level.unanswered} | {_fmt(_mean(level.cpu_share), 3)} | "
            f"{_fmt(level.memory()[0], 0)} | {level.load_avg:.1f} | "
            f"{'yes' if level.holds(args.bound_s) else 'no'} |"
        )
    lines += [
        "",
        "Where a response's time goes (p50 per turn of LiveKit's own turn metrics, "
        "`ChatMessage.metrics`, in seconds; 'alone' = one call on the worker):",
        "",
        "| config | N | line: end of speech -> first audio | " + " | ".join(PARTS.values()) + " |",
        "|---|---|---|" + "---|" * len(PARTS),
    ]
    for level in [*out.warmup, *(r for r in out.runs if r.holds(args.bound_s))]:
        cells = [_fmt(_median(level.parts.get(name, []))) for name in PARTS]
        n = "1 (alone)" if level in out.warmup else str(level.calls)
        lines.append(f"| {level.config} | {n} | {_fmt(level.p50)} | " + " | ".join(cells) + " |")
    weights = out.weights()
    if weights is not None:
        base, extra = weights
        lines += [
            "",
            "Weights for `agent.load` (`agent/measured_weights.json`; a call weighs 1/capacity, "
            "so the projected load reaches 1.0 at the capacity above):",
            "",
            f"    base={base:.3f}  stt:local-stt={extra['stt:local-stt']:.3f}  "
            f"tts:local-tts={extra['tts:local-tts']:.3f}",
        ]
    lines += [
        "",
        "The Deepgram simulator answered with the caller's script and the Cartesia simulator "
        "replayed each distinct reply after voicing it once, since a real cloud provider "
        "recognises and speaks on its own machines; the simulators, the load generator and "
        "the shared speech service ran on the same 2 cores. Response time is from the moment "
        "the caller's last word was on the line (the line's own clock, so a call process too "
        "busy to read its audio in time is charged for it) to the first agent audio.",
    ]
    return "\n".join(lines) + "\n"


def summary_line(out: Outcome) -> str:
    ratio = out.ratio(out.cloud, out.stock)
    uss = out.uss_per_call()
    return (
        f"capacity: cloud={out.cloud.calls if out.cloud else 0} "
        f"local={out.local.calls if out.local else 0} "
        f"uss_mb={_fmt(uss, 0)} stock_p95_ratio={_fmt(ratio)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Concurrent calls one worker sustains.")
    parser.add_argument("--quick", action="store_true", help="fewer levels; under 5 minutes")
    parser.add_argument("--bound-s", type=float, default=1.5, help="p95 response time bound")
    parser.add_argument("--max-calls", type=int, default=96, help="never try more calls")
    parser.add_argument(
        "--cloud-start", type=int, default=None, help="first N (default: 24 quick, 12 full)"
    )
    parser.add_argument(
        "--local-start", type=int, default=None, help="first N (default: 8 quick, 4 full)"
    )
    parser.add_argument("--budget-s", type=float, default=None, help="start no level after")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.budget_s is None:
        args.budget_s = 240.0 if args.quick else 900.0
    # quick: start at the goals (24 cloud calls, 8 local ones) and take one step from there
    if args.cloud_start is None:
        args.cloud_start = 24 if args.quick else 12
    if args.local_start is None:
        args.local_start = 8 if args.quick else 4
    try:
        report, out = asyncio.run(bench(args))
    except Exception as e:  # the one summary line is still the last line, with the reason
        print(f"capacity: cloud=0 local=0 uss_mb=- stock_p95_ratio=- error={type(e).__name__}: {e}")
        raise SystemExit(1) from e
    print(report)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report + "\n" + summary_line(out) + "\n")
        print(write_weights(out, quick=args.quick))
    print(summary_line(out))


def write_weights(out: Outcome, *, quick: bool, path: Path | None = None) -> str:
    """Update ``agent/measured_weights.json`` from this run, only when it measured both
    capacities on a machine that was quiet when it started (a busy machine's capacity would
    make the worker refuse calls it can carry). Keys not measured here keep their values."""
    from agent.load import WEIGHTS_FILE

    target = path or WEIGHTS_FILE
    weights = out.weights()
    if weights is None:
        return f"load weights not written: a capacity was not found ({target} unchanged)"
    cores = os.cpu_count() or 1
    if out.load_before > QUIET_LOAD_PER_CORE * cores:
        return (
            f"load weights not written: the machine was busy before the bench started (load "
            f"average {out.load_before:.1f} on {cores} cores); re-run on a quiet machine"
        )
    base, extra = weights
    current = json.loads(target.read_text()) if target.exists() else {"extra": {}}
    merged = {**current.get("extra", {}), **{k: round(v, 4) for k, v in extra.items()}}
    assert out.cloud is not None and out.local is not None
    record = {
        "base": round(base, 4),
        "extra": merged,
        "measured": (
            f"bench.capacity{' --quick' if quick else ''} on {time.strftime('%Y-%m-%d')}: "
            f"{out.cloud.calls} cloud calls, {out.local.calls} local calls within the bound; "
            f"load average {out.load_before:.1f} before the run, {cores} cores"
        ),
    }
    target.write_text(json.dumps(record, indent=2) + "\n")
    return f"load weights written to {target}: base={base:.3f} " + " ".join(
        f"{k}={v:.3f}" for k, v in sorted(merged.items())
    )


if __name__ == "__main__":
    main()
