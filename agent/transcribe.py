"""``python -m agent transcribe [--provider NAME] FILE.wav...``: a recogniser, as a call uses it.

Prints ``FILE<TAB>transcript`` per file. The provider is built by the same chain builder as a
call (settings, key, guard with its breaker and deadlines, the health store), so a key that is
rejected or a provider that is down shows here exactly as it would in a call; the operator's way
to check a recogniser, and the way ``bench.stt_accuracy`` measures accuracy. Without
``--provider`` it uses the first usable provider of the configured STT chain.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectOptions, stt

from agent.settings import Settings
from plugins.local.audio import Int16Array

#: A whole file is one utterance for batch recognition: split longer recordings first.
MAX_FILE_S = 300.0


class WavError(ValueError):
    """The file cannot be read as PCM speech; the message says how to convert it."""


def read_wav(path: Path) -> tuple[Int16Array, int]:
    """Mono int16 samples and the rate of a PCM WAV (8/16-bit, any channels, any rate)."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise WavError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as e:
        raise WavError(
            f"{path}: not a PCM WAV file ({e or 'no RIFF/WAVE header'}); convert it, e.g. "
            "`ffmpeg -i IN -ac 1 -ar 16000 -c:a pcm_s16le OUT.wav`"
        ) from None
    if width == 2:
        data = np.frombuffer(frames, dtype="<i2").astype(np.int16)
    elif width == 1:
        data = ((np.frombuffer(frames, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(
            np.int16
        )
    else:
        raise WavError(f"{path}: {8 * width}-bit samples; give 16-bit PCM (pcm_s16le)")
    if channels > 1:
        data = data[: data.size - data.size % channels].reshape(-1, channels)
        data = data.astype(np.int32).mean(axis=1).astype(np.int16)
    if data.size == 0:
        raise WavError(f"{path}: the file holds no audio")
    if data.size / rate > MAX_FILE_S:
        raise WavError(f"{path}: {data.size / rate:.0f} s is longer than {MAX_FILE_S:.0f} s")
    return data, rate


@dataclass
class Recogniser:
    """One provider built as a call builds it; ``aclose`` when done."""

    name: str
    plugin: stt.STT[Any]
    closers: list[Any]

    async def transcribe(self, pcm: Int16Array, sample_rate: int) -> str:
        frame = rtc.AudioFrame(pcm.tobytes(), sample_rate, 1, pcm.size)
        # one attempt, as the chain makes it: a failure is reported, not retried behind a sleep
        event = await self.plugin.recognize([frame], conn_options=APIConnectOptions(max_retry=0))
        return event.alternatives[0].text.strip() if event.alternatives else ""

    async def aclose(self) -> None:
        for close in self.closers:
            await close()


def _first_usable(settings: Settings) -> str:
    from plugins.catalog import CATALOG, definition_for

    for spec in settings.provider_specs("stt"):
        if definition_for(spec).has_key(spec):
            return spec.name
    return CATALOG.floor("stt")


async def open_recogniser(settings: Settings, provider: str | None) -> Recogniser:
    """The named STT provider (guarded unless it is the floor), through the chain builder."""
    from livekit.plugins import silero

    from agent.call import call_specs, deadline_settings, open_health_store
    from agent.local_speech import with_domain_vocabulary
    from plugins.catalog import CATALOG, definition_for
    from plugins.chain import build_chains
    from plugins.local.prewarm import prewarm_local_providers
    from plugins.local.whisper_stt import options_from
    from plugins.providers.definition import BuildContext

    name = provider or _first_usable(settings)
    if name not in CATALOG.known("stt"):
        raise ValueError(CATALOG.unknown("stt", name))
    only = settings.model_copy(
        update={"stt_providers": [name], "llm_providers": [], "tts_providers": []}
    )
    store = open_health_store(settings)
    chains = build_chains(
        [s for s in call_specs(only) if s.slot == "stt"],
        store,
        vad=silero.VAD.load(),
        deadlines=deadline_settings(settings),
        probes=False,
    )
    key = f"stt:{name}"
    # a call's process has its local model loaded before the call (prewarm): so does this one
    spec = with_domain_vocabulary(only.provider_specs("stt")[0])
    await asyncio.to_thread(
        prewarm_local_providers, [name], whisper=options_from(spec.extra, spec.model)
    )
    if key in chains.skipped:
        await chains.aclose()
        raise ValueError(f"{key} cannot be used: {chains.skipped[key]}")
    guarded = chains.guards.get(key)
    if guarded is not None:
        assert isinstance(guarded, stt.STT)
        return Recogniser(name, guarded, [chains.aclose])
    # the floor is never guarded: a call uses its plugin as is
    floor = definition_for(spec).build(spec, BuildContext())
    assert isinstance(floor, stt.STT)
    return Recogniser(name, floor, [floor.aclose, chains.aclose])


def run(argv: Sequence[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent transcribe",
        description="Print FILE<TAB>transcript for each WAV file, through a real STT provider.",
    )
    parser.add_argument("--provider", help="STT provider name (default: first usable in chain)")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE.wav")
    args = parser.parse_args(list(argv))
    # stdout carries only FILE<TAB>transcript lines (scripts and benchmarks read them)
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    return asyncio.run(_run(settings, args.provider, args.files))


async def _run(settings: Settings, provider: str | None, files: list[Path]) -> int:
    from livekit.agents import APIError

    try:
        recogniser = await open_recogniser(settings, provider)
    except ValueError as e:
        sys.stderr.write(f"transcribe: {e}\n")
        return 2
    failed = 0
    try:
        for path in files:
            try:
                pcm, rate = read_wav(path)
                text = await recogniser.transcribe(pcm, rate)
            except WavError as e:
                sys.stderr.write(f"transcribe: {e}\n")
                failed += 1
                continue
            except APIError as e:
                sys.stderr.write(f"transcribe: {path}: {recogniser.name} failed: {e}\n")
                failed += 1
                continue
            sys.stdout.write(f"{path}\t{text}\n")
            sys.stdout.flush()
    finally:
        await recogniser.aclose()
    return 1 if failed else 0
