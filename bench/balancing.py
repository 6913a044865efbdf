"""Balancing benchmark: two keys of one provider, each with its own rate limit, under call traffic.

``python -m bench.balancing [--minutes M] [--rate R] [--window S] [--seed N]``

The OpenAI simulator limits each key to 60 requests per minute, as OpenAI does (a bucket
refilling steadily, reported in ``x-ratelimit-*`` headers on every answer). Call traffic of
100 requests per minute arrives at random moments of each minute (seeded), each a streamed chat
completion through the real LiveKit ``openai.LLM``, with the local floor behind both keys:

* **stock**: LiveKit's ``llm.FallbackAdapter([openai.LLM(key 1), openai.LLM(key 2), floor])``:
  a strict priority list, so key 1 takes all traffic until it answers 429, then the request
  fails over and LiveKit replays it to key 1 in the background until key 1 answers again;
* **ours**: the same two keys as a pool (``OPENAI_API_KEY=key1,key2``): one tier shared by
  weight, a member close to its limit passed over before it answers 429;
* ours with weights 4:1 (key 1 asked for 80 a minute, more than its 60), with headroom off
  and on: what passing over near-limit keys buys when the weights ask too much of one key.

Counted: caller-visible 429 failovers (a caller's request that met a 429 before another
member served it: LiveKit's own "failed, switching to next LLM" for stock, our guards' rate
limit failures on a caller's request for ours), every 429 the simulator sent (background
replays and probes included), the requests each key answered, and the split against the
weights. Time is compressed: the simulator's minute is ``--window`` seconds (6 by default),
and so is the traffic's. Prints a table and writes it to ``bench/results/balancing.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import logging
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog
from livekit.agents import llm, utils

from bench.publish import publish
from plugins.catalog import definition_for
from plugins.chain import build_chains
from plugins.fallback.balance import BalanceSettings
from plugins.local.scripted_llm import ScriptedLLM
from plugins.providers.definition import BuildContext
from plugins.providers.pool import pool_specs
from plugins.resilience.store import open_store
from plugins.resilience.types import BreakerState, Failure, FailureKind, GuardObserver
from plugins.sim.openai_sim import OpenAISimulator
from plugins.sim.rate_limit import KeyRateLimiter
from plugins.spec import ProviderSpec

RESULTS = Path(__file__).parent / "results" / "balancing.md"
KEYS = ("sk-bench-key-one", "sk-bench-key-two")
LIMIT_PER_MINUTE = 60
QUESTION = "Hi, what do you sell?"

#: which caller request the current task serves (LiveKit's stream tasks inherit it)
_REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("bench_request", default="")


@dataclass
class Outcome:
    name: str
    weights: tuple[float, float]
    requests: int = 0
    visible_429: set[str] = field(default_factory=set)  # caller requests that met a 429
    served: Counter[str] = field(default_factory=Counter)  # 200s per key, as the sim saw
    sim_429: int = 0
    floor: int = 0  # caller requests no key served (the local floor answered)
    failed: int = 0  # caller requests that got no answer at all
    elapsed_s: float = 0.0

    @property
    def share_key1(self) -> float:
        total = self.served["key1"] + self.served["key2"]
        return self.served["key1"] / total if total else 0.0

    @property
    def deviation(self) -> float:
        """How far key 1's share is from its weight's share, relative to that share."""
        target = self.weights[0] / sum(self.weights)
        return abs(self.share_key1 - target) / target


class _StockFailovers(logging.Handler):
    """LiveKit's own line for a caller's failed attempt (its recovery replays say
    "recovery failed" instead): a 429 there is a caller-visible failover."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(logging.WARNING)
        self.outcome = outcome

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "switching to next LLM" in message and "429" in message and _REQUEST.get():
            self.outcome.visible_429.add(_REQUEST.get())


