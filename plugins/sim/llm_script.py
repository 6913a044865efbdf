"""What a simulated LLM says: turns a test scripted, else a deterministic conversation.

The OpenAI-compatible and Gemini simulators share this so a test (or ``simulate``) can script
the model per call (``script_replies``, ``script_tool_call``) and otherwise get a deterministic
dialogue: the application's (``simulate`` passes the sales script the free LLM speaks) or, by
default, the library's generic :class:`plugins.local.faq_responder.FaqResponder`.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plugins.local.faq_responder import FaqResponder
from plugins.local.responder import Message

ReplyFn = Callable[[Sequence[Message]], str]
"""The model's answer to a (role, text) history when no turn is scripted."""

_PIECES = re.compile(r"\s*\S+")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Mapping[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(dict(self.arguments), separators=(",", ":"))


@dataclass(frozen=True)
class Turn:
    """One model answer: text, tool calls, or both (text first)."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = field(default_factory=tuple)


class LlmBrain:
    """Scripted turns first (in order, one per request), then ``reply``."""

    def __init__(self, reply: ReplyFn | None = None) -> None:
        self._reply: ReplyFn = reply or FaqResponder().reply
        self._queue: deque[Turn] = deque()
        self._lock = threading.Lock()

    def script_replies(self, replies: Iterable[str]) -> None:
        """The next requests answer these texts, one per request, in order."""
        turns = [Turn(text=r) for r in replies]
        for t in turns:
            if not isinstance(t.text, str):
                raise TypeError(f"scripted replies must be strings, got {type(t.text).__name__}")
        with self._lock:
            self._queue.extend(turns)

    def script_tool_call(
        self, name: str, arguments: Mapping[str, Any] | str | None = None, *, text: str = ""
    ) -> None:
        """The next request answers with a call of tool ``name`` (arguments: dict or JSON)."""
        if not name:
            raise ValueError("script_tool_call needs the tool's name")
        if isinstance(arguments, str):
            try:
                parsed = json.loads(arguments)
            except json.JSONDecodeError as e:
                raise ValueError(f"tool arguments for {name!r} are not valid JSON: {e}") from e
            if not isinstance(parsed, dict):
                raise ValueError(f"tool arguments for {name!r} must be a JSON object")
            arguments = parsed
        with self._lock:
            self._queue.append(Turn(text=text, tool_calls=(ToolCall(name, arguments or {}),)))

    def clear_script(self) -> None:
        with self._lock:
            self._queue.clear()

    @property
    def scripted_left(self) -> int:
        with self._lock:
            return len(self._queue)

    def next_turn(self, messages: Sequence[Message]) -> Turn:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return Turn(text=self._reply(list(messages)))


def estimate_tokens(text: str) -> int:
    """Roughly what a BPE tokenizer counts (about four characters a token)."""
    return (len(text) + 3) // 4


def split_deltas(text: str) -> list[str]:
    """``text`` as streamed pieces (one word each, leading space kept), joining back exactly."""
    pieces = _PIECES.findall(text)
    consumed = sum(len(p) for p in pieces)
    if consumed < len(text):  # trailing whitespace
        if pieces:
            pieces[-1] += text[consumed:]
        else:
            pieces = [text] if text else []
    return pieces


def split_json(text: str, size: int = 8) -> list[str]:
    """Tool-call argument JSON in small fragments, as providers stream it."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
