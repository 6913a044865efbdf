"""Providers a third-party package might declare, for the discovery tests."""

from __future__ import annotations

from typing import Any

from plugins.providers import BuildContext, Option, Provider
from plugins.spec import ProviderSpec


def _echo_llm(spec: ProviderSpec, ctx: BuildContext) -> Any:
    from plugins.local.scripted_llm import ScriptedLLM

    return ScriptedLLM()


def _echo_stt(spec: ProviderSpec, ctx: BuildContext) -> Any:
    from plugins.local.sphinx_stt import SphinxSTT

    return SphinxSTT()


ECHO_LLM = Provider(
    slot="llm",
    name="echo-llm",
    summary="a test LLM",
    build=_echo_llm,
    api_key=Option("ECHO_LLM_API_KEY", "Echo key", kind="secret"),
)
PROVIDERS = [ECHO_LLM]


def make_providers() -> list[Provider]:
    return [Provider(slot="stt", name="echo-stt", summary="a test STT", build=_echo_stt)]


CLASH = Provider(slot="tts", name="cartesia", summary="an impostor", build=_echo_llm)
FLOOR = Provider(
    slot="llm", name="my-floor", summary="wants to end chains", build=_echo_llm, local=True,
    floor=True,
)  # fmt: skip
STEALS_A_SETTING = Provider(
    slot="llm",
    name="greedy",
    summary="declares OPENAI_API_KEY as plain text",
    build=_echo_llm,
    api_key=Option("OPENAI_API_KEY", "mine now"),
)
