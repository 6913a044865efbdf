"""Everything one call needs besides the ``AgentSession``: the shared health store (with budgets),
the guarded chains, and the observers that log, meter and journal what the guards see.

Built by :func:`agent.worker.build_session` for the worker, ``simulate`` and the benchmarks
alike, so a simulated call exercises exactly the production wiring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.health_logger import HealthLogger
from agent.local_speech import with_domain_vocabulary
from agent.responder.lead import LeadSink
from agent.responder.sales_responder import SalesResponder
from agent.responder.sales_script import SalesScript
from agent.settings import Settings
from plugins.catalog import CATALOG
from plugins.chain import Chains, build_chains
from plugins.observability.metrics import PrometheusObserver, StoreMetrics
from plugins.observability.switches import SwitchEvent, SwitchTracker
from plugins.observability.usage import CallUsage
from plugins.resilience.budget import Budget, BudgetedStore
from plugins.resilience.deadlines import DEFAULT_DEADLINES, DeadlineSettings
from plugins.resilience.store import StoreConfig, open_store
from plugins.resilience.store_failopen import FailOpenStore
from plugins.resilience.types import GuardObserver, HealthStore
from plugins.spec import ProviderSpec, Slot

log = structlog.get_logger(__name__)

_METRICS = PrometheusObserver()  # module-level: one set of Prometheus series per process
_STORE_METRICS = StoreMetrics()


def open_health_store(settings: Settings) -> HealthStore:
    """The shared store for these settings, failing open to this process's own breakers when
    it breaks, with spending caps when any are configured."""
    config = StoreConfig(usage_period=settings.budget_period)
    shared = open_store(settings.redis_url, settings.data_dir, config=config)
    store: HealthStore = FailOpenStore(shared, observers=(_STORE_METRICS,))
    if settings.provider_budgets_usd:
        limits = dict(settings.provider_budgets_usd)
        for spec in call_specs(settings):  # a pool's budget caps each of its members
            if spec.member is not None and spec.provider_key in limits:
                limits.setdefault(spec.key, limits[spec.provider_key])
        budgets = {key: Budget("usd", 1.0, limit_usd=limit) for key, limit in limits.items()}
        store = BudgetedStore(store, budgets, period=settings.budget_period)
    return store


def call_specs(settings: Settings) -> list[ProviderSpec]:
    """Every slot's specs in order, with price overrides, local-stt's domain vocabulary and
    (optionally) cheapest-first."""
    specs: list[ProviderSpec] = []
    for slot in ("stt", "llm", "tts"):
        slot_specs = settings.provider_specs(slot)  # type: ignore[arg-type]
        priced = []
        for spec in slot_specs:
            extra = dict(spec.extra)
            prices = settings.provider_prices_usd
            price = prices.get(spec.key, prices.get(spec.provider_key))
            if price is not None:
                extra["price_per_unit_usd"] = str(price)
            priced.append(with_domain_vocabulary(_with_extra(spec, extra)))
        if settings.prefer_cheapest:
            priced = cheapest_first(priced, _price)
        specs.extend(priced)
    return specs


def _with_extra(spec: ProviderSpec, extra: dict[str, str]) -> ProviderSpec:
    return dataclasses.replace(spec, extra=extra)


def _price(spec: ProviderSpec) -> float:
    if "price_per_unit_usd" in spec.extra:
        return float(spec.extra["price_per_unit_usd"])
    entry = CATALOG.get(spec.slot, spec.name)
    return entry.price_per_unit_usd if entry is not None else 0.0


def cheapest_first(
    specs: Sequence[ProviderSpec], price: Callable[[ProviderSpec], float]
) -> list[ProviderSpec]:
    """Sort each run of neighbouring cloud providers by price; local providers keep their place.

    Neighbouring cloud providers are the operator's "same tier" (e.g. Deepgram, Google, Whisper);
    a local provider placed between cloud ones (local-tts between Cartesia and ElevenLabs) is a
    deliberate quality choice the sort must not cross.
    """
    out: list[ProviderSpec] = []
    run: list[ProviderSpec] = []
    for spec in specs:
        if spec.name in CATALOG.local_names:
            out.extend(sorted(run, key=price))
            run = []
            out.append(spec)
        else:
            run.append(spec)
    out.extend(sorted(run, key=price))
    return out


def deadline_settings(settings: Settings) -> dict[Slot, DeadlineSettings]:
    """The ceilings from settings, on top of the library's defaults."""
    from dataclasses import replace

    def ceiling(slot: Slot, ceiling_s: float, stall_s: float | None = None) -> DeadlineSettings:
        base = DEFAULT_DEADLINES[slot]
        stall = base.stall_s if stall_s is None else stall_s
        return replace(
            base,
            floor_s=min(base.floor_s, ceiling_s),
            ceiling_s=ceiling_s,
            stall_s=stall,
            stall_floor_s=min(base.stall_floor, stall),
        )

    return {
        "llm": ceiling("llm", settings.llm_first_token_timeout),
        "tts": ceiling("tts", settings.tts_first_audio_timeout),
        "stt": ceiling(
            "stt", settings.stt_first_result_timeout, stall_s=settings.stt_stall_timeout
        ),
    }


