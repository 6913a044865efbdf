"""An LLM chain that carries on when a stream dies after the caller has heard part of it.

LiveKit's ``llm.FallbackAdapter`` refuses to fail over once a chunk was sent (its
``retry_on_chunk_sent=False``), so a cut mid-answer leaves the caller with half a sentence
presented as the whole reply. :class:`ContinuingLLMAdapter` is still an
``llm.FallbackAdapter`` (same events, same place in an ``AgentSession``) but runs the chain
itself:

* before any output it fails over like the stock adapter (the guards make a dead provider
  fail in microseconds);
* after output it asks the next provider for the rest. Where the provider continues a trailing
  assistant message (``prefill=True`` for it) the partial answer is sent as that message; a
  prefill the provider refuses as a bad request is retried once without it, and the error that
  killed the first stream stays the one reported. Either way the new text is aligned with what
  was already said, so the caller never hears the same words twice;
* a tool call already emitted is never asked for again (the session runs it once, then asks
  the model again with its result), so a stream that dies after one just ends;
* if no provider can finish, the stream raises: a truncated answer is never presented as whole.

Optionally (``hedge_after_s``) a late first token starts the next provider in parallel; the
first to answer wins and the loser is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from livekit.agents import APIConnectOptions, APIError, llm
from livekit.agents.llm import (
    ChatChunk,
    ChatContext,
    ChoiceDelta,
    FunctionToolCall,
    Tool,
    ToolChoice,
)
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

from plugins.resilience.failures import (
    ClassifiedError,
    EmptyResultError,
    ProviderUnavailableError,
)
from plugins.resilience.guard import Pump
from plugins.resilience.types import FailureKind

log = structlog.get_logger(__name__)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WS = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def sentences(text: str) -> list[str]:
    """``text`` split after sentence-ending punctuation (whitespace kept with the sentence)."""
    parts = _SENTENCE_END.split(text)
    return [p for p in parts if p.strip()]


class Aligner:
    """Turns a second provider's answer into what the caller has not heard yet.

    ``said`` is the text already emitted. While the new text agrees with it nothing is
    emitted; once the new text has covered all of ``said`` the rest flows through. If it
    diverges, it is a different wording: the sentences of it the caller already heard whole
    are dropped and the rest is spoken from the first new sentence (the interrupted sentence
    is said again once, whole, never a fragment twice).
    """

    def __init__(self, said: str, *, continues: bool) -> None:
        self.said = said
        self.continues = continues
        self._held = ""
        self._passing = False

    def feed(self, text: str) -> str:
        if self._passing:
            return text
        self._held += text
        held_n, said_n = _norm(self._held), _norm(self.said)
        if said_n.startswith(held_n):
            return ""  # still repeating what was said
        if held_n.startswith(said_n):
            return self._release_after_said()
        return self._diverged()

    def finish(self) -> str:
        if self._passing or not self._held:
            return ""
        held_n, said_n = _norm(self._held), _norm(self.said)
        if said_n.startswith(held_n):
            return ""  # the new answer is what was said already (or less)
        return self._diverged()

    def _release_after_said(self) -> str:
        # skip exactly as many non-space characters as ``said`` has
        target = len(_WS.sub("", self.said))
        seen = 0
        cut = 0
        for i, ch in enumerate(self._held):
            if not ch.isspace():
                seen += 1
            if seen == target:
                cut = i + 1
                break
        self._passing = True
        rest = self._held[cut:]
        self._held = ""
        return rest

    def _diverged(self) -> str:
        self._passing = True
        held, self._held = self._held, ""
        if self.continues and not _norm(self.said).startswith(_norm(held)[:8]):
            # a provider continuing the prefill: its text follows on directly
            return held if held[:1].isspace() or not self.said else " " + held
        heard = {_norm(s) for s in sentences(self.said) if _SENTENCE_END.search(s + " ")}
        complete_heard = {h for h in heard if h[-1:] in ".!?"}
        kept = [s for s in sentences(held) if _norm(s) not in complete_heard]
        out = " ".join(s.strip() for s in kept)
        return (" " + out) if out else ""


def _same_call(a: FunctionToolCall, b: FunctionToolCall) -> bool:
    return a.call_id == b.call_id or (a.name == b.name and a.arguments == b.arguments)


class ContinuingLLMAdapter(llm.FallbackAdapter):
    """``llm.FallbackAdapter`` that continues a broken answer on the next provider.

    ``prefill(member)`` says whether that member continues a trailing assistant message
    (OpenRouter with models that support it, Gemini); others restart and are aligned.
    """

    def __init__(
        self,
        llms: list[llm.LLM[Any]],
        *,
        attempt_timeout: float = 5.0,
        prefill: Callable[[llm.LLM[Any]], bool] = lambda _: False,
        hedge_after_s: Callable[[llm.LLM[Any]], float | None] | None = None,
    ) -> None:
        super().__init__(llms, attempt_timeout=attempt_timeout, max_retry_per_llm=0)
        self.attempt_timeout = attempt_timeout
        self.members: list[llm.LLM[Any]] = list(llms)
        self.prefill = prefill
        self.hedge_after_s = hedge_after_s
        self.failed: set[int] = set()

    def chat(
        self,
        *,
        chat_ctx: ChatContext,
        tools: list[Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return ContinuingLLMStream(
            self,
            chat_ctx=chat_ctx,
            tools=tools or [],
            conn_options=conn_options,
            options={
                "parallel_tool_calls": parallel_tool_calls,
                "tool_choice": tool_choice,
                "extra_kwargs": extra_kwargs,
            },
        )

    def mark(self, index: int, available: bool) -> None:
        """Tell listeners (``llm_availability_changed``) when a member goes down or comes back."""
        was = index not in self.failed
        if was == available:
            return
        if available:
            self.failed.discard(index)
        else:
            self.failed.add(index)
        self.emit(
            "llm_availability_changed",
            llm.AvailabilityChangedEvent(llm=self.members[index], available=available),
        )


@dataclasses.dataclass
class _Attempt:
    index: int
    stream: llm.LLMStream
    pump: Pump[ChatChunk]

    async def aclose(self) -> None:
        await self.pump.aclose()
        await self.stream.aclose()


class ContinuingLLMStream(llm.LLMStream):
    _llm_attempt_span_name = None
    _genai_operation_name = None

    def __init__(
        self,
        adapter: ContinuingLLMAdapter,
        *,
        chat_ctx: ChatContext,
        tools: list[Tool],
        conn_options: APIConnectOptions,
        options: dict[str, Any],
    ) -> None:
        super().__init__(adapter, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._adapter = adapter
        self._options = options
        self.said = ""  # text emitted to the caller so far
        self.calls: list[FunctionToolCall] = []  # tool calls emitted so far
        self.switches: list[tuple[int, int, float]] = []  # (from, to, gap seconds)
        self._pending: tuple[int, float] | None = None  # a mid-answer death not yet bridged
        self._last_out = 0.0

    async def _metrics_monitor_task(self, event_aiter: Any) -> None:
        async for _ in event_aiter:  # the members report their own metrics
            pass

    def _open(self, index: int, ctx: ChatContext) -> _Attempt:
        member = self._adapter.members[index]
        stream = member.chat(
            chat_ctx=ctx,
            tools=self.tools,
            conn_options=dataclasses.replace(
                self._conn_options, max_retry=0, timeout=self._adapter.attempt_timeout
            ),
            **self._options,
        )
        return _Attempt(index, stream, Pump(stream))

    async def _run(self) -> None:
        members = self._adapter.members
        first_error: BaseException | None = None
        index = 0
        while index < len(members):
            use_prefill = bool(self.said) and self._adapter.prefill(members[index])
            try:
                attempt, head = await self._start(index, use_prefill)
                index = attempt.index
                try:
                    await self._relay(attempt, head, use_prefill)
                finally:
                    await attempt.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if use_prefill and self._prefill_refused(e):
                    log.warning(
                        "provider refused the continuation prefill; restarting it without",
                        provider=members[index].label,
                        error=str(e),
                    )
                    self._adapter.prefill = _without(self._adapter.prefill, members[index])
                    continue
                first_error = first_error or e
                if not isinstance(e, ProviderUnavailableError):
                    self._adapter.mark(index, False)
                if self.calls:
                    log.warning(
                        "LLM stream died after a tool call; ending the turn on it",
                        provider=members[index].label,
                        error=str(e),
                    )
                    return
                if self.said.strip():
                    log.warning(
                        "LLM stream died mid-answer; continuing on the next provider",
                        provider=members[index].label,
                        said_chars=len(self.said),
                        error=str(e),
                    )
                    if self._pending is None:
                        self._pending = (index, self._last_out)
                index += 1
                continue
            self._adapter.mark(index, True)
            return
        what = "mid-answer; the answer is incomplete" if self.said.strip() else "before answering"
        raise APIError(
            f"every LLM in the chain failed {what}: {first_error}", retryable=False
        ) from first_error

    def _ctx_for(self, use_prefill: bool) -> ChatContext:
        if not use_prefill:
            return self.chat_ctx
        ctx = self.chat_ctx.copy()
        ctx.add_message(role="assistant", content=self.said)
        return ctx

    async def _start(self, index: int, use_prefill: bool) -> tuple[_Attempt, list[ChatChunk]]:
        """Open ``index`` (hedged with the next member when it is late); returns its first item."""
        attempt = self._open(index, self._ctx_for(use_prefill))
        hedge_s = self._hedge_after(index)
        if hedge_s is None or index + 1 >= len(self._adapter.members) or self.said:
            return attempt, await _first(attempt)
        first_task = asyncio.ensure_future(_first(attempt))
        done, _ = await asyncio.wait({first_task}, timeout=hedge_s)
        if done:
            return attempt, first_task.result()
        log.info(
            "primary late; hedging with the next provider",
            late=self._adapter.members[index].label,
            hedge=self._adapter.members[index + 1].label,
            after_s=round(hedge_s, 3),
        )
        other = self._open(index + 1, self.chat_ctx)
        other_task = asyncio.ensure_future(_first(other))
        pending = {first_task, other_task}
        errors: list[BaseException] = []
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    winner, loser = (attempt, other) if task is first_task else (other, attempt)
                    if task.exception() is None:
                        for p in pending:
                            p.cancel()
                        await loser.aclose()
                        return winner, task.result()
                    errors.append(task.exception())  # type: ignore[arg-type]
        except BaseException:
            for p in (first_task, other_task):
                p.cancel()
            await attempt.aclose()
            await other.aclose()
            raise
        await attempt.aclose()
        await other.aclose()
        self._adapter.mark(index, False)
        raise errors[-1]

    def _hedge_after(self, index: int) -> float | None:
        if self._adapter.hedge_after_s is None:
            return None
        return self._adapter.hedge_after_s(self._adapter.members[index])

    async def _relay(self, attempt: _Attempt, head: list[ChatChunk], use_prefill: bool) -> None:
        aligner = Aligner(self.said, continues=use_prefill) if self.said else None
        produced = False
        chunk_id = ""
        queue = list(head)
        while True:
            chunk = queue.pop(0) if queue else await attempt.pump.next(None)
            if chunk is None:
                break
            chunk_id = chunk.id
            produced = produced or bool(
                chunk.delta and ((chunk.delta.content or "").strip() or chunk.delta.tool_calls)
            )
            out = self._rewrite(chunk, aligner)
            if out is not None:
                self._send(attempt.index, out)
        if aligner is not None and (rest := aligner.finish()):
            self.said += rest
            self._send(
                attempt.index,
                ChatChunk(id=chunk_id, delta=ChoiceDelta(role="assistant", content=rest)),
            )
        if not produced or not (self.said.strip() or self.calls):
            raise EmptyResultError(f"{self._adapter.members[attempt.index].label} said nothing")

    def _send(self, index: int, chunk: ChatChunk) -> None:
        self._event_ch.send_nowait(chunk)
        if chunk.delta and (chunk.delta.content or chunk.delta.tool_calls):
            now = time.perf_counter()
            if self._pending is not None:
                source, died_at = self._pending
                self._pending = None
                self.switches.append((source, index, now - died_at))
                log.info(
                    "LLM answer continued on the next provider",
                    source=self._adapter.members[source].label,
                    target=self._adapter.members[index].label,
                    gap_ms=round((now - died_at) * 1000),
                )
            self._last_out = now

    def _rewrite(self, chunk: ChatChunk, aligner: Aligner | None) -> ChatChunk | None:
        delta = chunk.delta
        if delta is None:
            return chunk
        content = delta.content
        if content and aligner is not None:
            content = aligner.feed(content)
        calls = [c for c in delta.tool_calls if not any(_same_call(c, d) for d in self.calls)]
        self.calls.extend(calls)
        if content:
            self.said += content
        if (
            not content
            and not calls
            and chunk.usage is None
            and (delta.content or delta.tool_calls)
        ):
            return None
        return ChatChunk(
            id=chunk.id,
            delta=ChoiceDelta(
                role=delta.role, content=content or None, tool_calls=calls, extra=delta.extra
            ),
            usage=chunk.usage,
        )

    @staticmethod
    def _prefill_refused(e: BaseException) -> bool:
        if isinstance(e, ClassifiedError):
            return e.failure.kind is FailureKind.REQUEST_FAULT
        status = getattr(e, "status_code", None)
        return status in (400, 422)


async def _first(attempt: _Attempt) -> list[ChatChunk]:
    """The attempt's chunks up to its first with visible output (or its end)."""
    head: list[ChatChunk] = []
    while True:
        chunk = await attempt.pump.next(None)
        if chunk is None:
            return head
        head.append(chunk)
        if chunk.delta and ((chunk.delta.content or "").strip() or chunk.delta.tool_calls):
            return head


def _without(
    prefill: Callable[[llm.LLM[Any]], bool], member: llm.LLM[Any]
) -> Callable[[llm.LLM[Any]], bool]:
    return lambda m: False if m is member else prefill(m)


def member_prefill(names: Sequence[str]) -> Callable[[llm.LLM[Any]], bool]:
    """A ``prefill`` predicate: members whose label mentions one of ``names`` continue."""
    return lambda m: any(n in m.label for n in names)
