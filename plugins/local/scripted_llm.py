"""``free-llm``: the scripted sales responder as a real LiveKit LLM, the last link of the chain.

When every cloud LLM is down the caller still hears a sales agent: this LLM reads the chat
context LiveKit hands it each turn, asks :class:`SalesScript` for the next line and streams it
back word by word like any provider. It needs no network and no key, and it never raises for
a bad turn: a script failure becomes a polite "could you say that again".

When the caller confirms the read-back of their details, the captured :class:`Lead` goes to
the same :class:`LeadSink` the CRM tools use, once per confirmation, in the background so the
reply is not held up. A sink failure is logged and the lead is kept and retried on the next
turn and at ``aclose()``, so it is not lost.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Literal

import structlog
from livekit.agents import llm, utils
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)

from plugins.local.lead import Lead, LeadSink
from plugins.local.lead_extraction import DEFAULT_REGION
from plugins.local.sales_script import (
    DEFAULT_AGENT_NAME,
    DEFAULT_COMPANY,
    Message,
    SalesScript,
)

log = structlog.get_logger(__name__)

PROVIDER = "free-llm"
MODEL = "scripted-sales-v1"
_FALLBACK_LINE = "Sorry, I didn't quite get that. Could you say it again?"
_MAX_REMEMBERED_CONVERSATIONS = 1024
_PIECE = re.compile(r"\S+\s*")

_LeadKey = tuple[str | None, str | None, str | None, str | None]


def messages_from_chat_ctx(chat_ctx: llm.ChatContext) -> list[Message]:
    """The (role, text) history the script reads; tool calls and non-text content are skipped."""
    messages: list[Message] = []
    for item in chat_ctx.items:
        if not isinstance(item, llm.ChatMessage):
            continue
        text = (item.text_content or "").strip()
        if not text:
            continue
        role = "system" if item.role == "developer" else item.role
        messages.append((role, text))
    return messages


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters a token) for usage metering."""
    return max(1, (len(text) + 3) // 4) if text else 0


class ScriptedLLM(llm.LLM[Literal["metrics_collected", "error"]]):
    """A deterministic, offline LLM that runs the sales script over the chat context."""

    def __init__(
        self,
        faq: Mapping[str, str] | None = None,
        *,
        sink: LeadSink | None = None,
        company: str = DEFAULT_COMPANY,
        agent_name: str = DEFAULT_AGENT_NAME,
        region: str = DEFAULT_REGION,
        script: SalesScript | None = None,
    ) -> None:
        super().__init__()
        self._script = script or SalesScript(
            faq, company=company, agent_name=agent_name, region=region
        )
        self._sink = sink
        self._label = f"{PROVIDER}/{MODEL}"  # LLM.__init__ sets it; metrics and errors read it
        self._saved: OrderedDict[str, set[_LeadKey]] = OrderedDict()
        self._unsaved: list[tuple[str, Lead]] = []
        self._save_tasks: set[asyncio.Task[None]] = set()

    @property
    def model(self) -> str:
        return MODEL

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def script(self) -> SalesScript:
        return self._script

    @property
    def unsaved_leads(self) -> list[Lead]:
        """Confirmed leads the sink refused so far (retried next turn and at ``aclose``)."""
        return [lead for _, lead in self._unsaved]

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
        # tools are accepted and never called: the script has no way to choose arguments
        return ScriptedLLMStream(
            self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options
        )

    async def aclose(self) -> None:
        """Wait for leads being saved, and give refused ones one last try."""
        self._retry_unsaved()
        while self._save_tasks:
            await asyncio.gather(*list(self._save_tasks), return_exceptions=True)
        await super().aclose()

    # --- called by the stream -----------------------------------------------------------

    def _respond(self, messages: list[Message], conversation: str) -> str:
        """The reply for this history; hands a newly confirmed lead to the sink."""
        try:
            reply = self._script.reply(messages)
        except Exception:
            log.exception("free_llm_script_failed", turns=len(messages))
            return _FALLBACK_LINE
        self._retry_unsaved()
        if self._sink is not None and messages and messages[-1][0] == "user":
            try:
                self._maybe_save(messages, conversation)
            except Exception:
                log.exception("free_llm_lead_check_failed")
        return reply

    def _maybe_save(self, messages: list[Message], conversation: str) -> None:
        # only the turn on which the caller says yes: a lead confirmed earlier (by this script
        # or by a cloud LLM whose CRM tools already saved it) is not saved again
        if not self._script.confirmed(messages) or self._script.confirmed(messages[:-1]):
            return
        lead = self._script.lead(messages)
        key: _LeadKey = (lead.name, lead.phone, lead.email, lead.preferred_time)
        seen = self._saved.setdefault(conversation, set())
        self._saved.move_to_end(conversation)
        while len(self._saved) > _MAX_REMEMBERED_CONVERSATIONS:
            self._saved.popitem(last=False)
        if key in seen:
            return  # the same turn generated twice (preemptive generation, a retry)
        seen.add(key)
        self._start_save(conversation, lead)

    def _start_save(self, conversation: str, lead: Lead) -> None:
        task = asyncio.get_running_loop().create_task(
            self._save(conversation, lead), name="free_llm.save_lead"
        )
        self._save_tasks.add(task)
        task.add_done_callback(self._save_tasks.discard)

    async def _save(self, conversation: str, lead: Lead) -> None:
        assert self._sink is not None
        fields = [f for f in ("name", "phone", "email", "preferred_time") if getattr(lead, f)]
        try:
            await self._sink.save_lead(lead)
        except Exception as exc:
            # the lead stays here and is offered again; its contents never reach the log
            self._unsaved.append((conversation, lead))
            log.error(
                "free_llm_lead_save_failed",
                error_type=type(exc).__name__,
                fields=fields,
                pending=len(self._unsaved),
            )
            return
        log.info("free_llm_lead_saved", fields=fields)

    def _retry_unsaved(self) -> None:
        if self._sink is None or not self._unsaved:
            return
        pending, self._unsaved = self._unsaved, []
        for conversation, lead in pending:
            self._start_save(conversation, lead)


class ScriptedLLMStream(llm.LLMStream):
    """Streams one scripted reply as word-sized chunks, then a usage chunk."""

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
        messages = messages_from_chat_ctx(self.chat_ctx)
        reply = self._owner._respond(messages, _conversation_key(self.chat_ctx))
        request_id = utils.shortuuid("free_llm_")
        for piece in _PIECE.findall(reply):
            # _event_ch is LLMStream's output channel, the extension point every plugin uses
            self._event_ch.send_nowait(
                llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=piece))
            )
            await asyncio.sleep(0)  # let the consumer start speaking the first words
        prompt_tokens = sum(estimate_tokens(text) for _, text in messages)
        completion_tokens = estimate_tokens(reply)
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


def _conversation_key(chat_ctx: llm.ChatContext) -> str:
    """The id of the conversation's first user message: stable across a session's turns."""
    for item in chat_ctx.items:
        if isinstance(item, llm.ChatMessage) and item.role == "user":
            return item.id
    return ""
