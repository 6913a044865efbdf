"""Classification of the exceptions the real plugins raise against each provider's simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from livekit.agents import utils

from plugins.catalog import definition_for
from plugins.providers.definition import BuildContext
from plugins.resilience.deadlines import DEFAULT_DEADLINES, AdaptiveDeadline
from plugins.resilience.failures import ClassifiedError
from plugins.resilience.guard import Guard
from plugins.resilience.guard_llm import GuardedLLM
from plugins.resilience.guard_tts import GuardedTTS
from plugins.resilience.phrases import vocabulary
from plugins.resilience.response_tap import ResponseTap
from plugins.resilience.store import DocumentStore
from plugins.resilience.types import FailureKind
from plugins.sim.elevenlabs_sim import ElevenLabsSimulator
from plugins.sim.faults import Fault, FaultType
from plugins.sim.gemini_sim import GeminiSimulator
from plugins.sim.http_common import HttpSimulator
from plugins.sim.openai_sim import OpenAISimulator
from plugins.spec import ProviderSpec
from tests.guard_fixtures import RecordingObserver, ask, clock, store, synthesize

__all__ = ["clock", "store"]

K = FailureKind

Case = tuple[str, Callable[[], HttpSimulator], str, Fault | None, str, FailureKind, float | None]

CASES: list[Case] = [
    ("gemini 429 RetryInfo", GeminiSimulator, "llm:google", Fault(FaultType.STATUS, status=429, retry_after_s=20), "sim-key", K.RATE_LIMITED, 20.0),
    ("gemini daily quota", GeminiSimulator, "llm:google", Fault(FaultType.QUOTA), "sim-key", K.QUOTA_EXHAUSTED, None),
    ("gemini 503", GeminiSimulator, "llm:google", Fault(FaultType.STATUS, status=503), "sim-key", K.SERVER_ERROR, None),
    ("gemini bad key", GeminiSimulator, "llm:google", None, "bad-key", K.KEY_REJECTED, None),
    ("openrouter 402 credits", lambda: OpenAISimulator(flavor="openrouter"), "llm:openrouter", Fault(FaultType.QUOTA), "sim-key", K.QUOTA_EXHAUSTED, None),
    ("openrouter error in a 200 stream", lambda: OpenAISimulator(flavor="openrouter"), "llm:openrouter", Fault(FaultType.IN_BAND_ERROR), "sim-key", K.IN_BAND_ERROR, None),
    ("openai 429 Retry-After", OpenAISimulator, "llm:openai", Fault(FaultType.STATUS, status=429, retry_after_s=12), "sim-key", K.RATE_LIMITED, None),
    ("openai empty reply", OpenAISimulator, "llm:openai", Fault(FaultType.EMPTY), "sim-key", K.EMPTY_RESULT, None),
    ("openai reset", OpenAISimulator, "llm:openai", Fault(FaultType.RESET), "sim-key", K.CONNECTION_ERROR, None),
    ("elevenlabs quota", ElevenLabsSimulator, "tts:elevenlabs", Fault(FaultType.QUOTA), "sim-key", K.QUOTA_EXHAUSTED, None),
    ("elevenlabs bad key", ElevenLabsSimulator, "tts:elevenlabs", None, "bad-key", K.KEY_REJECTED, None),
    ("elevenlabs silent audio", ElevenLabsSimulator, "tts:elevenlabs", Fault(FaultType.SILENT), "sim-key", K.EMPTY_RESULT, None),
]  # fmt: skip


@pytest.fixture(scope="module")
def warm_voice() -> None:
    from plugins.local.hibari_tts import HibariEngine

    HibariEngine.shared().synthesize("warm up")  # the TTS simulators speak with it


@pytest.fixture
async def http(warm_voice: None) -> AsyncIterator[None]:
    async with utils.http_context.open():
        yield


@pytest.mark.parametrize(
    ("name", "make_sim", "key", "fault", "api_key", "kind", "retry_after"),
    CASES,
    ids=[c[0] for c in CASES],
)
async def test_real_plugin_errors_are_classified(
    http: None,
    store: DocumentStore,
    name: str,
    make_sim: Callable[[], HttpSimulator],
    key: str,
    fault: Fault | None,
    api_key: str,
    kind: FailureKind,
    retry_after: float | None,
) -> None:
    async with make_sim() as sim:
        if fault is not None:
            sim.state.plan.always(fault)
        slot, provider = key.split(":")
        spec = ProviderSpec(slot, provider, base_url=sim.base_url, api_key=api_key)  # type: ignore[arg-type]
        entry = definition_for(spec)
        import aiohttp

        tap = ResponseTap()
        session = aiohttp.ClientSession(trace_configs=[tap.aiohttp_trace()])
        plugin: Any = entry.build(spec, BuildContext(http_session=session))
        observer = RecordingObserver()
        guard = Guard(
            key,
            store,
            deadline=AdaptiveDeadline(DEFAULT_DEADLINES[spec.slot]),
            observers=[observer],
            secrets=[api_key],
            tap=tap,
            words=vocabulary(entry.errors),
        )
        guarded: Any = GuardedLLM(plugin, guard) if slot == "llm" else GuardedTTS(plugin, guard)
        with pytest.raises(ClassifiedError) as raised:
            if slot == "llm":
                await ask(guarded, "Hello, what do you sell?")
            else:
                await synthesize(guarded, "Hello, thanks for calling.")
        await guard.drain()
        failure = raised.value.failure
        assert failure.kind is kind, f"{name}: {failure}"
        assert observer.kinds(key) == [kind.value]
        if retry_after is not None:
            assert failure.retry_after_s == pytest.approx(retry_after)
        assert api_key not in failure.message or api_key == "sim-key"
        await guarded.aclose()
        await session.close()
