"""The library entry point: provider specs in, three fallback adapters out.

``build_chains(specs, store)`` returns our drop-in ``FallbackAdapter`` subclasses
(:mod:`plugins.fallback`): plain LiveKit STT/LLM/TTS objects that any LiveKit app can hand to
``AgentSession``. Each cloud provider is wrapped in a guard (shared breaker,
deadlines, classification, metering) and gets a background prober; each chain ends on the
slot's local provider, which needs no network and no key and is never guarded off, so a
caller always hears an answer. A provider whose key is missing is skipped with one log line.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from livekit.agents import llm, stt, tts
from livekit.agents import vad as lk_vad

from plugins.catalog import CATALOG, definition_for
from plugins.fallback import LLMFallbackAdapter, STTFallbackAdapter, TTSFallbackAdapter
from plugins.fallback.balance import Balancer, BalanceSettings, HeadroomBoard, Mode
from plugins.local.responder import Responder
from plugins.local.speculative_stt import SpeculativeStreamAdapter
from plugins.providers.definition import BuildContext, Provider, ProviderUnusableError
from plugins.resilience.breaker import key_fingerprint
from plugins.resilience.deadlines import DEFAULT_DEADLINES, AdaptiveDeadline, DeadlineSettings
from plugins.resilience.guard import Guard
from plugins.resilience.guard_llm import GuardedLLM
from plugins.resilience.guard_stt import GuardedSTT
from plugins.resilience.guard_tts import GuardedTTS
from plugins.resilience.headroom import Headroom
from plugins.resilience.phrases import vocabulary
from plugins.resilience.probes import Prober
from plugins.resilience.response_tap import ResponseTap
from plugins.resilience.stall import HedgeWatch
from plugins.resilience.types import GuardObserver, HealthStore
from plugins.spec import ProviderSpec, Slot

log = structlog.get_logger(__name__)

#: Never hedge sooner than this: a provider's ordinary jitter is not lateness.
HEDGE_MIN_S = 0.05

Guarded = GuardedSTT | GuardedLLM | GuardedTTS
Member = stt.STT[Any] | llm.LLM[Any] | tts.TTS[Any]


@dataclass
class Chains:
    """The three chains, plus what was built into them (for status, tests and shutdown)."""

    stt: STTFallbackAdapter
    llm: LLMFallbackAdapter
    tts: TTSFallbackAdapter
    order: dict[Slot, list[str]] = field(default_factory=dict)  # provider keys, in order
    skipped: dict[str, str] = field(default_factory=dict)  # provider key -> why
    guards: dict[str, Guarded] = field(default_factory=dict)
    probers: dict[str, Prober] = field(default_factory=dict)
    http_sessions: list[aiohttp.ClientSession] = field(default_factory=list)
    #: the unguarded floors: closed here (LiveKit's adapters do not close their members)
    floors: list[Member] = field(default_factory=list)
    #: each member's rate-limit headroom and latency, as the balancers see them
    board: HeadroomBoard | None = None
    #: per slot, the balancer of its tiers of equals (None: LiveKit's fixed order)
    balancers: dict[Slot, Balancer] = field(default_factory=dict)

    async def aclose(self) -> None:
        for prober in self.probers.values():
            await prober.aclose()
        if self.board is not None:
            await self.board.drain()
        for guarded in self.guards.values():
            await guarded.guard.drain()
        await self.stt.aclose()
        await self.llm.aclose()
        await self.tts.aclose()
        for guarded in self.guards.values():
            await guarded.aclose()
        for floor in self.floors:
            await floor.aclose()  # free-llm's responder finishes saving what it captured
        for session in self.http_sessions:
            await session.close()


def build_chains(
    specs: Sequence[ProviderSpec],
    store: HealthStore,
    *,
    vad: lk_vad.VAD | None = None,
    observers: Iterable[GuardObserver] = (),
    deadlines: Mapping[Slot, DeadlineSettings] | None = None,
    clock: Callable[[], float] = time.time,
    probes: bool = True,
    llm_attempt_timeout: float = 5.0,
    responder: Responder | None = None,
    hedge_requests: bool = False,
    balance: BalanceSettings | None = None,
    prewarm: bool = True,
) -> Chains:
    """Build the STT, LLM and TTS chains in the order the specs give.

    ``vad`` is needed for non-streaming STT (Whisper); without it those are skipped.
    ``clock`` must be the store's clock (probers turn its ``open_until`` into sleeps).
    ``probes=False`` leaves recovery to explicit ``Chains.probers[key].try_probe()`` calls.
    ``responder`` decides what the ``free-llm`` floor says (and which tools it calls): the
    application's own conversation; without one the floor is the generic
    :class:`plugins.local.faq_responder.FaqResponder`.
    The adapters survive a failure mid-stream: the LLM answer continues on the next
    provider, TTS resumes at the first unspoken sentence, STT replays the caller's current
    utterance. Members are asked for no retries of their own (``max_retry_per_*=0``): a
    failed attempt is the chain's cue to move on.
    ``hedge_requests`` (off by default): an LLM (first token) or a voice (first audio) late
    past its measured p95 gets the next provider started in parallel, and the first to answer
    is kept. A recogniser later than its own rhythm is hedged the same way onto a local next
    member always (it costs CPU, not money) and onto a cloud one with ``hedge_requests``.
    ``prewarm`` (on by default): the adapters' ``prewarm()`` (called by LiveKit's session when
    a call starts) connects the member that will serve, and a member that starts failing has
    the next one connected (:mod:`plugins.fallback.warm`); off: connections open on first use.
    A spec's ``extra["prefill"] = "continue"`` says that provider continues a trailing
    assistant message (assistant prefill); others restart and are aligned with what was said.
    Neighbouring specs with the same ``tier`` (the members of a key or endpoint pool, or
    providers marked as equals) form one tier, balanced by :mod:`plugins.fallback.balance`
    (``balance`` tunes it); tiers keep the order given.
    """
    observer_list = list(observers)
    limits = {**DEFAULT_DEADLINES, **(deadlines or {})}
    chains: dict[Slot, list[stt.STT[Any] | llm.LLM[Any] | tts.TTS[Any]]] = {
        "stt": [],
        "llm": [],
        "tts": [],
    }
    order: dict[Slot, list[str]] = {"stt": [], "llm": [], "tts": []}
    skipped: dict[str, str] = {}
    guards: dict[str, Guarded] = {}
    probers: dict[str, Prober] = {}
    sessions: list[aiohttp.ClientSession] = []
    floors: list[Member] = []
    hedge_targets: set[int] = set()  # ids of the STT members a late recogniser is hedged onto
    board = HeadroomBoard(store, settings=balance)
    placed: dict[Slot, list[ProviderSpec]] = {"stt": [], "llm": [], "tts": []}

    for slot in ("stt", "llm", "tts"):
        slot_specs = _ordered(slot, specs)
        for spec in slot_specs:
            entry = definition_for(spec)
            if spec.key in order[slot]:
                log.warning("provider listed twice; using the first", provider=spec.key)
                continue
            if not entry.has_key(spec):
                reason = f"no key ({entry.key_hint or 'api key'} not set)"
                skipped[spec.key] = reason
                log.info("provider skipped", provider=spec.key, reason=reason)
                continue
            tap = ResponseTap(signals=entry.rate_limits)
            ctx = BuildContext(tap=tap, responder=responder)
            if entry.uses_aiohttp and _loop_running():
                session = aiohttp.ClientSession(
                    trace_configs=[tap.aiohttp_trace()], ws_response_class=tap.websocket_class()
                )
                sessions.append(session)
                ctx = BuildContext(http_session=session, tap=tap, responder=responder)
            try:
                plugin = entry.build(spec, ctx)
            except (ProviderUnusableError, ValueError) as e:
                if not entry.floor:
                    skipped[spec.key] = str(e)
                    log.warning("provider skipped", provider=spec.key, reason=str(e))
                    continue
                # the floor is never left out: a bad option of it falls back to its defaults
                log.error(
                    "floor provider option refused; using its defaults",
                    provider=spec.key,
                    reason=str(e),
                )
                plugin = entry.build(ProviderSpec(slot, spec.name), ctx)
            streaming = not isinstance(plugin, stt.STT) or plugin.capabilities.streaming
            if not streaming and vad is None:
                reason = "non-streaming STT needs a VAD and none was given"
                skipped[spec.key] = reason
                log.info("provider skipped", provider=spec.key, reason=reason)
                continue
            if slot == "stt" and (entry.local or hedge_requests):
                hedge_targets.add(id(plugin))
            if entry.floor:
                chains[slot].append(plugin)  # the floor is never guarded off
                floors.append(plugin)
                order[slot].append(spec.key)
                placed[slot].append(spec)
                continue
            guard = Guard(
                spec.key,
                store,
                deadline=AdaptiveDeadline(limits[slot]),
                observers=[*observer_list, board],
                secrets=(spec.api_key,),
                fingerprint=key_fingerprint(spec.api_key) if spec.api_key else None,
                tap=tap,
                price_per_unit_usd=_price(entry, spec),
                words=vocabulary(entry.errors),
            )
            tap.on_headroom.append(functools.partial(_report_headroom, guard))
            guarded = _wrap(entry, plugin, guard)
            guards[spec.key] = guarded
            probers[spec.key] = Prober(guard, guarded.probe, clock=clock, auto=probes)
            member: stt.STT[Any] | llm.LLM[Any] | tts.TTS[Any] = guarded
            if isinstance(guarded, GuardedSTT) and not streaming:
                assert vad is not None
                # a local recogniser is free to ask twice, so it recognises during the VAD's
                # silence window; a paid one is asked once per utterance, as LiveKit does
                member = (
                    SpeculativeStreamAdapter(stt=guarded, vad=vad)
                    if entry.local
                    else stt.StreamAdapter(stt=guarded, vad=vad)
                )
            chains[slot].append(member)
            order[slot].append(spec.key)
            placed[slot].append(spec)

    stt_chain = [c for c in chains["stt"] if isinstance(c, stt.STT)]
    llm_chain = [c for c in chains["llm"] if isinstance(c, llm.LLM)]
    tts_chain = [c for c in chains["tts"] if isinstance(c, tts.TTS)]
    log.info("chains built", **{slot: " > ".join(keys) for slot, keys in order.items()})
    prefill = {id(guards[s.key]) for s in specs if s.key in guards and _continues_prefill(s)}
    tiers = {slot: tiers_of(placed[slot]) for slot in placed}
    balancers = {
        slot: Balancer(
            [s.key for s in placed[slot]],
            board=board,
            weights=[s.weight for s in placed[slot]],
            modes=[_mode(s) for s in placed[slot]],
        )
        for slot in placed
        if len(set(tiers[slot])) < len(tiers[slot])
    }
    for slot in balancers:
        log.info("tiers balanced", slot=slot, tiers=_describe_tiers(placed[slot], tiers[slot]))
    stt_adapter = STTFallbackAdapter(
        stt_chain,
        vad=vad,
        max_retry_per_stt=0,
        keys=order["stt"],
        tiers=tiers["stt"],
        selector=balancers.get("stt"),
        hedge=functools.partial(_stt_hedge, hedge_targets),
    )
    llm_adapter = LLMFallbackAdapter(
        llm_chain,
        attempt_timeout=llm_attempt_timeout,
        max_retry_per_llm=0,
        prefill=lambda member: id(member) in prefill,
        hedge_after_s=_hedge_after if hedge_requests else None,
        keys=order["llm"],
        tiers=tiers["llm"],
        selector=balancers.get("llm"),
    )
    tts_adapter = TTSFallbackAdapter(
        tts_chain,
        max_retry_per_tts=0,
        keys=order["tts"],
        tiers=tiers["tts"],
        selector=balancers.get("tts"),
        hedge_after_s=_hedge_after if hedge_requests else None,
    )
    for adapter in (stt_adapter, llm_adapter, tts_adapter):
        adapter.warmer.enabled = prewarm
    return Chains(
        stt=stt_adapter,
        llm=llm_adapter,
        tts=tts_adapter,
        order=order,
        skipped=skipped,
        guards=guards,
        probers=probers,
        http_sessions=sessions,
        floors=floors,
        board=board,
        balancers=balancers,
    )


def _report_headroom(guard: Guard, readings: list[Headroom]) -> None:
    """A response's rate-limit readings, to the guard's observers (the board, the metrics)."""
    guard.notify(lambda o: o.on_headroom(guard.key, readings))


def tiers_of(specs: Sequence[ProviderSpec]) -> list[int]:
    """Tier numbers in chain order: neighbours with the same ``tier`` share one."""
    out: list[int] = []
    for n, spec in enumerate(specs):
        same = n > 0 and spec.tier is not None and specs[n - 1].tier == spec.tier
        out.append(out[-1] if same else (out[-1] + 1 if out else 0))
    return out


def _mode(spec: ProviderSpec) -> Mode:
    return "closest" if spec.balance == "closest" else "weighted"


def _describe_tiers(specs: Sequence[ProviderSpec], tiers: Sequence[int]) -> str:
    """``llm:openai#1=2 | llm:openai#2=1 (weighted) > free-llm``: no key, no secret."""
    groups: list[str] = []
    for tier in sorted(set(tiers)):
        members = [s for s, t in zip(specs, tiers, strict=True) if t == tier]
        if len(members) == 1:
            groups.append(members[0].key)
            continue
        shares = " | ".join(f"{m.key}={m.weight:g}" for m in members)
        groups.append(f"{shares} ({_mode(members[0])})")
    return " > ".join(groups)


