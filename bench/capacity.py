"""How many simultaneous calls one 2-core worker sustains, on cloud and on local providers.

A call is what LiveKit runs in a job process: the worker's own ``build_session`` (guarded
chains over ``FallbackAdapter``) and ``SalesAgent``, driven here by a
:class:`~plugins.sim.phone_line.PhoneLine` whose caller speaks pre-synthesized lines at the pace
of a real call (``speed=1``). Each call runs in its own process, like a LiveKit job: a pool of
prewarmed call processes (VAD and every local model loaded once, as ``agent.worker.prewarm``
does) takes one call each per level, N calls starting together. The response time is the
agent's: end of the caller's speech -> first agent audio (``AgentTurn.latency_s``). A level
*holds* when every turn is answered and the p95 response time is under the bound (default
1.5 s). Calls start at random moments within 3 s (not in lockstep). The ladder doubles N
until a level fails (or the pool size), then bisects.

Configurations:

* ``cloud``: Deepgram STT, OpenAI LLM, Cartesia TTS, each a real LiveKit plugin pointed at its
  simulator (fake keys) in this process. A real cloud STT recognises speech on the provider's
  machines, so here the Deepgram simulator's recogniser is replaced by the caller's script
  (``--sim-stt-recognises`` restores PocketSphinx, which then competes for the same 2 cores).
* ``local``: the no-network floor: PocketSphinx STT, the scripted LLM, the hibari TTS.
* ``local-stt`` / ``local-tts``: one slot local, the rest cloud; they split the local call's
  extra cost between STT and TTS for ``agent.load.MEASURED_WEIGHTS``.
* ``stock``: stock LiveKit on the cloud simulators (the plugins directly, no guards, no
  FallbackAdapter), at the cloud capacity, for the latency ratio of our layer.

Memory per call is the call process's RSS and USS (unique memory: what a forked LiveKit job
process costs beyond what it shares) at the end of the call. CPU per call is the process's CPU
time over the call's wall time, as a share of the 2 cores.

Run from the repo root: ``.venv/bin/python -m bench.capacity`` (under 5 minutes). The table is
also written to ``bench/results/capacity.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "capacity.md"
CALLER_LINES = (
    "Hi, I would like to know your pricing.",
    "Great, please send me the details by email.",
)
STAGGER_S = 3.0
SIM_STT_TEXT = "hi I would like to know your pricing"
CONFIGS: dict[str, dict[str, list[str]]] = {
    "cloud": {"stt": ["deepgram"], "llm": ["openai"], "tts": ["cartesia"]},
    "local": {"stt": ["free-stt"], "llm": ["free-llm"], "tts": ["local-tts"]},
    "local-stt": {"stt": ["free-stt"], "llm": ["openai"], "tts": ["cartesia"]},
    "local-tts": {"stt": ["deepgram"], "llm": ["openai"], "tts": ["local-tts"]},
    "stock": {"stt": ["deepgram"], "llm": ["openai"], "tts": ["cartesia"]},
}


# ---------------------------------------------------------------------------------------------
# one call (child process)
# ---------------------------------------------------------------------------------------------


async def _child(spec: dict[str, Any]) -> None:
    """A prewarmed call process (like a LiveKit job process): loads the VAD and every local
    model once, then runs one call per ``go CONFIG CALL_ID`` line on stdin until EOF."""
    import psutil
    from livekit.plugins import silero

    from agent.settings import load_settings
    from agent.simulate.simulators import sim_settings
    from plugins.local.prewarm import prewarm_local_providers

    audio = {line: np.load(spec["audio"][line]) for line in CALLER_LINES}
    rate = int(spec["audio_rate"])
    vad = silero.VAD.load()
    prewarm_local_providers({"free-stt", "local-tts", "free-tts", "free-llm"})
    base = sim_settings(load_settings(), spec["urls"], Path(spec["data_dir"]))
    proc = psutil.Process()
    loop = asyncio.get_running_loop()
    _say("ready")
    while command := (await loop.run_in_executor(None, sys.stdin.readline)).split():
        _, config, call_id = command
        result = await _one_call(base, config, call_id, vad, audio, rate, proc)
        _say("result " + json.dumps(result))


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _one_call(
    base: Any, config: str, call_id: str, vad: Any, audio: dict[str, Any], rate: int, proc: Any
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

    # Calls arrive at random moments, not in lockstep (which would make every call's TTS and
    # STT burst at the same instant): each starts within STAGGER_S of the level's start.
    await asyncio.sleep(random.Random(call_id).uniform(0.0, STAGGER_S))
    cpu0, wall0 = time.process_time(), time.monotonic()
    closers: list[Any] = []
    if config == "stock":
        session = _stock_session(settings, vad, closers)
    else:
        session, chains = await build_session(settings, vad=vad, call_id=call_id)
        closers.append(chains.aclose)
    latencies: list[float] = []
    unanswered = 0
    async with PhoneLine(session, SalesAgent(greeting="Hi, this is Alex."), voice=voice) as line:
        await line.listen()
        for text in CALLER_LINES:
            turn = await line.say(text)
            if turn.latency_s is None or not turn.answered or turn.error:
                unanswered += 1
            else:
                latencies.append(turn.latency_s)
        memory = proc.memory_full_info()
    for close in closers:
        await close()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return {
        "latencies": latencies,
        "unanswered": unanswered,
        "cpu_s": cpu,
        "wall_s": wall,
        "rss_mb": memory.rss / 2**20,
        "uss_mb": memory.uss / 2**20,
    }


def _stock_session(settings: Any, vad: Any, closers: list[Any]) -> Any:
    """Stock LiveKit: the cloud plugins handed straight to the session."""
    import aiohttp
    from livekit.agents import AgentSession
    from livekit.agents.llm import LLM
    from livekit.agents.stt import STT
    from livekit.agents.tts import TTS

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
    return AgentSession(stt=stt, llm=llm, tts=tts, vad=vad)


def child_main(spec_path: str) -> None:
    asyncio.run(_child(json.loads(Path(spec_path).read_text())))


# ---------------------------------------------------------------------------------------------
# the ladder (parent process)
# ---------------------------------------------------------------------------------------------


@dataclass
class Level:
    config: str
    calls: int
    latencies: list[float] = field(default_factory=list)
    unanswered: int = 0
    cpu_share: list[float] = field(default_factory=list)  # per call, of the whole machine
    rss_mb: list[float] = field(default_factory=list)
    uss_mb: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

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


class Pool:
    """Prewarmed call processes; a level hands ``calls`` of them one call each, together."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self._calls = 0

    async def start(
        self, size: int, urls: dict[str, str], audio: dict[str, Any], workdir: Path
    ) -> None:
        for n in range(size):
            data_dir = workdir / f"proc-{n}"
            data_dir.mkdir(parents=True)
            spec_path = data_dir / "spec.json"
            spec_path.write_text(json.dumps({"urls": urls, "data_dir": str(data_dir), **audio}))
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.capacity", "--child", str(spec_path),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                    env={**os.environ, "LOG_LEVEL": "ERROR"},
                )
            )  # fmt: skip
        for proc in self.procs:
            assert proc.stdout is not None
            while (line := await asyncio.wait_for(proc.stdout.readline(), 180)) != b"ready\n":
                if not line:
                    raise RuntimeError(f"call process exited {await proc.wait()} while loading")

    async def run(self, config: str, calls: int) -> Level:
        [level] = await self.run_mixed([(config, calls)])
        return level

    async def run_mixed(self, plan: list[tuple[str, int]]) -> list[Level]:
        """One level: ``calls`` calls of each ``config`` in ``plan``, all at once."""
        total = sum(n for _, n in plan)
        if total > len(self.procs):
            raise ValueError(f"{total} calls need a pool of {total}; it has {len(self.procs)}")
        levels = [Level(config, n) for config, n in plan]
        assigned: list[tuple[asyncio.subprocess.Process, Level]] = []
        free = iter(self.procs)
        for level in levels:
            for _ in range(level.calls):
                proc = next(free)
                assert proc.stdin is not None
                self._calls += 1
                proc.stdin.write(f"go {level.config} bench-{level.config}-{self._calls}\n".encode())
                await proc.stdin.drain()
                assigned.append((proc, level))
        for proc, level in assigned:
            assert proc.stdout is not None
            result = None
            try:
                while line := await asyncio.wait_for(proc.stdout.readline(), 180):
                    if line.startswith(b"result "):
                        result = json.loads(line[len(b"result ") :])
                        break
            except TimeoutError:
                pass
            if result is None:
                level.failed.append("a call process gave no result")
                continue
            level.latencies.extend(result["latencies"])
            level.unanswered += result["unanswered"]
            level.cpu_share.append(result["cpu_s"] / result["wall_s"] / (os.cpu_count() or 1))
            level.rss_mb.append(result["rss_mb"])
            level.uss_mb.append(result["uss_mb"])
        return levels

    async def aclose(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _caller_audio(workdir: Path) -> dict[str, Any]:
    from plugins.local.hibari_tts import HibariEngine

    engine = HibariEngine.shared()
    paths = {}
    for n, line in enumerate(CALLER_LINES):
        path = workdir / f"caller-{n}.npy"
        np.save(path, engine.synthesize(line))
        paths[line] = str(path)
    return {"audio": paths, "audio_rate": engine.sample_rate}


async def _simulators(recognise: bool) -> tuple[dict[str, str], list[Any]]:
    from plugins.sim import deepgram_sim
    from plugins.sim.cartesia_sim import CartesiaSimulator
    from plugins.sim.openai_sim import OpenAISimulator

    if not recognise:
        # The provider's recogniser runs on the provider's machines, not the worker's.
        deepgram_sim.transcribe = lambda pcm, sample_rate: SIM_STT_TEXT
    sims: dict[str, Any] = {
        "deepgram": deepgram_sim.DeepgramSimulator(),
        "openai": OpenAISimulator(flavor="openai", token_interval_s=0.01),
        "cartesia": CartesiaSimulator(),
    }
    for sim in sims.values():
        await sim.start()
    return {name: sim.base_url for name, sim in sims.items()}, list(sims.values())


async def _ladder(
    pool: Pool,
    config: str,
    bound_s: float,
    *,
    start: int,
    ceiling: int,
    deadline: float,
    max_levels: int = 3,
) -> tuple[Level | None, list[Level]]:
    """Largest N that holds: double from ``start`` until a level fails (or ``ceiling``), then
    bisect between the last hold and the first failure; at most ``max_levels`` levels."""
    runs: list[Level] = []
    best: Level | None = None
    low, high = 0, None  # holds at low, fails at high
    n = start
    while time.monotonic() < deadline and len(runs) < max_levels:
        level = await pool.run(config, n)
        runs.append(level)
        _print_level(level, bound_s)
        if level.holds(bound_s):
            best, low = level, n
        else:
            high = n
        if high is None:
            if n >= ceiling:
                break
            n = min(n * 2, ceiling)
        elif high - low > 1:
            n = (low + high) // 2
        else:
            break
    return best, runs


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_level(level: Level, bound_s: float) -> None:
    verdict = "holds" if level.holds(bound_s) else "FAILS"
    print(
        f"  {level.config:<9} N={level.calls:<3} p50={_fmt(level.p50)} s p95={_fmt(level.p95)} s "
        f"unanswered={level.unanswered} cpu/call={_fmt(_mean(level.cpu_share), 3)} "
        f"uss/call={_fmt(_mean(level.uss_mb), 0)} MB  {verdict}"
        + (f" ({'; '.join(level.failed)})" if level.failed else ""),
        flush=True,
    )


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


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
        "stt:free-stt": extra_total * share,
        "tts:local-tts": extra_total * (1 - share),
    }


