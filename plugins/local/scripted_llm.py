"""``free-llm``: an injected :class:`Responder` as a real LiveKit LLM, the last link of the chain.

When every cloud LLM is down the caller still hears the agent: this LLM hands the chat context
LiveKit builds each turn to its responder and streams the reply back word by word like any
provider, then the responder's tool calls (LiveKit runs the agent's tools and calls this LLM
again with their results, exactly as it does for a cloud LLM). It needs no network and no key,
and it never raises for a bad turn: a responder failure becomes a polite "could you say that
again", and a second failure in a row moves the call on instead of repeating it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Literal

import structlog
from livekit.agents import llm, utils
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

from plugins.local.faq_responder import FaqResponder
from plugins.local.responder import Reply, Responder, Turn

log = structlog.get_logger(__name__)

PROVIDER = "free-llm"
MODEL = "scripted-v1"
FALLBACK_LINE = "Sorry, I didn't quite get that. Could you say it again?"
MOVE_ON_LINE = "Let's try that another way. What else can I help you with?"
_PIECE = re.compile(r"\S+\s*")


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters a token) for usage metering."""
    return max(1, (len(text) + 3) // 4) if text else 0


class ScriptedLLM(llm.LLM[Literal["metrics_collected", "error"]]):
    """A deterministic, offline LLM whose answers come from ``responder``.

    The LLM owns the responder: :meth:`aclose` closes it. Without one it speaks the library's
    generic :class:`FaqResponder` (a greeting and an empty FAQ).
    """

    def __init__(self, responder: Responder | None = None, *, model: str = MODEL) -> None:
        super().__init__()
        self._responder: Responder = responder if responder is not None else FaqResponder()
        self._model = model
        self._label = f"{PROVIDER}/{model}"  # LLM.__init__ sets it; metrics and errors read it

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def responder(self) -> Responder:
        return self._responder

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> ScriptedLLMStream:
        return ScriptedLLMStream(
            self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options
        )

    async def aclose(self) -> None:
        try:
            await self._responder.aclose()
        except Exception:
            log.exception("free_llm_responder_close_failed")
        await super().aclose()

    async def _respond(self, turn: Turn) -> Reply:
        try:
            reply = await self._responder.respond(turn)
        except Exception:
            log.exception("free_llm_responder_failed", items=len(turn.chat_ctx.items))
            return Reply(text=_recovery_line(turn))
        if not reply.text.strip() and not reply.tool_calls:
            log.error("free_llm_responder_said_nothing")
            return Reply(text=_recovery_line(turn))
        return reply


def _recovery_line(turn: Turn) -> str:
    """The apology, unless the agent just said it: then move on rather than loop."""
    said = [text for role, text in turn.messages if role == "assistant"]
    return MOVE_ON_LINE if said and said[-1] == FALLBACK_LINE else FALLBACK_LINE


class ScriptedLLMStream(llm.LLMStream):
    """Streams one reply as word-sized chunks, then its tool calls, then a usage chunk."""

    def __init__(
        self,
        owner: ScriptedLLM,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(owner, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._owner = owner

    async def _run(self) -> None:
        turn = Turn(chat_ctx=self.chat_ctx, tools=list(self.tools))
        reply = await self._owner._respond(turn)
        request_id = utils.shortuuid("free_llm_")
        for piece in _PIECE.findall(reply.text):
            # _event_ch is LLMStream's output channel, the extension point every plugin uses
            self._event_ch.send_nowait(
                llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=piece))
            )
            await asyncio.sleep(0)  # let the consumer start speaking the first words
        if reply.tool_calls:
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=request_id,
                    delta=llm.ChoiceDelta(role="assistant", tool_calls=list(reply.tool_calls)),
                )
            )
        prompt_tokens = sum(estimate_tokens(text) for _, text in turn.messages)
        completion_tokens = estimate_tokens(reply.text) + sum(
            estimate_tokens(c.arguments) for c in reply.tool_calls
        )
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=request_id,
                usage=llm.CompletionUsage(
                    completion_tokens=completion_tokens,
                    prompt_tokens=prompt_tokens,
                    total_tokens=prompt_tokens + completion_tokens,
                ),
            )
        )
