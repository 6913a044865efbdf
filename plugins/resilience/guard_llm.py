"""``GuardedLLM``: any LiveKit LLM behind the shared breaker, a first-token deadline and metering.

It is a plain ``llm.LLM``, so it goes into ``llm.FallbackAdapter`` (or straight into an
``AgentSession``) like any plugin. The inner plugin is asked for no retries: a failed attempt
is the chain's cue to move on, not the provider's to try again.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Never

from livekit.agents import APIConnectOptions, llm
from livekit.agents.llm import ChatChunk, ChatContext, Tool, ToolChoice
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

from plugins.resilience.failures import EmptyResultError
from plugins.resilience.guard import UNIT_LLM, Guard, GuardedPlugin, Pump, deadline_error
from plugins.resilience.run_clock import run_time
from plugins.resilience.types import Failure, FailureKind

#: statuses a provider answers an assistant prefill it does not accept with
_REFUSED = frozenset({400, 422})


class GuardedLLM(GuardedPlugin, llm.LLM[Never]):
    inner: llm.LLM[Any]

    def __init__(
        self, inner: llm.LLM[Any], guard: Guard, *, probe_kwargs: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self._wrap(inner, guard)
        self.probe_kwargs = dict(probe_kwargs or {})

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
        return GuardedLLMStream(
            self,
            chat_ctx=chat_ctx,
            tools=tools or [],
            conn_options=dataclasses.replace(conn_options, max_retry=0),
            parallel_tool_calls=parallel_tool_calls,
            tool_choice=tool_choice,
            extra_kwargs=extra_kwargs,
        )

    def prewarm(self, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.inner.prewarm(loop=loop)

    async def aclose(self) -> None:
        await self._close_inner()
        await super().aclose()

    async def probe(self) -> float:
        """One minimal synthetic request ("ping", one token); returns time to first token."""
        ctx = ChatContext.empty()
        ctx.add_message(role="user", content="ping")
        started = run_time()
        deadline = self.guard.deadline.first_s
        stream = self.inner.chat(
            chat_ctx=ctx,
            conn_options=APIConnectOptions(max_retry=0, timeout=max(deadline, 1.0)),
            extra_kwargs=self.probe_kwargs or NOT_GIVEN,
        )
        pump: Pump[ChatChunk] = Pump(stream)
        try:
            while True:
                remaining = deadline - (run_time() - started)
                try:
                    chunk = await pump.next(remaining)
                except TimeoutError:
                    raise deadline_error(
                        self.guard.key,
                        stalled=False,
                        waited_s=run_time() - started,
                        limit_s=deadline,
                    ) from None
                if chunk is None:
                    raise EmptyResultError(f"{self.guard.key} answered the probe with nothing")
                if chunk.delta and _visible(chunk.delta):
                    return run_time() - started
        finally:
            await pump.aclose()
            await stream.aclose()


class GuardedLLMStream(llm.LLMStream):
    # the wrapped plugin's own stream carries the provider's span; ours just nests it
    _llm_attempt_span_name = None
    _genai_operation_name = None

    def __init__(
        self,
        guarded: GuardedLLM,
        *,
        chat_ctx: ChatContext,
        tools: list[Tool],
        conn_options: APIConnectOptions,
        parallel_tool_calls: NotGivenOr[bool],
        tool_choice: NotGivenOr[ToolChoice],
        extra_kwargs: NotGivenOr[dict[str, Any]],
    ) -> None:
        super().__init__(guarded, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._guarded = guarded
        self._inner_conn_options = conn_options
        self._parallel_tool_calls = parallel_tool_calls
        self._tool_choice = tool_choice
        self._extra_kwargs = extra_kwargs

    async def _metrics_monitor_task(self, event_aiter: Any) -> None:
        # the inner plugin emits the metrics (forwarded by GuardedLLM); don't count twice
        async for _ in event_aiter:
            pass

    async def _run(self) -> None:
        guard = self._guarded.guard
        prefilled = _ends_on_assistant(self.chat_ctx)

        def refused_prefill(failure: Failure) -> Failure:
            # a provider refusing an assistant prefill says nothing about its health
            if prefilled and failure.status in _REFUSED:
                return dataclasses.replace(
                    failure,
                    kind=FailureKind.REQUEST_FAULT,
                    message=f"assistant prefill refused: {failure.message}",
                )
            return failure

        sent = 0  # chunks the caller has: after the first, a failure is not retried

        async def once() -> float | None:
            nonlocal sent
            started = run_time()
            first_deadline = guard.deadline.first_s
            inner = self._guarded.inner.chat(
                chat_ctx=self.chat_ctx,
                tools=self.tools,
                conn_options=self._inner_conn_options,
                parallel_tool_calls=self._parallel_tool_calls,
                tool_choice=self._tool_choice,
                extra_kwargs=self._extra_kwargs,
            )
            pump: Pump[ChatChunk] = Pump(inner)
            ttft: float | None = None
            last = started
            tokens = 0
            try:
                while True:
                    now = run_time()
                    stall = guard.deadline.stall_s  # learns this stream's gaps as they come
                    timeout = (
                        (first_deadline - (now - started))
                        if ttft is None
                        else (stall - (now - last))
                    )
                    try:
                        chunk = await pump.next(timeout)
                    except TimeoutError:
                        now = run_time()
                        raise deadline_error(
                            guard.key,
                            stalled=ttft is not None,
                            waited_s=now - (started if ttft is None else last),
                            limit_s=first_deadline if ttft is None else stall,
                        ) from None
                    if chunk is None:
                        break
                    arrived = run_time()
                    if ttft is not None:
                        guard.deadline.observe_gap(arrived - last)
                    last = arrived
                    if chunk.usage is not None:
                        tokens = max(tokens, chunk.usage.total_tokens)
                    if ttft is None and chunk.delta and _visible(chunk.delta):
                        ttft = last - started
                    self._event_ch.send_nowait(chunk)
                    sent += 1
                if ttft is None:
                    raise EmptyResultError(
                        f"{guard.key} returned no text (or only whitespace) and no tool call"
                    )
            finally:
                await pump.aclose()
                await inner.aclose()
                guard.usage(UNIT_LLM, float(tokens))
            return ttft

        ttft = await guard.run(once, delivered=lambda: sent > 0, adjust=refused_prefill)
        guard.succeeded(ttft)


def _visible(delta: llm.ChoiceDelta) -> bool:
    """Text a caller would hear, or a tool call: whitespace alone is an empty answer."""
    return bool((delta.content or "").strip() or delta.tool_calls)


def _ends_on_assistant(ctx: ChatContext) -> bool:
    """Whether the request asks the model to continue a trailing assistant message."""
    messages = ctx.messages()
    return bool(messages) and messages[-1].role == "assistant"
