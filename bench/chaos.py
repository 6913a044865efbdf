"""Chaos at pool scale: two workers, one Redis, every simulator, faults everywhere, no lost lead.

Two worker processes (:mod:`bench.chaos_worker`: the ``start`` server of ``python -m agent``
with a phone-line caller in place of the room the dispatch simulator cannot host) register with
the LiveKit dispatch simulator and share one Redis health store and one journal directory (the
shared volume of ``deploy/compose.yaml``). ``--calls`` simulated calls run at once for
``--minutes``; each caller speaks ``--turns`` lines at the pace of a real call and saves a lead.
Meanwhile a seeded random schedule injects

* provider faults into the simulators (Deepgram, OpenAI, OpenRouter, Gemini, Cartesia,
  ElevenLabs): outages, 402, 429 with and without Retry-After, hangs, slow first byte, cuts,
  stalls, garbage and flapping, one provider at a time per simulator;
* our own faults: SIGKILL of a worker (and its job processes) mid-call, then a restart; Redis
  stopped and restarted; the journal disk filled up (a real tmpfs, when run as root); GHL down
  for a minute (a third of the run when shorter).

At the end the workers drain (SIGTERM), a last deliverer sends what is left (as the next worker
start would), and the journal is compared with what the GHL simulator holds: every outbox item
must be there exactly once (notes by their journal reference, contacts by phone).

Reported: turns answered, time to first answer (p50/p95/p99/max), silences over 2 s, items
journaled vs delivered (lost, duplicated, quarantined), and requests each faulted provider got
during its faults per breaker cooldown (the probe rate). Last line::

    chaos: calls=N turns=T answered=A p99_s=X lost=L duplicated=D

Run: ``.venv/bin/python -m bench.chaos --minutes 2`` (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "chaos.md"
API_KEY = "sim-key"
SIM_STT_TEXT = "hi I would like to know your pricing"
CALM_S = 25.0  # the run starts without faults (the first turns take ~20 s): the baseline
SLOT_OF = {
    "deepgram": "stt",
    "openai": "llm",
    "openrouter": "llm",
    "gemini": "llm",
    "cartesia": "tts",
    "elevenlabs": "tts",
}
PROVIDER_ENV = {  # simulator -> (key variable, base URL variable)
    "deepgram": ("DEEPGRAM_API_KEY", "DEEPGRAM_BASE_URL"),
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "openrouter": ("OPENROUTER_API_KEY", "OPENROUTER_BASE_URL"),
    "gemini": ("GOOGLE_API_KEY", "GOOGLE_BASE_URL"),
    "cartesia": ("CARTESIA_API_KEY", "CARTESIA_BASE_URL"),
    "elevenlabs": ("ELEVENLABS_API_KEY", "ELEVENLABS_BASE_URL"),
}


@dataclass
class FaultWindow:
    target: str
    kind: str
    start: float
    end: float


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes]
    worker_id: str | None = None
    killed: bool = False


@dataclass
class Run:
    workers: list[Worker] = field(default_factory=list)
    calls: dict[str, str] = field(default_factory=dict)  # job id -> worker id
    killed_calls: set[str] = field(default_factory=set)
    windows: list[FaultWindow] = field(default_factory=list)
    own_faults: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # what was printed, for the results file

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)


# -- infrastructure --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH: run `make test` once to install it")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _mount_small_fs(path: Path, size_mb: int) -> bool:
    """A real filesystem the benchmark can fill (needs root); False when it cannot mount."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        capture_output=True,
    )
    return res.returncode == 0


def _fill(path: Path) -> Path:
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


