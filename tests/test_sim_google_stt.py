"""The Google Speech gRPC simulator driven by the real LiveKit Google STT plugin.

The plugin has no endpoint option, so :class:`SimulatedGoogleSTT` overrides the one method
that builds its ``SpeechAsyncClient`` (``_create_client``); these tests pin that hook: if a
plugin upgrade renames it, the happy-path tests fail instead of silently calling Google.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError, stt
from livekit.plugins import google

from plugins.sim.faults import Fault, FaultType
from plugins.sim.google_stt_sim import GoogleSttSimulator, SimulatedGoogleSTT
from plugins.sim.tts_audio import Pcm, speak

RATE = 16000
FRAME = 320  # 20 ms
CONN = APIConnectOptions(max_retry=0, timeout=2.0)


@pytest.fixture(scope="module")
def utterance() -> Pcm:
    """Real speech (the local neural voice) with silence around it, whole 20 ms frames."""
    pcm = speak("Hello there, this is a test.", RATE)
    audio = np.concatenate([np.zeros(RATE // 4, np.int16), pcm, np.zeros(RATE, np.int16)])
    return audio[: audio.size // FRAME * FRAME]


@pytest.fixture
async def sim() -> AsyncIterator[GoogleSttSimulator]:
    async with GoogleSttSimulator() as s:
        yield s


async def _stream(
    sim: GoogleSttSimulator,
    audio: Pcm | None,
    model: str = "latest_long",
    deadline_s: float = 10.0,
    events: list[stt.SpeechEvent] | None = None,
) -> list[stt.SpeechEvent]:
    """Stream ``audio`` (None: no audio at all, only the config) and collect the events."""
    plugin = SimulatedGoogleSTT(sim.grpc_target, model=model, enable_voice_activity_events=True)
    assert isinstance(plugin, google.STT)
    stream = plugin.stream(conn_options=CONN)
    for i in range(0, 0 if audio is None else audio.size, FRAME):
        assert audio is not None
        stream.push_frame(rtc.AudioFrame(audio[i : i + FRAME].tobytes(), RATE, 1, FRAME))
    stream.end_input()
    events = [] if events is None else events

    async def consume() -> None:
        async for ev in stream:
            events.append(ev)

    try:
        await asyncio.wait_for(consume(), deadline_s)
    finally:
        await stream.aclose()
        await plugin.aclose()
    return events


def _kinds(events: list[stt.SpeechEvent]) -> list[str]:
    return [e.type.name for e in events if e.type is not stt.SpeechEventType.RECOGNITION_USAGE]


def _final_text(events: list[stt.SpeechEvent]) -> str:
    return " ".join(
        e.alternatives[0].text
        for e in events
        if e.type is stt.SpeechEventType.FINAL_TRANSCRIPT and e.alternatives
    )


@pytest.mark.parametrize(("model", "version"), [("latest_long", 1), ("chirp_3", 2)])
async def test_streaming_transcribes_real_speech(
    sim: GoogleSttSimulator, utterance: Pcm, model: str, version: int
) -> None:
    events = await _stream(sim, utterance, model)
    assert _kinds(events) == ["START_OF_SPEECH", "FINAL_TRANSCRIPT", "END_OF_SPEECH"]
    words = set(_final_text(events).split())
    assert {"hello", "there", "test"} <= words
    assert [a.route for a in sim.state.log.items()] == [f"gRPC v{version} StreamingRecognize"]
    if version == 1:  # latest_long asks for word offsets; they span the utterance
        final = next(e for e in events if e.type is stt.SpeechEventType.FINAL_TRANSCRIPT)
        timed = final.alternatives[0].words
        assert timed and timed[0].start_time < timed[-1].end_time


async def test_batch_recognize(sim: GoogleSttSimulator, utterance: Pcm) -> None:
    plugin = SimulatedGoogleSTT(sim.grpc_target)
    try:
        event = await plugin.recognize(
            [rtc.AudioFrame(utterance.tobytes(), RATE, 1, utterance.size)], conn_options=CONN
        )
    finally:
        await plugin.aclose()
    assert "hello" in event.alternatives[0].text.split()


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault(FaultType.STATUS, status=403), 403),
        (Fault(FaultType.STATUS, status=401), 401),
        (Fault(FaultType.QUOTA), 429),
        (Fault(FaultType.STATUS, status=503), 503),
        (Fault(FaultType.RESET), 503),
    ],
)
async def test_refusals_are_grpc_statuses(
    sim: GoogleSttSimulator, fault: Fault, status: int
) -> None:
    """Refused before any audio is uploaded, the status reaches the plugin intact.

    (While audio is still being uploaded, grpcio's client reports a server-ended call as
    INTERNAL "Internal error from Core" whatever the server's status: see the mid-stream test.)
    """
    sim.state.plan.once(fault)
    with pytest.raises(APIStatusError) as err:
        await _stream(sim, None)
    assert err.value.status_code == status


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultType.IN_BAND_ERROR, status=503, after_chunks=1),
        Fault(FaultType.CUT, after_chunks=1),
    ],
)
async def test_mid_stream_errors_after_speech_began(
    sim: GoogleSttSimulator, utterance: Pcm, fault: Fault
) -> None:
    sim.state.plan.once(fault)
    events: list[stt.SpeechEvent] = []
    with pytest.raises(APIStatusError) as err:
        await _stream(sim, utterance, events=events)
    assert _kinds(events) == ["START_OF_SPEECH"]
    # 503 as sent, or 500 when grpcio reports the call ended under an upload in progress
    assert err.value.status_code in (503, 500)


async def test_malformed_frame_mid_stream(sim: GoogleSttSimulator, utterance: Pcm) -> None:
    sim.state.plan.once(Fault(FaultType.MALFORMED, after_chunks=1))
    events: list[stt.SpeechEvent] = []
    with pytest.raises(APIConnectionError):
        await _stream(sim, utterance, events=events)
    assert _kinds(events) == ["START_OF_SPEECH"]


async def test_empty_result_has_speech_events_but_no_transcript(
    sim: GoogleSttSimulator, utterance: Pcm
) -> None:
    sim.state.plan.once(Fault(FaultType.EMPTY))
    events = await _stream(sim, utterance)
    assert _kinds(events) == ["START_OF_SPEECH", "END_OF_SPEECH"]


async def test_stall_is_not_caught_by_the_plugin(sim: GoogleSttSimulator, utterance: Pcm) -> None:
    """The plugin has no read deadline on a stream: only a guard's stall deadline ends it."""
    sim.state.plan.once(Fault(FaultType.STALL, after_chunks=1))
    with pytest.raises(TimeoutError):
        await _stream(sim, utterance, deadline_s=1.0)
    assert sim.state.log.items()[0].fault == "stall"


async def test_quota_counts_audio_seconds(sim: GoogleSttSimulator, utterance: Pcm) -> None:
    """A stream's seconds are known only as they arrive, so they are billed when the next
    stream opens (plugins.sim.fault_schedule): the stream after the one that crossed the
    limit is still let in, the one after that is refused."""
    sim.state.plan.quota_after(1.0)
    for _ in range(2):
        assert _final_text(await _stream(sim, utterance))
    with pytest.raises(APIStatusError) as err:
        await _stream(sim, None)
    assert err.value.status_code == 429
    assert [a.fault for a in sim.state.log.items()] == [None, None, "quota"]