async def bench(args: argparse.Namespace) -> str:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        workdir = Path(tmp)
        audio = _caller_audio(workdir)
        urls, sims = await _simulators(args.sim_stt_recognises)
        pool = Pool()
        try:
            await pool.start(args.max_calls, urls, audio, workdir)
            print(
                f"bound: p95 response time < {args.bound_s} s; {os.cpu_count()} cores; "
                f"{args.max_calls} prewarmed call processes ready in "
                f"{time.monotonic() - started:.0f} s",
                flush=True,
            )
            deadline = started + args.budget_s
            cloud, cloud_runs = await _ladder(
                pool, "cloud", args.bound_s, start=6, ceiling=args.max_calls, deadline=deadline
            )
            local, local_runs = await _ladder(
                pool, "local", args.bound_s, start=3, ceiling=args.max_calls, deadline=deadline
            )
            singles = await pool.run_mixed([("local-stt", 2), ("local-tts", 2)])
            for level in singles:
                _print_level(level, args.bound_s)
            stock = None
            if cloud is not None and time.monotonic() < deadline + 30:
                stock = await pool.run("stock", cloud.calls)
                _print_level(stock, args.bound_s)
        finally:
            await pool.aclose()
            for sim in sims:
                await sim.aclose()
    runs = [*cloud_runs, *local_runs, *singles, *([stock] if stock else [])]
    return _report(args, cloud, local, runs, singles, stock, time.monotonic() - started)


