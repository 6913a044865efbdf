"""Prometheus metrics for every guarded provider, collected from every job process.

LiveKit runs each call in its own process and serves ``/metrics`` from the worker with
prometheus_client's multiprocess collector when ``PROMETHEUS_MULTIPROC_DIR`` is set; the metrics
below are plain module-level prometheus_client objects, so that mode aggregates them for free.
Labels are slot, provider and failure class only: never a key, a URL or an error message.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from plugins.resilience.headroom import Headroom
from plugins.resilience.types import Admission, BreakerState, Failure, GuardObserver

REQUESTS = Counter(
    "voice_provider_requests_total",
    "Requests sent to a provider (probes included)",
    ["slot", "provider", "probe"],
)
SUCCESSES = Counter(
    "voice_provider_successes_total", "Requests a provider answered", ["slot", "provider"]
)
FAILURES = Counter(
    "voice_provider_failures_total",
    "Failed requests by failure class",
    ["slot", "provider", "kind"],
)
SKIPS = Counter(
    "voice_provider_skips_total",
    "Requests that skipped a provider without a network call (breaker, quota, budget, key)",
    ["slot", "provider", "state"],
)
FAILOVERS = Counter(
    "voice_failovers_total",
    "A slot moved from one provider to another during a call",
    ["slot", "from_provider", "to_provider"],
)
BREAKER_STATE = Gauge(
    "voice_provider_breaker_state",
    "1 for the provider's current breaker state, 0 for the others",
    ["slot", "provider", "state"],
    multiprocess_mode="mostrecent",
)
FIRST_RESPONSE = Histogram(
    "voice_provider_first_response_seconds",
    "Time to first token (LLM), first audio (TTS) or first result (STT)",
    ["slot", "provider"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
USAGE = Counter(
    "voice_provider_usage_total",
    "Metered usage by unit (characters, audio_seconds, tokens)",
    ["slot", "provider", "unit"],
)
COST = Counter("voice_provider_cost_usd_total", "Estimated spend", ["slot", "provider"])
HEADROOM = Gauge(
    "voice_provider_headroom_ratio",
    "Share of the provider's rate limit left at its last answer, by dimension (requests, "
    "tokens), as its rate-limit headers said",
    ["slot", "provider", "dimension"],
    multiprocess_mode="mostrecent",
)
HEALTH_STORE_UP = Gauge(
    "voice_health_store_up",
    "1 while this process uses the shared health store, 0 while it decides from its own "
    "in-memory breakers because the store failed (the lowest live process wins)",
    ["backend"],
    multiprocess_mode="livemin",
)
HEALTH_STORE_FAULTS = Counter(
    "voice_health_store_faults_total",
    "Times a process lost the shared health store and fell open, by cause",
    ["backend", "reason"],
)


def _labels(key: str) -> tuple[str, str]:
    slot, _, provider = key.partition(":")
    return slot, provider


class PrometheusObserver(GuardObserver):
    """A guard observer that moves the metrics above."""

    def on_attempt(self, key: str, *, is_probe: bool) -> None:
        slot, provider = _labels(key)
        REQUESTS.labels(slot, provider, "yes" if is_probe else "no").inc()

    def on_success(self, key: str, *, latency_s: float | None, is_probe: bool = False) -> None:
        slot, provider = _labels(key)
        SUCCESSES.labels(slot, provider).inc()
        if latency_s is not None:
            FIRST_RESPONSE.labels(slot, provider).observe(latency_s)
        self._set_state(slot, provider, BreakerState.CLOSED)

    def on_failure(self, key: str, failure: Failure, new_state: BreakerState) -> None:
        slot, provider = _labels(key)
        FAILURES.labels(slot, provider, failure.kind.value).inc()
        self._set_state(slot, provider, new_state)

    def on_skip(self, key: str, admission: Admission) -> None:
        slot, provider = _labels(key)
        SKIPS.labels(slot, provider, admission.state.value).inc()
        self._set_state(slot, provider, admission.state)

    def on_usage(self, key: str, unit: str, amount: float) -> None:
        slot, provider = _labels(key)
        USAGE.labels(slot, provider, unit).inc(amount)

    def on_cost(self, key: str, usd: float) -> None:
        slot, provider = _labels(key)
        COST.labels(slot, provider).inc(usd)

    def on_headroom(self, key: str, readings: list[Headroom]) -> None:
        slot, provider = _labels(key)
        for reading in readings:
            HEADROOM.labels(slot, provider, reading.dimension).set(
                reading.remaining / reading.limit
            )

    def on_failover(self, slot: str, from_provider: str, to_provider: str) -> None:
        FAILOVERS.labels(slot, from_provider, to_provider).inc()

    @staticmethod
    def _set_state(slot: str, provider: str, state: BreakerState) -> None:
        for s in BreakerState:
            BREAKER_STATE.labels(slot, provider, s.value).set(1.0 if s is state else 0.0)


class StoreMetrics:
    """A :class:`~plugins.resilience.store_failopen.StoreFaultObserver` for the metrics above.

    The label is the backend kind (``redis``, ``sqlite``): never a URL or a path.
    """

    def on_store_down(self, where: str, reason: str) -> None:
        backend = _backend(where)
        HEALTH_STORE_UP.labels(backend).set(0.0)
        HEALTH_STORE_FAULTS.labels(backend, reason).inc()

    def on_store_up(self, where: str) -> None:
        HEALTH_STORE_UP.labels(_backend(where)).set(1.0)


def _backend(where: str) -> str:
    return "redis" if where.startswith(("redis", "rediss", "unix")) else "sqlite"
