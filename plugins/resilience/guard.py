"""What every guard does around one attempt, whatever the slot.

Before: ask the shared store (fail at once, no network, when it says no). During: the slot
modules (``guard_llm``, ``guard_tts``, ``guard_stt``) read the plugin's stream through
:func:`pump` under a deadline. After: classify, record the outcome, latency and usage in the
store, tell the observers. Recording after an answer happens in the background so the
caller's stream ends as soon as the provider's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar, cast

import structlog

from plugins.resilience.classify import classify
from plugins.resilience.deadlines import AdaptiveDeadline
from plugins.resilience.failures import (
    ClassifiedError,
    DeadlineExceededError,
    ProviderUnavailableError,
)
from plugins.resilience.phrases import Vocabulary
from plugins.resilience.repeat_limit import attempt_scope
from plugins.resilience.response_tap import ResponseTap
from plugins.resilience.run_clock import run_time
from plugins.resilience.types import (
    Admission,
    BreakerState,
    Failure,
    FailureKind,
    GuardObserver,
    HealthStore,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Units the guards meter, one per slot.
UNIT_LLM = "tokens"
UNIT_TTS = "characters"
UNIT_STT = "audio_seconds"
UNIT_USD = "usd"  # cost at the catalog's (or settings') price per unit


class Guard:
    """Per-provider guard logic shared by the three slot wrappers.

    ``prober`` (optional) takes over the half-open probe slot: a caller's real request never
    serves as the probe; it fails over at once and a synthetic request probes instead.
    """

    def __init__(
        self,
        key: str,
        store: HealthStore,
        *,
        deadline: AdaptiveDeadline,
        observers: Sequence[GuardObserver] = (),
        secrets: Iterable[str | None] = (),
        fingerprint: str | None = None,
        tap: ResponseTap | None = None,
        admit_cache_s: float = 0.5,
        price_per_unit_usd: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        words: Vocabulary | None = None,
    ) -> None:
        self.key = key
        self.words = words  # the provider's error wording (None: generic only)
        self.store = store
        self.deadline = deadline
        self.observers = list(observers)
        self.secrets = tuple(s for s in secrets if s)
        self._background: set[asyncio.Task[None]] = set()
        self.prober: ProbeHook | None = None
        self._warned_key = False
        self._fingerprint = fingerprint
        self.tap = tap
        # A CLOSED answer is reused for ``admit_cache_s`` so the happy path does not wait on
        # the store (whose thread may be busy writing the previous outcome). Any failure seen
        # here drops it; a trip learned by another process is seen within that time.
        self._admit_cache_s = admit_cache_s
        self._clock = clock
        self._closed_until = 0.0
        self.price_per_unit_usd = price_per_unit_usd

    # -- before ----------------------------------------------------------------------------
    def started(self) -> float:
        """Mark the start of an attempt (for reading the response tap afterwards)."""
        return self.tap.now() if self.tap is not None else 0.0

    async def admit(self) -> Admission:
        """Admission for a caller's request; raises ProviderUnavailableError when refused."""
        if self._fingerprint is not None:
            await self.register()
        if self._clock() < self._closed_until:
            self.notify(lambda o: o.on_attempt(self.key, is_probe=False))
            return _CACHED_CLOSED
        admission = await self.store.admit(self.key)
        if admission.allowed and admission.is_probe and self.prober is not None:
            self.prober.take_probe(admission)
            admission = Admission(
                allowed=False,
                state=BreakerState.HALF_OPEN,
                reason="half-open: a synthetic probe is checking it",
                until=admission.until,
            )
        if not admission.allowed:
            self.notify(lambda o: o.on_skip(self.key, admission))
            if self.prober is not None and admission.state is not BreakerState.KEY_REJECTED:
                self.prober.schedule(admission.until)
            raise ProviderUnavailableError(
                self.key, admission.reason or admission.state.value, until=admission.until
            )
        if admission.state is BreakerState.CLOSED and not admission.is_probe:
            self._closed_until = self._clock() + self._admit_cache_s
        self.notify(lambda o: o.on_attempt(self.key, is_probe=admission.is_probe))
        return admission

    async def register(self) -> None:
        """Tell a store that tracks key fingerprints which key is configured (once).

        A KEY_REJECTED breaker stays off until a *different* key is registered, so fixing the
        key and restarting brings the provider back. Stores without ``register`` are fine.
        """
        fingerprint, self._fingerprint = self._fingerprint, None
        register = getattr(self.store, "register", None)
        if fingerprint is not None and register is not None:
            await register(self.key, fingerprint)

    # -- after -----------------------------------------------------------------------------
    def succeeded(self, latency_s: float | None) -> None:
        if latency_s is not None:
            self.deadline.observe(latency_s)
        self.notify(lambda o: o.on_success(self.key, latency_s=latency_s))
        self.spawn(self.store.record_success(self.key, latency_s=latency_s))

    def classify(self, exc: BaseException, since: float = 0.0) -> Failure:
        response = self.tap.recent(since) if self.tap is not None else None
        return classify(exc, secrets=self.secrets, response=response, words=self.words)

    @contextlib.asynccontextmanager
    async def attempt(
        self, adjust: Callable[[Failure], Failure] | None = None
    ) -> AsyncIterator[None]:
        """One attempt on the provider, the same way in every slot.

        Admitted by the store first (refused at once, without a request, when it says no); any
        error inside is classified (``adjust`` may reclassify it, e.g. a refused prefill),
        recorded, and re-raised as a :class:`ClassifiedError` the chain fails over on.
        """
        await self.admit()
        since = self.started()
        try:
            with attempt_scope(self.key):  # a plugin's repeated warning: one line per attempt
                yield
        except (asyncio.CancelledError, ProviderUnavailableError):
            raise
        except Exception as e:
            failure = self.classify(e, since)
            if adjust is not None:
                failure = adjust(failure)
            state = await self.record_failure(failure)
            raise ClassifiedError(self.key, failure, breaker=state) from e

    async def run(
        self,
        body: Callable[[], Awaitable[T]],
        *,
        delivered: Callable[[], bool],
        adjust: Callable[[Failure], Failure] | None = None,
    ) -> T:
        """``body`` as one :meth:`attempt`, tried once more at once after a fast, transient failure.

        A refused or reset connection, or a 502/503/504 before the first byte, usually clears
        on the next request (a pod restarting, a balancer draining), and a second try on the
        same provider costs less than a switch of voice or model. So it gets one immediate
        retry, but only while nothing has reached the caller (``delivered()`` is false), only
        while at most half the first-response deadline has gone, and only if recording the
        failure left the breaker closed: the failure still counts, so a dead provider trips as
        before. Rate limits, quota, key, request faults and timeouts are never retried here;
        the chain falls back on them at once.
        """
        retried = False
        while True:
            started = run_time()
            try:
                async with self.attempt(adjust):
                    return await body()
            except ClassifiedError as e:
                elapsed = run_time() - started
                budget = self.deadline.first_s * RETRY_WITHIN_DEADLINE
                if (
                    retried
                    or delivered()
                    or not fast_transient(e.failure)
                    or e.breaker is not BreakerState.CLOSED
                    or elapsed >= budget
                ):
                    raise
                retried = True
                log.info(
                    "provider failed fast; retrying it once before falling back",
                    provider=self.key,
                    kind=e.failure.kind.value,
                    status=e.failure.status,
                    elapsed_s=round(elapsed, 3),
                )

    async def record_failure(self, failure: Failure) -> BreakerState:
        if failure.kind.counts_against_health:
            self._closed_until = 0.0
        state = await self.store.record_failure(self.key, failure)
        self.notify(lambda o: o.on_failure(self.key, failure, state))
        if failure.kind is FailureKind.KEY_REJECTED:
            if not self._warned_key:
                self._warned_key = True
                log.error(
                    "provider rejected its API key; it stays off until the key changes",
                    provider=self.key,
                    error=failure.message,
                )
        else:
            log.warning(
                "provider attempt failed",
                provider=self.key,
                kind=failure.kind.value,
                status=failure.status,
                breaker=state.value,
                error=failure.message,
            )
        if state is BreakerState.OPEN and self.prober is not None:
            self.prober.schedule(None)
        return state

    def usage(self, unit: str, amount: float) -> None:
        if amount <= 0:
            return
        self.notify(lambda o: o.on_usage(self.key, unit, amount))
        self.spawn(self.store.add_usage(self.key, unit, amount))
        if self.price_per_unit_usd > 0:
            cost = amount * self.price_per_unit_usd
            self.notify(lambda o: o.on_cost(self.key, cost))
            self.spawn(self.store.add_usage(self.key, UNIT_USD, cost))

    # -- plumbing --------------------------------------------------------------------------
    def spawn(self, coro: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("health store write failed", provider=self.key)

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background store writes (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def notify(self, event: Callable[[GuardObserver], None]) -> None:
        """Tell every observer, e.g. ``notify(lambda o: o.on_skip(key, admission))``; one
        observer's exception is logged and never reaches the call or the other observers."""
        for observer in self.observers:
            try:
                event(observer)
            except Exception:
                log.exception("guard observer failed", observer=type(observer).__name__)


#: The share of the first-response deadline a failed attempt may have used and still be retried.
RETRY_WITHIN_DEADLINE = 0.5

#: Gateway statuses that mean "this request did not reach a working server", not "the provider
#: refused it": worth one more try at once.
_GATEWAY_STATUSES = frozenset({502, 503, 504})


def fast_transient(failure: Failure) -> bool:
    """Whether ``failure`` is one an immediate retry on the same provider may well clear."""
    if failure.kind is FailureKind.CONNECTION_ERROR:
        return True
    return failure.kind is FailureKind.SERVER_ERROR and failure.status in _GATEWAY_STATUSES


_CACHED_CLOSED = Admission(allowed=True, state=BreakerState.CLOSED, reason="cached")


class GuardedPlugin:
    """What the three guarded plugins share: they present the wrapped plugin's model and
    provider under a label naming the guard's key (``guarded[tts:cartesia]``), re-emit its
    metrics as their own, and close it with themselves.

    A mixin listed before the LiveKit base class, so these definitions win.
    """

    inner: Any
    guard: Guard

    def _wrap(self, inner: Any, guard: Guard) -> None:
        self.inner = inner
        self.guard = guard
        inner.on("metrics_collected", self._forward_metrics)

    @property
    def label(self) -> str:
        return f"guarded[{self.guard.key}]"

    @property
    def model(self) -> str:
        return str(self.inner.model)

    @property
    def provider(self) -> str:
        return str(self.inner.provider)

    def _forward_metrics(self, *args: Any, **kwargs: Any) -> None:
        cast(Any, self).emit("metrics_collected", *args, **kwargs)

    def rewarm(self, error: ClassifiedError) -> None:
        """After a failed attempt whose breaker stayed closed, re-open the plugin's pooled
        connection now (its public ``prewarm()``), so the next request - the immediate retry,
        or the next sentence once the chain comes back here - does not pay the handshake.
        LiveKit's pool drops a connection an attempt failed on, so this connects afresh; it
        is a no-op for a plugin with nothing pooled, or a pool that still holds one."""
        if error.breaker is not BreakerState.CLOSED:
            return  # nothing will be sent here before a probe: do not hold a socket open
        try:
            self.inner.prewarm()
        except Exception as e:
            log.warning(
                "reconnect after a failed attempt failed", provider=self.guard.key, error=str(e)
            )

    async def _close_inner(self) -> None:
        self.inner.off("metrics_collected", self._forward_metrics)
        await self.guard.drain()
        await self.inner.aclose()


class ProbeHook:
    """What the guard needs from a prober (see :mod:`plugins.resilience.probes`)."""

    def take_probe(self, admission: Admission) -> None:
        raise NotImplementedError

    def schedule(self, at: float | None) -> None:
        raise NotImplementedError


# -- reading a plugin's stream under a deadline ----------------------------------------------

_END = object()


async def get_within(queue: asyncio.Queue[T], timeout: float) -> T:
    """The queue's next item within ``timeout`` seconds; raises ``TimeoutError``.

    Runs once per audio frame and per token, so it costs no task and no timer when an item
    is already waiting, and one timer otherwise (``asyncio.wait_for`` starts a task per call:
    at 24 calls a worker spent a tenth of its CPU starting them). A get cancelled by the
    timeout leaves the item in the queue.
    """
    if not queue.empty():
        return queue.get_nowait()
    async with asyncio.timeout(timeout):
        return await queue.get()


class Pump(Generic[T]):
    """Reads an async iterable in its own task so a deadline can abandon it cleanly.

    Waiting on a queue can be cancelled safely; cancelling a LiveKit stream's ``__anext__``
    mid-flight cannot. On a deadline the reader task is cancelled and the inner stream closed.
    """

    def __init__(self, source: AsyncIterable[T]) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._task = asyncio.create_task(self._read(source))

    async def _read(self, source: AsyncIterable[T]) -> None:
        try:
            async for item in source:
                self._queue.put_nowait(item)
        except BaseException as e:
            self._queue.put_nowait(_Raised(e))
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        self._queue.put_nowait(_END)

    async def next(self, timeout: float | None) -> T | None:
        """The next item, ``None`` at the end; raises TimeoutError or the source's error.

        ``timeout`` is run time (:mod:`plugins.resilience.run_clock`): a wait during which our
        own event loop was starved is extended by the starvation, so a tight deadline does not
        fail a provider whose chunk sat unread in our socket buffer.
        """
        if timeout is not None and timeout <= 0:
            if self._queue.empty():
                raise TimeoutError
            item = self._queue.get_nowait()
        elif timeout is None:
            item = await self._queue.get()
        else:
            deadline = run_time() + timeout
            while True:
                try:
                    item = await get_within(self._queue, deadline - run_time())
                    break
                except TimeoutError:
                    if not self._queue.empty():
                        item = self._queue.get_nowait()
                        break
                    if run_time() >= deadline:
                        raise
        if item is _END:
            return None
        if isinstance(item, _Raised):
            raise item.error
        return item  # type: ignore[return-value]

    async def aclose(self) -> None:
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def deadline_error(
    key: str, *, stalled: bool, waited_s: float, limit_s: float
) -> DeadlineExceededError:
    what = "stalled: no chunk" if stalled else "no first answer"
    return DeadlineExceededError(
        f"{key} {what} within {limit_s:.2f}s (waited {waited_s:.2f}s)",
        stalled=stalled,
        deadline_s=limit_s,
    )