def _continues_prefill(spec: ProviderSpec) -> bool:
    return spec.extra.get("prefill", "").strip().lower() in ("continue", "true", "1", "yes")


def _hedge_after(member: llm.LLM[Any] | tts.TTS[Any]) -> float | None:
    """Hedge once a guarded LLM (first token) or voice (first audio) is past its measured
    p95, and still before its deadline."""
    if not isinstance(member, GuardedLLM | GuardedTTS):
        return None
    p95 = member.guard.deadline.p95
    if p95 is None:
        return None
    return min(max(p95, HEDGE_MIN_S), member.guard.deadline.first_s * 0.75)


def _stt_hedge(targets: set[int], serving: stt.STT[Any], next_: stt.STT[Any]) -> HedgeWatch | None:
    """A guarded recogniser that is later than its own rhythm is hedged onto the next member
    when that one is local (free: the hedge costs CPU, not a second paid recognition) or,
    with ``hedge_requests``, onto any member. Only a streaming recogniser has a rhythm: a batch
    one behind LiveKit's ``StreamAdapter`` only starts once the VAD has seen the pause, so it
    would always look late."""
    if not isinstance(serving, GuardedSTT) or not serving.inner.capabilities.streaming:
        return None
    if id(_unwrapped(next_)) not in targets:
        return None
    deadline = serving.guard.deadline
    return HedgeWatch(
        interims=deadline.gaps, endpoints=deadline.endpoints, prior_s=deadline.settings.hedge_s
    )