@dataclass
class CallRuntime:
    """The chains of one call and what watches them; ``aclose`` releases all of it."""

    chains: Chains
    store: HealthStore
    switches: SwitchTracker
    health_log: HealthLogger
    usage: CallUsage
    switch_listeners: list[Callable[[SwitchEvent], None]] = field(default_factory=list)

    # What callers of build_session use from the chains, spelled out.
    @property
    def stt(self) -> Any:
        return self.chains.stt

    @property
    def llm(self) -> Any:
        return self.chains.llm

    @property
    def tts(self) -> Any:
        return self.chains.tts

    @property
    def order(self) -> dict[Slot, list[str]]:
        return self.chains.order

    @property
    def skipped(self) -> dict[str, str]:
        return self.chains.skipped

    @property
    def guards(self) -> dict[str, Any]:
        return self.chains.guards

    def on_switch(self, listener: Callable[[SwitchEvent], None]) -> None:
        self.switches.subscribe(listener)

    async def aclose(self) -> None:
        try:
            await self.health_log.aclose()
        except Exception:
            log.exception("final health status failed")
        log.info(self.usage.summary(), usage=self.usage.totals())
        self.switches.close()
        await self.chains.aclose()
        await self.store.aclose()


def sales_responder(lead_sink: LeadSink | None, *, company: str | None = None) -> SalesResponder:
    """The free LLM's sales conversation; confirmed leads go to ``lead_sink`` (the CRM path)."""
    script = SalesScript(company=company) if company else SalesScript()
    return SalesResponder(script, sink=lead_sink)


def build_call_runtime(
    settings: Settings,
    *,
    vad: Any,
    call_id: str,
    lead_sink: LeadSink | None = None,
    observers: Sequence[GuardObserver] = (),
    company: str | None = None,
) -> CallRuntime:
    store = open_health_store(settings)
    specs = call_specs(settings)
    usage = CallUsage()
    chains = build_chains(
        specs,
        store,
        vad=vad,
        observers=[usage, _METRICS, *observers],
        deadlines=deadline_settings(settings),
        responder=sales_responder(lead_sink, company=company),
        hedge_requests=settings.hedge_requests,
        prewarm=settings.prewarm_connections,
    )
    switches = SwitchTracker(chains)  # the call's one tracker: follows the chains' cursors
    names: dict[str, list[str]] = {
        slot: [k.partition(":")[2] for k in keys] for slot, keys in chains.order.items()
    }
    health_log = HealthLogger(
        store, names, interval_s=settings.health_check_interval, call_id=call_id
    )
    for guarded in chains.guards.values():
        guarded.guard.observers.append(health_log)
    switches.subscribe(health_log.on_switch)
    switches.subscribe(lambda e: _METRICS.on_failover(e.slot, e.from_provider or "", e.to_provider))
    health_log.start()
    return CallRuntime(chains, store, switches, health_log, usage)
