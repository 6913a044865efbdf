"""Text-to-speech from any OpenAI-compatible ``/audio/speech`` server, as a Never Silent provider.

OpenAI itself, a proxy, or a self-hosted server that copies OpenAI's speech API (Kokoro-FastAPI,
openedai-speech, LocalAI, vLLM-omni...) is one provider, ``openai-tts``: set its base URL (and
its key, when the server wants one). Installing this package is all it takes; then
``TTS_PROVIDERS=openai-tts,local-tts,free-tts`` puts it first, ``doctor`` checks its key and
``status`` shows its health, and the chain guards it like any built-in cloud voice.
"""

from __future__ import annotations

from typing import Any

from livekit.agents import tts

from plugins.providers import BuildContext, Option, Provider, SimulatorHook
from plugins.providers.definition import SimOptions, SimServer
from plugins.providers.openai import ERRORS, check_models, openai_client
from plugins.spec import ProviderSpec

__version__ = "0.1.0"

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini-tts"
DEFAULT_VOICE = "alloy"
DEFAULT_FORMAT = "pcm"  # raw 24 kHz PCM: nothing to decode on the call path


def _build(spec: ProviderSpec, ctx: BuildContext) -> tts.TTS[Any]:
    from livekit.plugins import openai

    client = openai_client(spec, ctx, DEFAULT_BASE_URL) if spec.api_key else None
    return openai.TTS(
        model=spec.model or DEFAULT_MODEL,
        voice=spec.voice or DEFAULT_VOICE,
        base_url=spec.base_url or DEFAULT_BASE_URL,
        # a self-hosted server may want no key; the SDK still insists on one
        api_key=spec.api_key or "no-key",
        client=client,
        response_format=spec.extra.get("response_format") or DEFAULT_FORMAT,  # type: ignore[arg-type]
    )


def _simulator(options: SimOptions) -> SimServer:
    from plugins.sim.openai_sim import OpenAISimulator

    return OpenAISimulator(flavor="openai", reply=options.reply)


TTS = Provider(
    slot="tts",
    name="openai-tts",
    summary="OpenAI-compatible /audio/speech (OpenAI, a proxy or a self-hosted server)",
    build=_build,
    price_per_unit_usd=15.0 / 1e6,  # USD per character: OpenAI lists $15 per million
    api_key=Option(
        "OPENAI_TTS_API_KEY", "Key of the OpenAI-compatible speech server", kind="secret"
    ),
    base_url=Option(
        "OPENAI_TTS_BASE_URL",
        "OpenAI-compatible speech server, e.g. http://tts.internal:8880/v1 (default: OpenAI)",
        kind="url",
    ),
    default_base_url=DEFAULT_BASE_URL,
    model=Option("OPENAI_TTS_MODEL", "Speech model of that server", default=DEFAULT_MODEL),
    voice=Option("OPENAI_TTS_VOICE", "Voice of that server", default=DEFAULT_VOICE),
    options={
        "response_format": Option(
            "OPENAI_TTS_FORMAT", "Audio format asked for: pcm, wav, mp3...", DEFAULT_FORMAT
        )
    },
    # a self-hosted server is enabled by its URL alone; OpenAI itself by a key
    usable=lambda spec: bool(spec.api_key or spec.base_url),
    credit=check_models,
    errors=ERRORS,
    simulator=SimulatorHook("openai", _simulator),
    plugin_modules=("livekit.plugins.openai",),
)

PROVIDERS = (TTS,)
