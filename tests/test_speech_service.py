"""The worker's shared local speech service: one copy of each model, served fairly, survivable.

A real service process is started by the real supervisor; job processes are real processes that
reach it through the socket path the supervisor exports; the service is killed with a real
SIGKILL while it is recognising a caller, and the call's chain must still answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from plugins.chain import build_chains
from plugins.local.hibari_tts import HibariEngine
from plugins.local.speech_client import SOCKET_ENV, SpeechClient, service_client
from plugins.local.speech_service import FairQueue
from plugins.local.speech_supervisor import SpeechServiceSupervisor
from plugins.resilience.store import open_store
from plugins.sim.telephone import PHONE_RATE, phone_channel
from plugins.spec import ProviderSpec

REPO = Path(__file__).resolve().parents[1]
READY_S = 120.0  # the service loads Whisper and hibari; slow only on a loaded machine


def test_fair_queue_takes_clients_in_turn_and_refuses_a_flood() -> None:
    queue: FairQueue[str] = FairQueue(max_pending=3)
    for n in range(3):
        assert queue.put("busy-call", f"busy-{n}")
    assert not queue.put("busy-call", "busy-3")  # refused at once: its chain falls back
    assert queue.put("quiet-call", "quiet-0")
    order = [queue.get(0) for _ in range(4)]
    assert order == ["busy-0", "quiet-0", "busy-1", "busy-2"]
    assert queue.get(0.01) is None
    queue.close()
    assert queue.get(None) is None


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpeechServiceSupervisor]:
    sock = str(tmp_path_factory.mktemp("speech") / "speech.sock")
    supervisor = SpeechServiceSupervisor(sock, backoff_s=0.1)
    supervisor.start()
    try:
        assert supervisor.wait_ready(READY_S), "the speech service did not start"
        yield supervisor
    finally:
        supervisor.stop()
        assert SOCKET_ENV not in os.environ


@pytest.fixture(scope="module")
def caller_audio() -> np.ndarray:
    voice = HibariEngine.shared()
    text = "Could we book a call for Tuesday afternoon? I am free after two."
    return phone_channel(voice.synthesize(text), voice.sample_rate)


_JOB = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from plugins.local.speech_client import service_client
    from plugins.local.hibari_tts import HibariTTS
    client = service_client()
    pcm = np.load(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()  # both jobs are loaded: the test lets them call together
    started = time.time()
    text = client.transcribe(pcm, 8000, timeout_s=60)
    audio = client.synthesize("Thanks, talk soon.", timeout_s=60)
    print(json.dumps({
        "pid": client.client_id, "text": text, "audio": int(audio.size),
        "started": started, "ended": time.time(),
        "weights_here": sorted(m for m in ("faster_whisper", "ctranslate2", "hibari", "onnxruntime")
                               if m in sys.modules),
    }))
    """
)


def test_one_service_serves_two_job_processes_at_once(
    service: SpeechServiceSupervisor, caller_audio: np.ndarray, tmp_path: Path
) -> None:
    audio_path = tmp_path / "caller.npy"
    np.save(audio_path, caller_audio)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", _JOB, str(audio_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
            text=True,
        )
        for _ in range(2)
    ]
    for job in jobs:  # a job that imports faster must not finish before the other has begun
        assert job.stdout is not None and job.stdout.readline().strip() == "ready"
    for job in jobs:
        assert job.stdin is not None
        job.stdin.write("go\n")
        job.stdin.flush()
    results = [json.loads(job.communicate(timeout=120)[0].splitlines()[-1]) for job in jobs]
    for result in results:
        assert "tuesday" in result["text"].lower(), result
        assert result["audio"] > 10_000
        assert result["weights_here"] == [], "a job process loaded model code"
    # the scenario held (the barrier above): both calls were in the service together; that it
    # takes a request while another runs is test_a_withdrawn_request_is_dropped_unrun's probe
    first, second = sorted(results, key=lambda r: r["started"])
    assert second["started"] < first["ended"], "the two calls did not overlap"
    served = SpeechClient(service.socket_path).ping()["served"]
    assert {r["pid"] for r in results} <= set(served)
    assert all(served[r["pid"]] == 2 for r in results)