def _report(
    args: argparse.Namespace,
    cloud: Level | None,
    local: Level | None,
    runs: list[Level],
    singles: list[Level],
    stock: Level | None,
    elapsed_s: float,
) -> str:
    lines = [
        "# Capacity of one worker",
        "",
        f"Command: `.venv/bin/python -m bench.capacity` ({elapsed_s:.0f} s). Machine: "
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}. "
        f"Bound: p95 response time (end of caller speech -> first agent audio) < {args.bound_s} s, "
        f"every turn answered. {len(CALLER_LINES)} caller turns per call, real-time pace.",
        "",
        "| providers | calls that hold | p50 s | p95 s | CPU per call (of 2 cores) | RSS per call MB"
        " | USS per call MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, best in (("cloud (simulated)", cloud), ("local", local)):
        if best is None:
            lines.append(f"| {name} | none within the bound | | | | | |")
            continue
        lines.append(
            f"| {name} | **{best.calls}** | {_fmt(best.p50)} | {_fmt(best.p95)} | "
            f"{_fmt(_mean(best.cpu_share), 3)} | {_fmt(_mean(best.rss_mb), 0)} | "
            f"{_fmt(_mean(best.uss_mb), 0)} |"
        )
    lines += [
        "",
        "Every run:",
        "",
        "| config | N | p50 s | p95 s | unanswered | CPU/call | holds |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for level in runs:
        lines.append(
            f"| {level.config} | {level.calls} | {_fmt(level.p50)} | {_fmt(level.p95)} | "
            f"{level.unanswered} | {_fmt(_mean(level.cpu_share), 3)} | "
            f"{'yes' if level.holds(args.bound_s) else 'no'} |"
        )
    if stock is not None and cloud is not None and stock.p95 and cloud.p95:
        lines += [
            "",
            f"Stock LiveKit (plugins straight into the session) at N={stock.calls}: p95 "
            f"{_fmt(stock.p95)} s; ours / stock = {cloud.p95 / stock.p95:.2f}.",
        ]
    if cloud is not None and local is not None:
        cpu = {"cloud": _mean(cloud.cpu_share) or 0.0}
        for level in singles:
            cpu[level.config] = _mean(level.cpu_share) or 0.0
        base, extra = weights_from({"cloud": cloud.calls, "local": local.calls}, cpu)
        lines += [
            "",
            "Weights for `agent.load.MEASURED_WEIGHTS` (a call weighs 1/capacity, so the "
            "projected load reaches 1.0 at the capacity above):",
            "",
            f"    base={base:.3f}  stt:free-stt={extra['stt:free-stt']:.3f}  "
            f"tts:local-tts={extra['tts:local-tts']:.3f}",
        ]
    if not args.sim_stt_recognises:
        lines += [
            "",
            "The Deepgram simulator answered with the caller's script instead of running "
            "PocketSphinx, since a real cloud STT recognises on the provider's machines. The "
            "OpenAI and Cartesia simulators ran in the benchmark process, on the same 2 cores.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description="Concurrent calls one worker sustains.")
    parser.add_argument("--bound-s", type=float, default=1.5, help="p95 response time bound")
    parser.add_argument("--max-calls", type=int, default=12, help="pool size and ceiling")
    parser.add_argument("--budget-s", type=float, default=220.0, help="start no level after")
    parser.add_argument("--sim-stt-recognises", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    print(report)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report)


if __name__ == "__main__":
    main()
