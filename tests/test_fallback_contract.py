"""LiveKit's fallback-adapter contract, run against LiveKit's stock adapters and ours.

Every check runs twice: on ``livekit.agents.{llm,stt,tts}.FallbackAdapter`` ("stock") and on
``plugins.fallback``'s drop-in subclasses ("ours"), built with the same arguments over the
same members (:mod:`tests.fallback_fakes`). A check stock LiveKit itself does not pass is
listed in ``STOCK_FAILS`` and expected to fail there (strictly: if LiveKit starts passing it,
the list is wrong). ``pytest tests/test_fallback_contract.py -v`` shows the score of each.

The members are not guarded here: what LiveKit does for any plugin is what is checked,
including its background recovery. What ours add for guarded members is in
``tests/test_fallback_adapters.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from livekit.agents import APIConnectionError, llm, stt, tts
from livekit.agents.metrics import LLMMetrics
from livekit.agents.types import USERDATA_TTS_STARTED_TIME

from plugins.fallback import LLMFallbackAdapter, STTFallbackAdapter, TTSFallbackAdapter
from tests.fallback_fakes import FakeLLM, FakeSTT, FakeTTS, speech

KINDS = ("stock", "ours")
LIMIT_S = 5.0

#: LiveKit contract checks stock LiveKit fails itself (none known for 1.8.9).
STOCK_FAILS: set[str] = set()


def _llm(kind: str, members: list[Any], **kw: Any) -> llm.FallbackAdapter:
    cls = llm.FallbackAdapter if kind == "stock" else LLMFallbackAdapter
    return cls(members, **kw)


def _stt(kind: str, members: list[Any], **kw: Any) -> stt.FallbackAdapter:
    cls = stt.FallbackAdapter if kind == "stock" else STTFallbackAdapter
    return cls(members, **kw)


def _tts(kind: str, members: list[Any], **kw: Any) -> tts.FallbackAdapter:
    cls = tts.FallbackAdapter if kind == "stock" else TTSFallbackAdapter
    return cls(members, **kw)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    check = request.node.originalname
    if request.param == "stock" and check in STOCK_FAILS:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason="stock LiveKit fails it"))
    return str(request.param)


class Events:
    """Availability events of one adapter, awaitable."""

    def __init__(self, adapter: Any, slot: str) -> None:
        self.seen: list[tuple[Any, bool]] = []
        self._changed = asyncio.Event()
        adapter.on(f"{slot}_availability_changed", self._on)
        self._slot = slot

    def _on(self, ev: Any) -> None:
        self.seen.append((getattr(ev, self._slot), ev.available))
        self._changed.set()

    async def wait_for(self, member: Any, available: bool) -> None:
        async def until() -> None:
            while (member, available) not in self.seen:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), LIMIT_S)


async def ask(adapter: llm.LLM[Any]) -> str:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="hi")
    out: list[str] = []
    async with adapter.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                out.append(chunk.delta.content)
    return "".join(out)


async def synthesize(adapter: tts.TTS[Any], text: str) -> list[tts.SynthesizedAudio]:
    async with adapter.synthesize(text) as stream:
        return [audio async for audio in stream]


async def stream_tts(adapter: tts.TTS[Any], text: str) -> list[tts.SynthesizedAudio]:
    async with adapter.stream() as stream:
        for word in text.split(" "):
            stream.push_text(word + " ")
        stream.end_input()
        return [audio async for audio in stream]


async def recognize_stream(adapter: stt.STT[Any], seconds: float = 0.6) -> list[str]:
    """The audio arrives as on a call, a little at a time (LiveKit's next member hears what
    comes after the switch)."""
    texts: list[str] = []
    async with adapter.stream() as stream:
        await push_live(stream, seconds)
        with contextlib.suppress(RuntimeError):
            stream.end_input()
        async for ev in stream:
            if ev.type is stt.SpeechEventType.FINAL_TRANSCRIPT:
                texts.append(ev.alternatives[0].text)
    return texts


async def push_live(stream: stt.RecognizeStream, seconds: float) -> None:
    """Stops when the stream has ended (every member failed: the error comes out of it)."""
    with contextlib.suppress(RuntimeError):
        for frame in speech(seconds):
            stream.push_frame(frame)
            await asyncio.sleep(0.002)


async def raises_connection_error(run: Callable[[], Awaitable[object]]) -> None:
    with pytest.raises(APIConnectionError):
        await asyncio.wait_for(run(), LIMIT_S)


# -- LLM ------------------------------------------------------------------------------------
async def test_llm_model_and_provider_name_the_member_serving_after_a_switch(kind: str) -> None:
    a, b = FakeLLM("a", down=True), FakeLLM("b")
    adapter = _llm(kind, [a, b])
    assert (adapter.model, adapter.provider) == ("a-model", "a-provider")
    assert "Hello" in await ask(adapter)
    assert (adapter.model, adapter.provider) == ("b-model", "b-provider")
    await adapter.aclose()


async def test_llm_metrics_metadata_is_the_member_that_served(kind: str) -> None:
    a, b = FakeLLM("a", down=True), FakeLLM("b")
    adapter = _llm(kind, [a, b])
    await ask(adapter)
    assert adapter.metrics_metadata == {"model_name": "b-model", "model_provider": "b-provider"}
    await adapter.aclose()


async def test_llm_forwards_the_serving_members_metrics(kind: str) -> None:
    a, b = FakeLLM("a", down=True), FakeLLM("b")
    adapter = _llm(kind, [a, b])
    metrics: list[LLMMetrics] = []
    adapter.on("metrics_collected", metrics.append)
    await ask(adapter)
    await asyncio.sleep(0)
    assert [m.label for m in metrics if isinstance(m, LLMMetrics)] == ["fake.b"]
    await adapter.aclose()


async def test_llm_announces_a_failed_member_once(kind: str) -> None:
    a, b = FakeLLM("a", down=True), FakeLLM("b")
    adapter = _llm(kind, [a, b])
    events = Events(adapter, "llm")
    await ask(adapter)
    await ask(adapter)
    assert events.seen == [(a, False)]
    await adapter.aclose()


async def test_llm_every_member_failed_is_an_api_connection_error(kind: str) -> None:
    adapter = _llm(kind, [FakeLLM("a", down=True), FakeLLM("b", down=True)])
    await raises_connection_error(lambda: ask(adapter))
    await adapter.aclose()


async def test_llm_unguarded_member_recovers_in_the_background(kind: str) -> None:
    a, b = FakeLLM("a", down=True), FakeLLM("b")
    adapter = _llm(kind, [a, b])
    events = Events(adapter, "llm")
    await ask(adapter)
    a.health.down = False
    await ask(adapter)  # served by b; a is retried in the background with this request
    await events.wait_for(a, True)
    assert adapter.model == "a-model"
    await ask(adapter)
    assert adapter.metrics_metadata["model_name"] == "a-model"
    await adapter.aclose()


async def test_llm_attempt_options_reach_the_member(kind: str) -> None:
    a = FakeLLM("a")
    adapter = _llm(kind, [a], attempt_timeout=1.5, max_retry_per_llm=2, retry_interval=0.25)
    await ask(adapter)
    options = a.calls[0]
    assert (options.timeout, options.max_retry, options.retry_interval) == (1.5, 2, 0.25)
    await adapter.aclose()


# -- STT ------------------------------------------------------------------------------------
async def test_stt_stream_names_the_member_serving_after_a_switch(kind: str) -> None:
    a, b = FakeSTT("a", down=True), FakeSTT("b")
    adapter = _stt(kind, [a, b], max_retry_per_stt=0)
    assert "heard by b" in await recognize_stream(adapter)
    assert (adapter.model, adapter.provider) == ("b-model", "b-provider")
    assert adapter.metrics_metadata["model_name"] == "b-model"
    await adapter.aclose()


async def test_stt_stream_announces_a_failed_member(kind: str) -> None:
    a, b = FakeSTT("a", down=True), FakeSTT("b")
    adapter = _stt(kind, [a, b], max_retry_per_stt=0)
    events = Events(adapter, "stt")
    await recognize_stream(adapter)
    assert (a, False) in events.seen
    await adapter.aclose()


async def test_stt_stream_every_member_failed_is_an_api_connection_error(kind: str) -> None:
    adapter = _stt(kind, [FakeSTT("a", down=True), FakeSTT("b", down=True)], max_retry_per_stt=0)
    await raises_connection_error(lambda: recognize_stream(adapter))
    await adapter.aclose()


async def test_stt_recognize_switches_and_names_the_member(kind: str) -> None:
    a, b = FakeSTT("a", down=True), FakeSTT("b")
    adapter = _stt(kind, [a, b], max_retry_per_stt=0)
    from livekit.agents.utils import merge_frames

    event = await adapter.recognize(merge_frames(speech(0.3)))
    assert event.alternatives[0].text == "heard by b"
    assert adapter.metrics_metadata["model_name"] == "b-model"
    await adapter.aclose()


async def test_stt_recognize_every_member_failed_is_an_api_connection_error(kind: str) -> None:
    from livekit.agents.utils import merge_frames

    adapter = _stt(kind, [FakeSTT("a", down=True), FakeSTT("b", down=True)], max_retry_per_stt=0)
    await raises_connection_error(lambda: adapter.recognize(merge_frames(speech(0.3))))
    await adapter.aclose()


async def test_stt_unguarded_member_recovers_on_live_audio(kind: str) -> None:
    a, b = FakeSTT("a", down=True), FakeSTT("b")
    adapter = _stt(kind, [a, b], max_retry_per_stt=0)
    events = Events(adapter, "stt")
    await recognize_stream(adapter)
    a.health.down = False
    async with adapter.stream() as stream:  # b serves; a's recovery stream hears the audio
        await push_live(stream, 1.0)
        await events.wait_for(a, True)
        stream.end_input()
    assert adapter.model == "a-model"
    await adapter.aclose()


# -- TTS ------------------------------------------------------------------------------------
async def test_tts_model_and_provider_name_the_member_serving_after_a_switch(kind: str) -> None:
    a, b = FakeTTS("a", down=True), FakeTTS("b")
    adapter = _tts(kind, [a, b], max_retry_per_tts=0)
    assert await synthesize(adapter, "Hello there.")
    assert (adapter.model, adapter.provider) == ("b-model", "b-provider")
    await adapter.aclose()


async def test_tts_metrics_metadata_is_the_member_that_served(kind: str) -> None:
    a, b = FakeTTS("a", down=True), FakeTTS("b")
    adapter = _tts(kind, [a, b], max_retry_per_tts=0)
    await stream_tts(adapter, "Hello there.")
    assert adapter.metrics_metadata == {"model_name": "b-model", "model_provider": "b-provider"}
    await adapter.aclose()


async def test_tts_announces_a_failed_member_once(kind: str) -> None:
    a, b = FakeTTS("a", down=True), FakeTTS("b")
    adapter = _tts(kind, [a, b], max_retry_per_tts=0)
    events = Events(adapter, "tts")
    await synthesize(adapter, "Hello there.")
    await synthesize(adapter, "Hello again.")
    assert events.seen.count((a, False)) == 1
    await adapter.aclose()


async def test_tts_synthesize_every_member_failed_is_an_api_connection_error(kind: str) -> None:
    adapter = _tts(kind, [FakeTTS("a", down=True), FakeTTS("b", down=True)], max_retry_per_tts=0)
    await raises_connection_error(lambda: synthesize(adapter, "Hello there."))
    await adapter.aclose()


async def test_tts_stream_every_member_failed_is_an_api_connection_error(kind: str) -> None:
    adapter = _tts(kind, [FakeTTS("a", down=True), FakeTTS("b", down=True)], max_retry_per_tts=0)
    await raises_connection_error(lambda: stream_tts(adapter, "Hello there."))
    await adapter.aclose()


async def test_tts_unguarded_member_recovers_from_synthesize(kind: str) -> None:
    a, b = FakeTTS("a", down=True), FakeTTS("b")
    adapter = _tts(kind, [a, b], max_retry_per_tts=0)
    events = Events(adapter, "tts")
    await synthesize(adapter, "Hello there.")
    a.health.down = False
    await synthesize(adapter, "Hello again.")  # b serves; a is replayed to in the background
    await events.wait_for(a, True)
    assert adapter.model == "a-model"
    await adapter.aclose()


async def test_tts_unguarded_member_recovers_from_a_stream(kind: str) -> None:
    a, b = FakeTTS("a", down=True), FakeTTS("b")
    adapter = _tts(kind, [a, b], max_retry_per_tts=0)
    events = Events(adapter, "tts")
    await stream_tts(adapter, "Hello there.")
    a.health.down = False
    await stream_tts(adapter, "Hello again.")
    await events.wait_for(a, True)
    assert adapter.provider == "a-provider"
    await adapter.aclose()


async def test_tts_time_to_first_byte_includes_the_failover(kind: str) -> None:
    a, b = FakeTTS("a", down=True, delay_s=0.3), FakeTTS("b")
    adapter = _tts(kind, [a, b], max_retry_per_tts=0)
    asked = time.perf_counter()
    frames = await stream_tts(adapter, "Hello there.")
    started = frames[0].frame.userdata.get(USERDATA_TTS_STARTED_TIME)
    assert started is not None, "frames carry no start time"
    first_byte = time.perf_counter() - started
    assert started - asked < 0.25  # the text reached the first member, not the second
    assert first_byte >= 0.3  # the failed member's time counts
    await adapter.aclose()


async def test_tts_audio_comes_at_the_adapters_sample_rate(kind: str) -> None:
    a, b = FakeTTS("a", down=True, sample_rate=24_000), FakeTTS("b", sample_rate=16_000)
    adapter = _tts(kind, [a, b], max_retry_per_tts=0)
    assert adapter.sample_rate == 24_000
    frames = await synthesize(adapter, "Hello there.")
    assert frames and {f.frame.sample_rate for f in frames} == {24_000}
    await adapter.aclose()


async def test_tts_streams_a_streaming_member_once_per_utterance(kind: str) -> None:
    a = FakeTTS("a")
    adapter = _tts(kind, [a], max_retry_per_tts=0)
    text = "Thanks for calling today. We install panels for homes. Would you like a visit?"
    assert await stream_tts(adapter, text)
    assert len(a.streams) == 1 and not a.synthesized
    assert "".join(a.streams[0]).split() == text.split()
    await adapter.aclose()