def test_a_withdrawn_request_is_dropped_unrun(
    service: SpeechServiceSupervisor, caller_audio: np.ndarray
) -> None:
    """A speculation the caller spoke over is withdrawn (its socket shut down): if the service
    has not started it, it never runs, and the next request is not kept waiting for it."""
    import socket
    import threading

    busy, withdrawn = (
        SpeechClient(service.socket_path, client_id="busy"),
        SpeechClient(service.socket_path, client_id="speculating"),
    )
    probe = SpeechClient(service.socket_path, client_id="probe")
    before = probe.ping()["withdrawn"]
    long_call = np.tile(caller_audio, 4)  # keeps the one Whisper thread busy for a while
    first = threading.Thread(
        target=busy.transcribe, args=(long_call, PHONE_RATE), kwargs={"timeout_s": 60.0}
    )
    first.start()
    assert _until(lambda: probe.ping()["running"]["transcribe"] == 1), "nothing ran"
    sockets: list[socket.socket] = []
    errors: list[Exception] = []

    def speculate() -> None:
        try:
            withdrawn.transcribe(
                caller_audio, PHONE_RATE, timeout_s=60.0, on_connect=sockets.append
            )
        except Exception as e:
            errors.append(e)

    second = threading.Thread(target=speculate)
    second.start()
    assert _until(lambda: probe.ping()["queued"]["transcribe"] == 1), "it was not queued"
    sockets[0].shutdown(socket.SHUT_RDWR)  # the caller spoke again: withdraw it
    second.join(10)
    first.join(60)
    state = probe.ping()
    assert state["withdrawn"] == before + 1
    assert "speculating" not in state["served"]
    assert errors, "the withdrawn request did not end for its caller"


def _until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)  # polling the service's own state, bounded by the deadline
    return False


async def test_sigkill_mid_call_leaves_the_caller_answered(
    service: SpeechServiceSupervisor, caller_audio: np.ndarray, tmp_path: Path
) -> None:
    from livekit.plugins import silero

    assert service_client() is not None  # this process is a job process of the service
    specs = [
        ProviderSpec("stt", "local-stt"),
        ProviderSpec("stt", "free-stt"),
        ProviderSpec("tts", "local-tts"),
        ProviderSpec("tts", "free-tts"),
    ]
    chains = build_chains(specs, open_store(None, tmp_path), vad=silero.VAD.load(), probes=False)
    try:
        before, generation = service.pid, service.generation
        assert before is not None
        long_turn = np.tile(caller_audio, 3)  # several seconds for Whisper to chew on
        frame = rtc.AudioFrame(long_turn.tobytes(), PHONE_RATE, 1, long_turn.size)
        turn = asyncio.create_task(chains.stt.recognize([frame]))
        client = SpeechClient(service.socket_path, client_id="test-observer")
        deadline = time.monotonic() + 30
        while client.ping()["running"].get("transcribe", 0) == 0:
            assert time.monotonic() < deadline, "the caller's turn never reached the service"
            await asyncio.sleep(0.01)
        os.kill(before, signal.SIGKILL)  # the service dies while recognising the caller

        heard = await asyncio.wait_for(turn, 60)
        assert heard.alternatives and heard.alternatives[0].text.strip(), "caller not understood"

        reply = b""  # the agent's answer while the service is down: the in-process floor
        async for chunk in chains.tts.synthesize("Sure, Tuesday at three works."):
            reply += chunk.frame.data.tobytes()
        assert len(reply) > 10_000

        assert await asyncio.to_thread(service.wait_ready, READY_S, newer_than=generation)
        assert service.pid not in (None, before) and service.restarts >= 1
    finally:
        await chains.aclose()