class _OurFailovers(GuardObserver):
    """Our guards' rate-limit failures on a caller's request (probes run in no request)."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome

    def on_failure(self, key: str, failure: Failure, new_state: BreakerState) -> None:
        if failure.kind is FailureKind.RATE_LIMITED and _REQUEST.get():
            self.outcome.visible_429.add(_REQUEST.get())


def arrivals(rate_per_window: float, window_s: float, minutes: float, seed: int) -> list[float]:
    """Arrival times (seconds from the start): exactly ``rate_per_window`` requests in each
    window, each at a random moment of it (seeded), so every row meets the same traffic."""
    rng = random.Random(seed)
    out: list[float] = []
    whole = int(minutes)
    for minute in range(whole + (1 if minutes > whole else 0)):
        share = min(1.0, minutes - minute)
        count = round(rate_per_window * share)
        out.extend((minute + rng.random() * share) * window_s for _ in range(count))
    return sorted(out)


async def _request(model: llm.LLM[Any], rid: str, outcome: Outcome) -> None:
    _REQUEST.set(rid)
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=QUESTION)
    text = ""
    try:
        async with model.chat(
            chat_ctx=ctx, extra_kwargs={"extra_headers": {"X-Client-Request-Id": rid}}
        ) as stream:
            async for chunk in stream:
                if chunk.delta and chunk.delta.content:
                    text += chunk.delta.content
    except Exception:
        outcome.failed += 1
        return
    if not text:
        outcome.failed += 1


async def run(
    name: str,
    *,
    stock: bool,
    weights: tuple[float, float],
    times: list[float],
    window_s: float,
    headroom: bool = True,
) -> Outcome:
    outcome = Outcome(name, weights, requests=len(times))
    limiter = KeyRateLimiter(requests=LIMIT_PER_MINUTE, window_s=window_s)
    sim = OpenAISimulator(rate_limit=limiter)
    handler = _StockFailovers(outcome)
    livekit_log = logging.getLogger("livekit.agents")
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(None, Path(tmp))
        async with utils.http_context.open(), sim:
            sim.name_keys(KEYS)
            base = ProviderSpec("llm", "openai", base_url=sim.base_url, api_key=",".join(KEYS))
            members = pool_specs(base, key_env="OPENAI_API_KEY", url_env="OPENAI_BASE_URL")
            members = [replace(m, weight=w) for m, w in zip(members, weights, strict=True)]
            chains = None
            if stock:
                plugins = [definition_for(m).build(m, BuildContext()) for m in members]
                model: llm.LLM[Any] = llm.FallbackAdapter([*plugins, ScriptedLLM()])  # type: ignore[list-item]
                livekit_log.addHandler(handler)
            else:
                chains = build_chains(
                    members,
                    store,
                    observers=[_OurFailovers(outcome)],
                    balance=BalanceSettings(use_headroom=headroom),
                )
                model = chains.llm
            started = time.perf_counter()
            tasks: list[asyncio.Task[None]] = []
            for n, at in enumerate(times):
                delay = at - (time.perf_counter() - started)
                if delay > 0:
                    await asyncio.sleep(delay)  # the traffic's own schedule, not a wait for state
                tasks.append(asyncio.create_task(_request(model, f"r{n}", outcome)))
            await asyncio.gather(*tasks)
            outcome.elapsed_s = time.perf_counter() - started
            livekit_log.removeHandler(handler)
            await asyncio.sleep(0.2)  # let the last background replays land
            items = sim.state.log.items()
            outcome.sim_429 = sum(1 for a in items if a.status == 429)
            outcome.served = Counter(a.key for a in items if a.status == 200)
            answered = {a.client_id for a in items if a.status == 200 and a.client_id}
            outcome.floor = sum(1 for n in range(len(times)) if f"r{n}" not in answered)
            outcome.floor -= outcome.failed
            if chains is not None:
                await chains.aclose()
            else:
                await model.aclose()
                for plugin in plugins:
                    await plugin.aclose()
        await store.aclose()
    return outcome


def _row(o: Outcome, stock_visible: int) -> str:
    if o.name.startswith("stock"):
        ratio = "1x"
    elif not o.visible_429:
        ratio = f"{stock_visible} -> 0" if stock_visible else "0 -> 0"
    else:
        ratio = f"{stock_visible / len(o.visible_429):.1f}x fewer"
    weights = f"{o.weights[0]:g}:{o.weights[1]:g}"
    return (
        f"| {o.name} | {weights} | {o.requests} | {len(o.visible_429)} | {ratio} | {o.sim_429} "
        f"| {o.served['key1']} / {o.served['key2']} | {o.share_key1:.0%} "
        f"| {o.deviation:.0%} | {o.floor} | {o.failed} |"
    )


async def main_async(minutes: float, rate: float, window_s: float, seed: int) -> str:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.getLogger("livekit.agents").setLevel(logging.WARNING)
    logging.getLogger("livekit.agents").propagate = False
    times = arrivals(rate, window_s, minutes, seed)
    runs = [
        ("stock LiveKit FallbackAdapter", True, (1.0, 1.0), True),
        ("ours (pool, weights + headroom)", False, (1.0, 1.0), True),
        ("ours, weights only (headroom off)", False, (4.0, 1.0), False),
        ("ours (pool, weights + headroom)", False, (4.0, 1.0), True),
    ]
    outcomes: list[Outcome] = []
    for name, stock, weights, headroom in runs:
        outcome = await run(
            name, stock=stock, weights=weights, times=times, window_s=window_s, headroom=headroom
        )
        outcomes.append(outcome)
        print(_row(outcome, len(outcomes[0].visible_429)), flush=True)
    stock_visible = len(outcomes[0].visible_429)
    load = os.getloadavg()
    lines = [
        "# Balancing benchmark: two keys of one provider, stock LiveKit vs our pool",
        "",
        f"Compressed time: the simulator's rate-limit window and the traffic's minute are "
        f"{window_s:g} s (not 60 s). Each key: {LIMIT_PER_MINUTE} requests per minute (OpenAI's "
        "refilling bucket, reported in x-ratelimit-* headers). Traffic: "
        f"{rate:g} requests in every minute, each at a random moment of it (seed {seed}), "
        f"{minutes:g} minutes, "
        "the same arrival times for every row; each request a streamed chat completion through "
        "the real LiveKit openai.LLM on the OpenAI simulator, the local scripted LLM as the "
        "floor. Stock: llm.FallbackAdapter([openai.LLM(key 1), openai.LLM(key 2), floor]), "
        "a strict priority list. Ours: OPENAI_API_KEY=key1,key2, one tier balanced by weight "
        "and headroom.",
        "",
        "| chain | weights | requests | caller-visible 429 failovers | vs stock | 429s sent "
        "(incl. replays, probes) | answered by key 1 / key 2 | key 1 share | off weights by | "
        "served by floor | failed |",
        "|" + "---|" * 11,
        *(_row(o, stock_visible) for o in outcomes),
        "",
        "Caller-visible 429 failover: a caller's request that met a 429 before another member "
        'served it (stock: LiveKit\'s own "failed, switching to next LLM" line, not its '
        'background "recovery" replays; ours: our guards\' rate-limit failures within a '
        "caller's request). Answered per key: every 200 the key gave, replays included. Off "
        "weights by: |key 1's share - its weight's share| / its weight's share (goal: within "
        "10 %). Weights 4:1 ask key 1 for 80 requests a minute, more than its 60: with "
        "headroom the pool passes key 1 over while it is near its limit instead of meeting its "
        "429s, so the split leaves the weights by design.",
        "",
        f"Load average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores, "
        "shared with other work). Run: "
        f"{sum(o.elapsed_s for o in outcomes):.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=6.0, help="simulated minutes per row")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per minute")
    parser.add_argument("--window", type=float, default=6.0, help="seconds per simulated minute")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.window <= 0:
        parser.error("--minutes, --rate and --window must be > 0")
    report = asyncio.run(main_async(args.minutes, args.rate, args.window, args.seed))
    publish(report, RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
