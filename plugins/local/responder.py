"""What the floor LLM says belongs to the application: the :class:`Responder` it is given.

``free-llm`` (:class:`plugins.local.scripted_llm.ScriptedLLM`) is a real LiveKit LLM that
needs no network; *what* it answers is injected. An application hands the chain builder its
own responder (a sales script, a booking flow, a support FAQ) and the library streams that
responder's replies and tool calls exactly like a cloud LLM's, so LiveKit runs the agent's
tools and hands their results back on the next turn. Without one, the chain ends on the
generic :class:`plugins.local.faq_responder.FaqResponder`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from livekit.agents import llm, utils

Message = tuple[str, str]
"""(role, text) with role in {"system", "user", "assistant"}."""


@dataclass(frozen=True)
class ToolResult:
    """A tool the responder (or the LLM before it) called, and what the tool answered."""

    name: str
    arguments: Mapping[str, Any]
    output: str
    is_error: bool = False


@dataclass(frozen=True)
class Turn:
    """One request to the floor LLM: the chat context LiveKit built, and the tools on offer."""

    chat_ctx: llm.ChatContext
    tools: Sequence[llm.Tool] = ()

    @property
    def tool_names(self) -> frozenset[str]:
        """The names of the function tools the agent offers (what a tool call may name)."""
        return frozenset(
            t.id for t in self.tools if isinstance(t, llm.FunctionTool | llm.RawFunctionTool)
        )

    @property
    def messages(self) -> list[Message]:
        return messages_from_chat_ctx(self.chat_ctx)

    @property
    def conversation_id(self) -> str:
        """The id of the conversation's first user message: stable across a session's turns."""
        for item in self.chat_ctx.items:
            if isinstance(item, llm.ChatMessage) and item.role == "user":
                return item.id
        return ""

    def history(self) -> list[Message | ToolResult]:
        """The conversation in order: (role, text) messages and the answers tools gave."""
        calls: dict[str, llm.FunctionCall] = {}
        items: list[Message | ToolResult] = []
        for item in self.chat_ctx.items:
            if isinstance(item, llm.ChatMessage):
                text = (item.text_content or "").strip()
                if text:
                    items.append(("system" if item.role == "developer" else item.role, text))
            elif isinstance(item, llm.FunctionCall):
                calls[item.call_id] = item
            elif isinstance(item, llm.FunctionCallOutput):
                items.append(_result(item, calls.get(item.call_id)))
        return items

    def tool_results_since_last_user(self) -> list[ToolResult]:
        """Tool calls answered after the caller last spoke, oldest first."""
        calls: dict[str, llm.FunctionCall] = {}
        results: list[ToolResult] = []
        for item in self.chat_ctx.items:
            if isinstance(item, llm.ChatMessage) and item.role == "user":
                calls.clear()
                results.clear()
            elif isinstance(item, llm.FunctionCall):
                calls[item.call_id] = item
            elif isinstance(item, llm.FunctionCallOutput):
                results.append(_result(item, calls.get(item.call_id)))
        return results


@dataclass(frozen=True)
class Reply:
    """What the floor LLM streams for one turn: words to speak, then tool calls to run."""

    text: str = ""
    tool_calls: tuple[llm.FunctionToolCall, ...] = field(default_factory=tuple)

    @classmethod
    def calling(cls, name: str, arguments: Mapping[str, Any], *, text: str = "") -> Reply:
        """A reply that asks LiveKit to run tool ``name`` (its result comes back next turn)."""
        call = llm.FunctionToolCall(
            name=name,
            arguments=json.dumps(dict(arguments), separators=(",", ":")),
            call_id=utils.shortuuid("free_llm_call_"),
        )
        return cls(text=text, tool_calls=(call,))


class Responder(Protocol):
    """Decides the floor LLM's reply. It must not raise for a caller's words, and must be
    quick: it runs on the call's event loop (await I/O; never block it)."""

    async def respond(self, turn: Turn) -> Reply: ...

    async def aclose(self) -> None:
        """Finish background work (the LLM that owns this responder calls it once)."""
        ...


def messages_from_chat_ctx(chat_ctx: llm.ChatContext) -> list[Message]:
    """The (role, text) history; tool calls and non-text content are skipped."""
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


def _result(output: llm.FunctionCallOutput, call: llm.FunctionCall | None) -> ToolResult:
    return ToolResult(
        name=output.name,
        arguments=_arguments(call.arguments) if call else {},
        output=output.output,
        is_error=output.is_error,
    )


def _arguments(raw: str) -> dict[str, Any]:
    try:
        parsed = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
