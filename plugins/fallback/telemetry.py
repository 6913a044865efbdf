"""The span attributes LiveKit's fallback adapters set for the member that served."""

from __future__ import annotations

from typing import Any

from livekit.agents import llm, tts
from livekit.agents.telemetry import trace_types
from opentelemetry import trace


def record_served(
    member: llm.LLM[Any] | tts.TTS[Any],
    index: int,
    request_span: trace.Span | None,
    caller_span: trace.Span,
) -> None:
    """Name the member that served on the adapter's request span (label, position, model,
    provider) and the response side on the caller's span, as LiveKit's adapters do. From the
    member, not the adapter: concurrent requests may be served by different members."""
    response: dict[str, Any] = {trace_types.ATTR_GEN_AI_RESPONSE_MODEL: member.model}
    if (provider := trace_types.gen_ai_provider_name(member.provider)) is not None:
        response[trace_types.ATTR_GEN_AI_PROVIDER_NAME] = provider
    if request_span is not None:
        request_span.set_attributes(
            {
                trace_types.ATTR_FALLBACK_LABEL: member.label,
                trace_types.ATTR_FALLBACK_INDEX: index,
                **response,
            }
        )
    caller_span.set_attributes(response)
