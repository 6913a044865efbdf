"""Shared helpers for the guard and chain tests: a fake clock, a real store, an observer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from livekit.agents import llm, tts

from plugins.resilience.breaker import BreakerConfig
from plugins.resilience.store import DocumentStore, StoreConfig, open_store
from plugins.resilience.types import Admission, BreakerState, Failure, GuardObserver


class FakeClock:
    """Epoch-like clock the store and the probers share; tests move it by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingObserver(GuardObserver):
    attempts: list[tuple[str, bool]] = field(default_factory=list)
    successes: list[tuple[str, float | None]] = field(default_factory=list)
    failures: list[tuple[str, Failure, BreakerState]] = field(default_factory=list)
    skips: list[tuple[str, Admission]] = field(default_factory=list)
    usage: list[tuple[str, str, float]] = field(default_factory=list)
    costs: list[tuple[str, float]] = field(default_factory=list)

    def on_attempt(self, key: str, *, is_probe: bool) -> None:
        self.attempts.append((key, is_probe))

    def on_success(self, key: str, *, latency_s: float | None, is_probe: bool = False) -> None:
        self.successes.append((key, latency_s))

    def on_failure(self, key: str, failure: Failure, new_state: BreakerState) -> None:
        self.failures.append((key, failure, new_state))

    def on_skip(self, key: str, admission: Admission) -> None:
        self.skips.append((key, admission))

    def on_usage(self, key: str, unit: str, amount: float) -> None:
        self.usage.append((key, unit, amount))

    def on_cost(self, key: str, usd: float) -> None:
        self.costs.append((key, usd))

    def kinds(self, key: str) -> list[str]:
        return [f.kind.value for k, f, _ in self.failures if k == key]


def make_store(
    tmp_path: Path, clock: FakeClock, *, trip_after: int = 1, **breaker: Any
) -> DocumentStore:
    config = StoreConfig(
        breaker=BreakerConfig(consecutive_failures=trip_after, full_jitter=False, **breaker)
    )
    return open_store(None, tmp_path, config=config, clock=clock, jitter=lambda: 0.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[DocumentStore]:
    s = make_store(tmp_path, clock)
    yield s
    await s.aclose()


class ServedBy:
    """Which plugin answered: the label of the metrics the chain forwarded."""

    def __init__(self, adapter: tts.TTS[Any] | llm.LLM[Any]) -> None:
        self.labels: list[str] = []
        adapter.on("metrics_collected", self._on)

    def _on(self, metrics: Any) -> None:
        self.labels.append(str(getattr(metrics, "label", "")))

    def last(self) -> str:
        return self.labels[-1] if self.labels else ""


async def synthesize(adapter: tts.TTS[Any], text: str) -> bytes:
    audio = bytearray()
    async with adapter.synthesize(text) as stream:
        async for chunk in stream:
            audio += bytes(chunk.frame.data.cast("b"))
    return bytes(audio)


async def ask(adapter: llm.LLM[Any], text: str) -> str:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=text)
    out: list[str] = []
    async with adapter.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                out.append(chunk.delta.content)
    return "".join(out)