def _unwrapped(member: stt.STT[Any]) -> stt.STT[Any]:
    """The plugin behind LiveKit's ``StreamAdapter`` and our guard."""
    while True:
        if isinstance(member, stt.StreamAdapter):
            member = member.wrapped_stt
        elif isinstance(member, GuardedSTT):
            member = member.inner
        else:
            return member


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _price(entry: Provider, spec: ProviderSpec) -> float:
    """``extra["price_per_unit_usd"]`` overrides the catalog's list price."""
    raw = spec.extra.get("price_per_unit_usd")
    if raw is None or raw == "":
        return entry.price_per_unit_usd
    try:
        price = float(raw)
    except ValueError:
        raise ProviderUnusableError(
            f"{spec.key}: price_per_unit_usd={raw!r} is not a number (USD per {entry.cost_unit})"
        ) from None
    if price < 0:
        raise ProviderUnusableError(f"{spec.key}: price_per_unit_usd must be >= 0, got {price}")
    return price


def _ordered(slot: Slot, specs: Sequence[ProviderSpec]) -> list[ProviderSpec]:
    """The slot's specs in the order given, the floor moved (or added) to the end.

    Only the floor is moved: a local provider placed between cloud ones (the seed's
    cartesia -> local-tts -> elevenlabs -> free-tts) is a deliberate quality choice.
    """
    mine = [s for s in specs if s.slot == slot]
    for s in mine:
        definition_for(s)  # unknown names fail loudly, naming the choices
    floor = CATALOG.floor(slot)
    ordered = [s for s in mine if s.name != floor]
    floors = [s for s in mine if s.name == floor] or [ProviderSpec(slot=slot, name=floor)]
    return [*ordered, floors[0]]


def _wrap(
    entry: Provider, plugin: stt.STT[Any] | llm.LLM[Any] | tts.TTS[Any], guard: Guard
) -> Guarded:
    if isinstance(plugin, llm.LLM):
        return GuardedLLM(plugin, guard, probe_kwargs=dict(entry.probe_kwargs))
    if isinstance(plugin, tts.TTS):
        return GuardedTTS(plugin, guard)
    return GuardedSTT(plugin, guard)
