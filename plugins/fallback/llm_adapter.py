"""``LLMFallbackAdapter``: LiveKit's ``llm.FallbackAdapter`` that finishes a broken answer.

A drop-in for ``livekit.agents.llm.FallbackAdapter``: same arguments with the same meaning,
same state (``_status``, ``_active_instance``: ``model``, ``provider`` and
``metrics_metadata`` are LiveKit's own properties over it), same ``llm_availability_changed``
events, LiveKit's own background recovery for members we do not guard, and
``APIConnectionError`` when every member failed. On top of it:

* **continuation**: an answer that dies after the caller heard part of it is finished by the
  next member. Where the member continues a trailing assistant message (``prefill``) the
  partial answer is sent as that message; a prefill the member refuses as a bad request is
  retried once without it, and the error that killed the first stream stays the one
  reported. Either way the new text is aligned with what was said
  (:class:`~plugins.fallback.align.Aligner`), so the caller never hears a word twice;
* a tool call already emitted is never asked for again (the session runs it once, then asks
  the model again with its result), so a stream that dies after one just ends;
* if no member can finish, the stream raises: a truncated answer is never presented whole;
* optional hedging (``hedge_after_s``): a late first token starts the next member in
  parallel; the first to answer wins and the loser is closed.

Where we differ from LiveKit, deliberately:

* ``retry_on_chunk_sent`` defaults to ``True`` (LiveKit: ``False``). LiveKit's ``True``
  restarts the answer on the next member, so the caller hears its start twice, which is why
  it is off there; ours continues without repeating, so it is on. ``False`` keeps LiveKit's
  behaviour: the error is raised once a chunk was sent.
* guarded members are tried on every request and recover through their probers (see
  :mod:`plugins.fallback.cursor`); LiveKit's replay recovery runs for the others only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from livekit.agents import APIConnectOptions, APIStatusError, llm
from livekit.agents.llm import (
    ChatChunk,
    ChatContext,
    ChoiceDelta,
    FunctionToolCall,
    Tool,
    ToolChoice,
)
from livekit.agents.llm.fallback_adapter import (
    DEFAULT_FALLBACK_API_CONNECT_OPTIONS,
    FallbackLLMStream,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from plugins.fallback.align import Aligner
from plugins.fallback.cursor import ChainCursor, TierSelector, Walk
from plugins.fallback.telemetry import record_served
from plugins.fallback.warm import Warmer
from plugins.resilience.failures import ClassifiedError, EmptyResultError
from plugins.resilience.guard import Pump
from plugins.resilience.types import FailureKind

log = structlog.get_logger(__name__)

Prefill = Callable[[llm.LLM[Any]], bool]
HedgeAfter = Callable[[llm.LLM[Any]], float | None]


class LLMFallbackAdapter(llm.FallbackAdapter):
    """``llm.FallbackAdapter`` that continues a broken answer on the next member.

    LiveKit's arguments first (``llm``, ``attempt_timeout``, ``max_retry_per_llm``,
    ``retry_interval``, ``retry_on_chunk_sent``, ``sticky``), then ours: ``prefill(member)``
    says whether that member continues a trailing assistant message (others restart and are
    aligned); ``hedge_after_s(member)`` the lateness after which the next member is started
    in parallel (``None``: never); ``keys`` name the members in events (default: a guarded
    member's key, else its label); ``tiers``/``selector`` order equal members.
    """

    def __init__(
        self,
        llm: list[llm.LLM[Any]],
        *,
        attempt_timeout: float = 5.0,
        max_retry_per_llm: int = 0,
        retry_interval: float = 0.5,
        retry_on_chunk_sent: bool = True,
        sticky: bool = False,
        prefill: Prefill = lambda _: False,
        hedge_after_s: HedgeAfter | None = None,
        keys: Sequence[str] | None = None,
        tiers: Sequence[int] | None = None,
        selector: TierSelector | None = None,
    ) -> None:
        super().__init__(
            llm,
            attempt_timeout=attempt_timeout,
            max_retry_per_llm=max_retry_per_llm,
            retry_interval=retry_interval,
            retry_on_chunk_sent=retry_on_chunk_sent,
            sticky=sticky,
        )
        self.prefill = prefill
        self.hedge_after_s = hedge_after_s
        self.chain = ChainCursor(
            "llm",
            self._llm_instances,
            self._status,
            announce=self._announce,
            keys=keys,
            order=self._llm_order,
            tiers=tiers,
            selector=selector,
        )
        self.on("llm_availability_changed", self._availability_changed)
        #: warms the serving member at call start and the next one when one falters
        self.warmer = Warmer(self.chain)

    @property
    def members(self) -> list[llm.LLM[Any]]:
        return list(self._llm_instances)

    def chat(
        self,
        *,
        chat_ctx: ChatContext,
        tools: list[Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_FALLBACK_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return LLMFallbackStream(
            self,
            chat_ctx=chat_ctx,
            tools=tools or [],
            conn_options=conn_options,
            parallel_tool_calls=parallel_tool_calls,
            tool_choice=tool_choice,
            extra_kwargs=extra_kwargs,
        )

    def prewarm(self, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Warm the member that will serve (LiveKit: always member 0)."""
        self.warmer.prewarm()

    async def aclose(self) -> None:
        self.chain.close()
        self.warmer.close()
        await super().aclose()

    def _announce(self, member: llm.LLM[Any], available: bool) -> None:
        self.emit(
            "llm_availability_changed",
            llm.AvailabilityChangedEvent(llm=member, available=available),
        )

    def _availability_changed(self, ev: llm.AvailabilityChangedEvent) -> None:
        self.chain.availability_changed(ev.llm, ev.available)


@dataclasses.dataclass
class _Attempt:
    index: int
    stream: llm.LLMStream
    pump: Pump[ChatChunk]

    async def aclose(self) -> None:
        await self.pump.aclose()
        await self.stream.aclose()


class _HedgeLostError(Exception):
    """Both the late member and its hedge failed; ``last`` is the later of the two."""

    def __init__(self, last: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.last = last


class LLMFallbackStream(FallbackLLMStream):
    """LiveKit's fallback stream with our walk: continuation after a mid-answer failure."""

    def __init__(
        self,
        adapter: LLMFallbackAdapter,
        *,
        chat_ctx: ChatContext,
        tools: list[Tool],
        conn_options: APIConnectOptions,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> None:
        super().__init__(
            adapter,
            chat_ctx=chat_ctx,
            tools=tools,
            conn_options=conn_options,
            parallel_tool_calls=parallel_tool_calls,
            tool_choice=tool_choice,
            extra_kwargs=extra_kwargs,
        )
        self._adapter = adapter
        self.said = ""  # text emitted to the caller so far
        self.calls: list[FunctionToolCall] = []  # tool calls emitted so far
        self.switches: list[tuple[int, int, float]] = []  # (from, to, gap seconds)
        self._pending: tuple[int, float] | None = None  # a mid-answer death not yet bridged
        self._last_out = 0.0

    def _open(self, index: int, ctx: ChatContext) -> _Attempt:
        adapter = self._adapter
        adapter._attempt_id += 1
        adapter._status[index].selection_id = adapter._attempt_id
        stream = adapter._llm_instances[index].chat(
            chat_ctx=ctx,
            tools=self._tools,
            parallel_tool_calls=self._parallel_tool_calls,
            tool_choice=self._tool_choice,
            extra_kwargs=self._extra_kwargs,
            conn_options=dataclasses.replace(
                self._conn_options,
                max_retry=adapter._max_retry_per_llm,
                timeout=adapter._attempt_timeout,
                retry_interval=adapter._retry_interval,
            ),
        )
        return _Attempt(index, stream, Pump(stream))

    async def _run(self) -> None:
        adapter = self._adapter
        members = adapter._llm_instances
        walk = adapter.chain.request(lambda i: self._try_recovery(members[i]))
        position = 0
        while position < len(walk.order):
            index = walk.order[position]
            use_prefill = bool(self.said) and adapter.prefill(members[index])
            try:
                attempt, head = await self._start(walk, index, use_prefill)
                index = attempt.index
                try:
                    await self._relay(attempt, head, use_prefill)
                finally:
                    await attempt.aclose()
            except asyncio.CancelledError:
                raise
            except _HedgeLostError as lost:
                position = walk.order.index(lost.last) + 1
                continue
            except Exception as e:
                if use_prefill and _prefill_refused(e):
                    log.warning(
                        "provider refused the continuation prefill; restarting it without",
                        provider=members[index].label,
                        error=str(e),
                    )
                    adapter.prefill = _without(adapter.prefill, members[index])
                    continue
                adapter._status[index].selection_id = 0
                walk.failed(index, e)
                if self.calls:
                    log.warning(
                        "LLM stream died after a tool call; ending the turn on it",
                        provider=members[index].label,
                        error=str(e),
                    )
                    return
                if self.said.strip():
                    if not adapter._retry_on_chunk_sent:
                        raise  # LiveKit's behaviour when asked for it
                    log.warning(
                        "LLM stream died mid-answer; continuing on the next provider",
                        provider=members[index].label,
                        said_chars=len(self.said),
                        error=str(e),
                    )
                    if self._pending is None:
                        self._pending = (index, self._last_out)
                position = walk.order.index(index) + 1
                continue
            status = adapter._status[index]
            status.selection_id = max(status.selection_id, adapter._attempt_id)
            walk.served(index)
            record_served(members[index], index, self._llm_request_span, self._caller_span)
            return
        incomplete = " mid-answer; the answer is incomplete" if self.said.strip() else ""
        raise walk.error(incomplete)

    def _ctx_for(self, use_prefill: bool) -> ChatContext:
        if not use_prefill:
            return self._chat_ctx
        ctx = self._chat_ctx.copy()
        ctx.add_message(role="assistant", content=self.said)
        return ctx

    async def _start(
        self, walk: Walk[llm.LLM[Any]], index: int, use_prefill: bool
    ) -> tuple[_Attempt, list[ChatChunk]]:
        """Open ``index`` (hedged with the next member when it is late); returns its first item."""
        attempt = self._open(index, self._ctx_for(use_prefill))
        hedge_s = self._hedge_after(index)
        other_index = walk.after(index)
        if hedge_s is None or other_index is None or self.said:
            return attempt, await _first(attempt)
        first_task = asyncio.ensure_future(_first(attempt))
        done, _ = await asyncio.wait({first_task}, timeout=hedge_s)
        if done:
            return attempt, first_task.result()
        members = self._adapter._llm_instances
        log.info(
            "primary late; hedging with the next provider",
            late=members[index].label,
            hedge=members[other_index].label,
            after_s=round(hedge_s, 3),
        )
        other = self._open(other_index, self._chat_ctx)
        other_task = asyncio.ensure_future(_first(other))
        pending = {first_task, other_task}
        errors: dict[int, BaseException] = {}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    winner, loser = (attempt, other) if task is first_task else (other, attempt)
                    error = task.exception()
                    if error is None:
                        for p in pending:
                            p.cancel()
                        await loser.aclose()
                        return winner, task.result()
                    errors[winner.index] = error
        except BaseException:
            for p in (first_task, other_task):
                p.cancel()
            await attempt.aclose()
            await other.aclose()
            raise
        await attempt.aclose()
        await other.aclose()
        walk.failed(index, errors[index])
        walk.failed(other_index, errors[other_index])
        raise _HedgeLostError(other_index, errors[index])

    def _hedge_after(self, index: int) -> float | None:
        if self._adapter.hedge_after_s is None:
            return None
        return self._adapter.hedge_after_s(self._adapter._llm_instances[index])

    async def _relay(self, attempt: _Attempt, head: list[ChatChunk], use_prefill: bool) -> None:
        aligner = Aligner(self.said, continues=use_prefill) if self.said else None
        produced = False
        chunk_id = ""
        queue = list(head)
        member = self._adapter._llm_instances[attempt.index]
        while True:
            chunk = queue.pop(0) if queue else await attempt.pump.next(None)
            if chunk is None:
                break
            if not produced:
                # LiveKit: the instance whose chunks the caller gets names the metrics
                self._adapter._active_instance = member
                if not use_prefill:
                    self._current_stream = attempt.stream
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
            raise EmptyResultError(f"{member.label} said nothing")

    def _send(self, index: int, chunk: ChatChunk) -> None:
        self._event_ch.send_nowait(chunk)
        if chunk.delta and (chunk.delta.content or chunk.delta.tool_calls):
            now = time.perf_counter()
            if self._pending is not None:
                source, died_at = self._pending
                self._pending = None
                self.switches.append((source, index, now - died_at))
                members = self._adapter._llm_instances
                log.info(
                    "LLM answer continued on the next provider",
                    source=members[source].label,
                    target=members[index].label,
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


def _same_call(a: FunctionToolCall, b: FunctionToolCall) -> bool:
    return a.call_id == b.call_id or (a.name == b.name and a.arguments == b.arguments)


def _prefill_refused(e: BaseException) -> bool:
    if isinstance(e, ClassifiedError):
        return e.failure.kind is FailureKind.REQUEST_FAULT
    return isinstance(e, APIStatusError) and e.status_code in (400, 422)


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


def _without(prefill: Prefill, member: llm.LLM[Any]) -> Prefill:
    return lambda m: False if m is member else prefill(m)