async def _simulators() -> dict[str, Any]:
    from agent.crm.ghl_sim import GhlSimulator
    from plugins.sim import deepgram_sim
    from plugins.sim.cartesia_sim import CartesiaSimulator
    from plugins.sim.elevenlabs_sim import ElevenLabsSimulator
    from plugins.sim.gemini_sim import GeminiSimulator
    from plugins.sim.openai_sim import OpenAISimulator

    # A cloud STT recognises on the provider's machines, not on the worker's 2 cores.
    deepgram_sim.transcribe = lambda pcm, sample_rate: SIM_STT_TEXT
    sims: dict[str, Any] = {
        "deepgram": deepgram_sim.DeepgramSimulator(),
        "openai": OpenAISimulator(flavor="openai", token_interval_s=0.01),
        "openrouter": OpenAISimulator(flavor="openrouter", token_interval_s=0.01),
        "gemini": GeminiSimulator(),
        "cartesia": CartesiaSimulator(),
        "elevenlabs": ElevenLabsSimulator(),
        "ghl": GhlSimulator(),
    }
    for sim in sims.values():
        await sim.start()
    return sims


def _worker_env(
    dispatch_url: str,
    data_dir: Path,
    redis_url: str,
    sims: dict[str, Any],
    key: str,
    turns: int,
    calls: int,
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEY", "_BASE_URL")) and k not in ("REDIS_URL", "METRICS_PORT")
    }
    env.update(
        {
            "LIVEKIT_URL": dispatch_url,
            "LIVEKIT_API_KEY": API_KEY,
            "DATA_DIR": str(data_dir),
            "REDIS_URL": redis_url,
            "ENCRYPTION_KEY": key,
            "GHL_API_KEY": "sim-key",
            "GHL_LOCATION_ID": "sim-location",
            "GHL_BASE_URL": sims["ghl"].base_url,
            "STT_PROVIDERS": "deepgram,free-stt",
            "LLM_PROVIDERS": "openrouter,openai,google,free-llm",
            "TTS_PROVIDERS": "cartesia,elevenlabs,local-tts,free-tts",
            "HEALTH_PORT": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "WARNING",
            "CHAOS_TURNS": str(turns),
            "LOAD_THRESHOLD": "1",
            "CHAOS_IDLE_PROCESSES": str(max(1, calls // 2 + 1)),
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name, (key_var, url_var) in PROVIDER_ENV.items():
        env[key_var] = "sim-key"
        env[url_var] = sims[name].base_url
    return env


# -- faults ----------------------------------------------------------------------------------
def _provider_faults() -> list[tuple[str, Any, str]]:
    from plugins.sim.faults import Fault, FaultType

    return [
        ("outage", Fault(FaultType.STATUS, status=503), "always"),
        ("402", Fault(FaultType.QUOTA, status=402), "always"),
        ("429+retry-after", Fault(FaultType.STATUS, status=429, retry_after_s=4.0), "always"),
        ("429", Fault(FaultType.STATUS, status=429), "always"),
        ("hang", Fault(FaultType.HANG), "always"),
        ("slow-first", Fault(FaultType.SLOW_FIRST, delay_s=1.5), "always"),
        ("cut", Fault(FaultType.CUT, after_chunks=2), "always"),
        ("stall", Fault(FaultType.STALL, after_chunks=2), "always"),
        ("garbage", Fault(FaultType.MALFORMED, after_chunks=1), "always"),
        ("flapping", Fault(FaultType.STATUS, status=503), "flapping"),
    ]


async def _provider_chaos(
    sims: dict[str, Any], rng: random.Random, t0: float, until: float, run: Run
) -> None:
    faults = _provider_faults()
    busy: dict[str, float] = {}
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))  # the calm start: the baseline
    while time.monotonic() < until - 10:
        await asyncio.sleep(rng.uniform(5.0, 10.0))
        now = time.monotonic()
        # one faulted provider per slot at a time: a healthy cloud provider is always there
        # (the STT slot has one cloud simulator, so its faults test the local floor)
        faulted = {SLOT_OF[n] for n, end in busy.items() if end > now}
        free = [n for n in PROVIDER_ENV if SLOT_OF[n] not in faulted]
        if not free:
            continue
        name = rng.choice(free)
        kind, fault, mode = rng.choice(faults)
        duration = rng.uniform(8.0, 20.0)
        plan = sims[name].state.plan
        if mode == "flapping":
            plan.flapping(fault, down_s=2.0, up_s=3.0)
        else:
            plan.always(fault)
        busy[name] = now + duration
        run.windows.append(FaultWindow(name, kind, time.time(), time.time() + duration))
        run.say(f"  +{now - t0:5.1f} s  {name}: {kind} for {duration:.0f} s")
        asyncio.get_running_loop().call_later(duration, plan.clear)


async def _own_chaos(
    *,
    run: Run,
    sims: dict[str, Any],
    redis: Redis,
    server: Any,
    data_dir: Path,
    events_dir: Path,
    can_fill: bool,
    start_worker: Any,
    duration_s: float,
    calm_s: float,
) -> None:
    from plugins.sim.faults import Fault, FaultType

    t0 = time.monotonic()
    stormy_s = duration_s - calm_s

    async def at(fraction: float) -> None:  # a point of the stormy part of the run
        await asyncio.sleep(max(0.0, t0 + calm_s + fraction * stormy_s - time.monotonic()))

    ghl_down_s = min(60.0, stormy_s / 2)
    await at(0.0)
    sims["ghl"].state.plan.window(
        Fault(FaultType.STATUS, status=503), start_in_s=0, duration_s=ghl_down_s
    )
    run.own_faults.append(f"GHL down {ghl_down_s:.0f} s")
    run.say(f"  +{time.monotonic() - t0:5.1f} s  GHL down for {ghl_down_s:.0f} s")

    await at(0.15)
    # the worker with the most calls in progress, once it has one (a kill mid-call)
    for _ in range(40):
        events = _events(events_dir)
        live_by = {
            w.worker_id: [
                j
                for j, wid in run.calls.items()
                if wid == w.worker_id and not _over(j, server, run, events)
            ]
            for w in run.workers
        }
        victim = max(run.workers, key=lambda w: len(live_by[w.worker_id]))
        if live_by[victim.worker_id]:
            break
        await asyncio.sleep(0.5)
    live = live_by[victim.worker_id]
    os.killpg(victim.proc.pid, signal.SIGKILL)
    await asyncio.to_thread(victim.proc.wait, 10)
    victim.killed = True
    run.killed_calls.update(live)
    run.own_faults.append(
        f"SIGKILL of worker {victim.index} (and its job processes) with {len(live)} call(s) "
        f"in progress at +{time.monotonic() - t0:.0f} s"
    )
    run.say(f"  +{time.monotonic() - t0:5.1f} s  {run.own_faults[-1]}")
    await asyncio.sleep(3.0)
    before = set(server.workers)
    replacement = start_worker(len(run.workers) + victim.index)
    run.workers[run.workers.index(victim)] = replacement

    async def registered() -> None:  # the schedule goes on while the new worker prewarms
        with contextlib.suppress(TimeoutError):
            await server.wait_for(
                lambda: set(server.workers) - before, timeout=120, what="the restarted worker"
            )
            replacement.worker_id = next(iter(set(server.workers) - before))

    waiting = asyncio.create_task(registered())

    await at(0.40)
    await asyncio.to_thread(redis.stop)
    run.own_faults.append("Redis stopped for 12 s")
    run.say(f"  +{time.monotonic() - t0:5.1f} s  Redis stopped for 12 s")
    await asyncio.sleep(12.0)
    await asyncio.to_thread(redis.start)

    await at(0.65)
    if can_fill:
        filler = await asyncio.to_thread(_fill, data_dir)
        run.own_faults.append("journal disk full for 12 s")
        run.say(f"  +{time.monotonic() - t0:5.1f} s  journal disk full for 12 s")
        await asyncio.sleep(12.0)
        filler.unlink()
    else:
        run.own_faults.append("journal disk full: skipped (needs root to mount a tmpfs)")
    await waiting


# -- calls -----------------------------------------------------------------------------------
def _events(events_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in events_dir.glob("*.jsonl"):
        with contextlib.suppress(OSError):
            out[path.stem] = [
                json.loads(line) for line in path.read_text().splitlines() if line.strip()
            ]
    return out


async def _callers(
    server: Any, run: Run, events_dir: Path, calls: int, until: float, agent_name: str
) -> None:
    """Keep ``calls`` calls in progress until ``until``, then let them end."""
    n = 0
    while time.monotonic() < until:
        events = _events(events_dir)
        live = [j for j in run.calls if not _over(j, server, run, events)]
        for _ in range(calls - len(live)):
            dispatch = await server.dispatch(f"chaos-{n}", agent_name=agent_name)
            if not dispatch.assigned:
                # The 2 cores are shared, so the CPU average can sit above any threshold: offer
                # the call to the least loaded live worker, as a pool at capacity would queue it.
                target = _least_loaded(server, run)
                if target is not None:
                    dispatch = await server.dispatch(f"chaos-{n}", agent_name=agent_name, to=target)
            n += 1
            if dispatch.assigned and dispatch.worker_id:
                run.calls[dispatch.job_id] = dispatch.worker_id
        await asyncio.sleep(1.0)


def _over(job: str, server: Any, run: Run, events: dict[str, list[dict[str, Any]]]) -> bool:
    """The call ended, died with its worker, or its job never started (LiveKit says failed)."""
    if job in run.killed_calls or any(e["event"] == "end" for e in events.get(job, [])):
        return True
    record = server.dispatches.get(job)
    return record is not None and any(s in ("JS_FAILED", "JS_SUCCESS") for s in record.statuses)


def _least_loaded(server: Any, run: Run) -> str | None:
    live = [
        w.worker_id
        for w in run.workers
        if w.worker_id
        and not w.killed
        and w.proc.poll() is None
        and w.worker_id in server.workers
        and server.workers[w.worker_id].connected
    ]
    per_worker = {w: sum(1 for v in run.calls.values() if v == w) for w in live}
    return min(live, key=lambda w: per_worker[w], default=None)


# -- accounting ------------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ledger(store: Any, ghl: Any) -> dict[str, Any]:
    from agent.journal import outbox

    notes = [n["body"] for c in ghl.contacts for n in ghl.notes_for(c)]
    lost = duplicated = 0
    problems: list[str] = []
    items = store.outbox()
    by_phone: dict[str, int] = {}
    for c in ghl.contacts.values():
        if c.get("phone"):
            by_phone[c["phone"]] = by_phone.get(c["phone"], 0) + 1
    for item in items:
        if item.op == outbox.ADD_NOTE:
            found = sum(outbox.note_marker(item.uid) in body for body in notes)
        elif item.op == outbox.UPSERT_CONTACT:
            found = by_phone.get(item.payload["fields"].get("phone"), 0)
        else:
            found = int(item.state == "delivered")
        if found != 1:
            lost += found == 0
            duplicated += found > 1
            problems.append(
                f"  {'lost' if found == 0 else 'duplicated'}: {item.op} of call {item.call_id}"
                f" ({item.state}, {item.attempts} attempts, last error {item.last_error})"
            )
    # calls that said something must have their transcript in the outbox
    unsent = [
        c
        for c in store.calls()
        if c.records and not any(i.uid == outbox.transcript_uid(c.call_id) for i in items)
    ]
    no_transcript = len(unsent)
    problems += [
        f"  lost: the transcript of call {c.call_id} ({c.records} records, "
        f"{'ended: ' + str(c.end_reason) if c.ended_at else 'never finished'})"
        for c in unsent
    ]
    return {
        "journaled": len(items),
        "delivered": sum(i.state == "delivered" for i in items),
        "lost": lost + no_transcript,
        "duplicated": duplicated,
        "quarantined": len(store.quarantined()),
        "calls_journaled": len(store.calls()),
        "no_transcript": no_transcript,
        "problems": problems,
    }


def _probes(sims: dict[str, Any], windows: list[FaultWindow], cooldown_s: float) -> list[str]:
    lines = []
    for w in windows:
        attempts = [a for a in sims[w.target].state.log.items() if w.start <= a.at <= w.end]
        periods = max(1.0, (w.end - w.start) / cooldown_s)
        lines.append(
            f"  {w.target:<10} {w.kind:<16} {w.end - w.start:5.1f} s: {len(attempts):3d} requests"
            f" ({len(attempts) / periods:.1f} per {cooldown_s:.0f} s cooldown)"
        )
    return lines


# -- main ------------------------------------------------------------------------------------
async def run_chaos(minutes: float, calls: int, turns: int, seed: int) -> int:
    from agent.crm.ghl_client import GhlClient
    from agent.journal.deliverer import OutboxDeliverer
    from agent.journal.store import JournalStore
    from plugins.resilience.breaker import BreakerConfig
    from plugins.sim.livekit_dispatch import DispatchServer

    rng = random.Random(seed)
    duration_s = minutes * 60.0
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    data_dir = work / "data"
    events_dir = work / "events"  # the benchmark's own notes, off the disk it fills
    can_fill = _mount_small_fs(data_dir, 48)
    key = secrets.token_hex(16)  # a fake journal key, made at run time
    redis = Redis(work)
    redis.start()
    sims = await _simulators()
    api_secret = "sim-secret-" + secrets.token_hex(16)
    server = await DispatchServer(API_KEY, api_secret).start()
    run = Run()
    t_start = time.monotonic()
    try:
        env = _worker_env(server.url, data_dir, redis.url, sims, key, turns, calls)
        env["LIVEKIT_API_SECRET"] = api_secret
        env["CHAOS_EVENTS_DIR"] = str(events_dir)

        def start_worker(index: int) -> Worker:
            log = (work / f"worker-{index}.log").open("ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.chaos_worker", "start"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            return Worker(index, proc)

        for i in range(2):
            before = set(server.workers)
            worker = start_worker(i)
            run.workers.append(worker)
            await server.wait_for(lambda b=before: set(server.workers) - b, 120, "a worker")
            worker.worker_id = next(iter(set(server.workers) - before))
        run.say(f"chaos: 2 workers up in {time.monotonic() - t_start:.0f} s; running "
              f"{calls} calls for {minutes:g} min (seed {seed})")  # fmt: skip

        until = time.monotonic() + duration_s
        calm_s = min(CALM_S, duration_s / 4)
        calm_until = time.monotonic() + calm_s
        calm_wall = time.time() + calm_s
        tasks = [
            asyncio.create_task(
                _callers(server, run, events_dir, calls, until, "never-silent-sales")
            ),
            asyncio.create_task(_provider_chaos(sims, rng, calm_until, until, run)),
            asyncio.create_task(
                _own_chaos(
                    run=run,
                    sims=sims,
                    redis=redis,
                    server=server,
                    data_dir=data_dir,
                    events_dir=events_dir,
                    can_fill=can_fill,
                    start_worker=start_worker,
                    duration_s=duration_s,
                    calm_s=calm_s,
                )
            ),
        ]
        await asyncio.gather(*tasks)
        # let the calls in progress end (a call is ~turns x 6 s)
        deadline = time.monotonic() + 30 + turns * 15
        while time.monotonic() < deadline:
            events = _events(events_dir)
            if all(_over(j, server, run, events) for j in run.calls):
                break
            await asyncio.sleep(1.0)
        for w in run.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in run.workers:
            try:
                await asyncio.to_thread(w.proc.wait, 90)
            except subprocess.TimeoutExpired:
                os.killpg(w.proc.pid, signal.SIGKILL)

        # what the next worker start would do: deliver whatever is left
        store = JournalStore.in_dir(data_dir, key)
        async with GhlClient(
            api_key="sim-key", location_id="sim-location", base_url=sims["ghl"].base_url
        ) as client:
            left = OutboxDeliverer(store, client, poll_interval_s=0.2)
            await left.drain(60)
        ledger = _ledger(store, sims["ghl"])
        store.close()

        events = _events(events_dir)
        # every caller turn that got an outcome, on killed calls too (before the kill); the
        # turn a kill cut short has none: the call is reported as cut instead
        turn_events = [
            e for evs in events.values() for e in evs if e["event"] == "turn" and e["turn"] > 0
        ]
        killed_turns = sum(
            1
            for job in run.killed_calls
            for e in events.get(job, [])
            if e["event"] == "turn" and e["turn"] > 0
        )
        answered = [e for e in turn_events if e["answered"]]
        latencies = [e["latency_s"] for e in answered if e.get("latency_s") is not None]
        calm = [e["latency_s"] for e in answered if e["at"] < calm_wall and e.get("latency_s")]
        stormy = [e["latency_s"] for e in answered if e["at"] >= calm_wall and e.get("latency_s")]
        silences = sum(
            1
            for e in turn_events
            if not e["answered"]
            or (e.get("latency_s") or 0) > 2.0
            or (e.get("longest_silence_s") or 0) > 2.0
            or e.get("gaps")
        )
        cooldown = BreakerConfig().base_open_s
        p50, p95, p99 = (_percentile(latencies, q) for q in (0.5, 0.95, 0.99))
        n_calls = len(run.calls)
        never_started = [j for j in run.calls if j not in events and j not in run.killed_calls]
        run.say(f"calls: {len(run.calls)} dispatched, {len(run.killed_calls)} cut by the worker "
              f"kill ({killed_turns} of their turns before it)")  # fmt: skip
        run.say(f"turns: {len(turn_events)}, answered {len(answered)}; calls whose job never "
              f"started (caller heard nothing): {len(never_started)}")  # fmt: skip
        run.say(f"time to first answer: p50 {p50:.2f} s, p95 {p95:.2f} s, p99 {p99:.2f} s, "
              f"max {max(latencies, default=0.0):.2f} s")  # fmt: skip
        run.say(f"silences over 2 s: {silences}")
        if calm and stormy:
            c50, s50 = _percentile(calm, 0.5), _percentile(stormy, 0.5)
            run.say(f"baseline (same pool before any fault, {len(calm)} turns): p50 {c50:.2f} s; "
                  f"under faults p50 {s50:.2f} s, ratio {s50 / c50:.2f}x")  # fmt: skip
        run.say(f"journal: {ledger['calls_journaled']} calls, {ledger['journaled']} CRM items "
              f"journaled, {ledger['delivered']} delivered to GHL, lost {ledger['lost']}, "
              f"duplicated {ledger['duplicated']}, quarantined {ledger['quarantined']}")  # fmt: skip
        for line in ledger["problems"]:
            run.say(line)
        run.say("our faults: " + "; ".join(run.own_faults))
        run.say("provider faults (requests each got while faulted):")
        for line in _probes(sims, run.windows, cooldown):
            run.say(line)
        run.say(f"wall time {time.monotonic() - t_start:.0f} s; logs in {work}")
        run.say(
            f"chaos: calls={n_calls} turns={len(turn_events)} answered={len(answered)} "
            f"p99_s={p99:.2f} lost={ledger['lost']} duplicated={ledger['duplicated']}"
        )
        RESULTS.write_text(
            "# Chaos benchmark\n\n"
            f"`python -m bench.chaos --minutes {minutes:g} --calls {calls} --turns {turns} "
            f"--seed {seed}` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
            "\n\n```\n" + "\n".join(run.lines) + "\n```\n"
        )
        ok = (
            len(answered) == len(turn_events)
            and not never_started
            and ledger["lost"] == 0 == ledger["duplicated"]
        )
        return 0 if ok else 1
    finally:
        for w in run.workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGKILL)
        await server.aclose()
        for sim in sims.values():
            with contextlib.suppress(Exception):
                await sim.aclose()
        redis.stop()
        if can_fill:
            with contextlib.suppress(OSError):  # keep the journal for a look afterwards
                for p in data_dir.glob("journal*"):
                    shutil.copy2(p, work / p.name)
            subprocess.run(["umount", "-l", str(data_dir)], check=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--calls", type=int, default=3, help="calls in progress at once")
    p.add_argument("--turns", type=int, default=4, help="caller turns per call")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    return asyncio.run(run_chaos(args.minutes, args.calls, args.turns, args.seed))


if __name__ == "__main__":
    raise SystemExit(main())
