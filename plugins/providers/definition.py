"""What a provider *is*: one :class:`Provider` per (slot, name), the single source of its facts.

A definition owns the builder of its LiveKit plugin, the settings it reads (key, base URL,
model, voice, options, each with its one default), its list price, its account/credit check,
the error wording it speaks, its simulator and the LiveKit plugin modules it needs. Settings,
the catalog, ``doctor``, the credit reader, ``status`` and ``simulate`` are derived from these
definitions, so two places can never disagree about a default. Third parties add providers the
same way, through the entry-point group ``never_silent.providers`` (see :mod:`plugins.catalog`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
from livekit.agents import llm, stt, tts

from plugins.local.responder import Responder
from plugins.observability.account import CreditReport
from plugins.providers.pool import pool_specs
from plugins.resilience.guard import UNIT_LLM, UNIT_STT, UNIT_TTS
from plugins.resilience.headroom import RateLimitSignal
from plugins.resilience.phrases import ErrorPhrases
from plugins.resilience.response_tap import ResponseTap
from plugins.sim.faults import SimState
from plugins.sim.llm_script import ReplyFn
from plugins.spec import ProviderSpec, Slot

Plugin = stt.STT[Any] | llm.LLM[Any] | tts.TTS[Any]
OptionKind = Literal["text", "secret", "url", "file"]

COST_UNITS: dict[Slot, str] = {"stt": UNIT_STT, "llm": UNIT_LLM, "tts": UNIT_TTS}


class ProviderUnusableError(ValueError):
    """The spec cannot build this provider (missing key or credentials, bad option)."""


@dataclass(frozen=True)
class BuildContext:
    """What a builder may use besides the spec.

    ``http_session``: for aiohttp-based plugins, a session the chain traces (to read the
    headers of error responses); None lets the plugin use LiveKit's job-wide session.
    ``tap``: OpenAI-SDK plugins give their client the tap's response hook.
    """

    http_session: aiohttp.ClientSession | None = None
    tap: ResponseTap | None = None
    responder: Responder | None = None  # what free-llm says: the application's, if it has one


Builder = Callable[[ProviderSpec, BuildContext], Plugin]
CreditCheck = Callable[[ProviderSpec, aiohttp.ClientSession, str], Awaitable[CreditReport]]


@dataclass(frozen=True)
class Option:
    """One setting a provider reads: its environment variable, meaning and only default.

    ``kind`` decides validation: ``secret`` is never echoed, ``url`` must parse as a URL,
    ``file`` must name an existing file. Two providers may share an option (``OPENAI_API_KEY``
    serves the OpenAI LLM and Whisper) by declaring the same one.
    """

    env: str
    help: str
    default: str | None = None
    kind: OptionKind = "text"

    @property
    def field(self) -> str:
        """The settings attribute: ``DEEPGRAM_API_KEY`` -> ``deepgram_api_key``."""
        return self.env.lower()


class SimServer(Protocol):
    """A simulator of a provider's API (``plugins/sim``), as ``simulate`` drives it."""

    state: SimState

    @property
    def base_url(self) -> str: ...

    async def start(self, host: str = ..., port: int = ...) -> Any: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class SimOptions:
    """What the application tells every simulator it starts."""

    reply: ReplyFn | None = None  # what simulated LLMs answer (None: the generic FAQ floor)


@dataclass(frozen=True)
class SimulatorHook:
    """How ``simulate`` points the provider at its simulator.

    ``name`` is the simulator's (one simulator may serve several providers: ``openai`` is the
    OpenAI LLM and Whisper). ``make`` builds it, unstarted. ``settings(url, key)`` gives the
    settings that aim the provider at a running simulator; by default its key and base URL.
    """

    name: str
    make: Callable[[SimOptions], SimServer]
    settings: Callable[[str, str], Mapping[str, str]] | None = None


@dataclass(frozen=True)
class Provider:
    """One provider in one slot: everything the project knows about it, defined once."""

    slot: Slot
    name: str
    build: Builder
    summary: str  # one line: what it is
    price_per_unit_usd: float = 0.0  # list price per COST_UNITS[slot]; settings may override
    api_key: Option | None = None  # None: needs no key
    base_url: Option | None = None
    default_base_url: str | None = None  # the public API, when base_url is not set
    model: Option | None = None  # model.default is the default model
    voice: Option | None = None
    options: Mapping[str, Option] = field(default_factory=dict)  # spec.extra[name] <- option
    local: bool = False  # needs no network
    floor: bool = False  # the local provider that ends the slot's chain, never guarded off
    uses_aiohttp: bool = False  # the chain hands it a traced aiohttp session
    probe_kwargs: Mapping[str, Any] = field(default_factory=dict)  # LLM: a 1-token probe
    credit: CreditCheck | None = None  # one read-only account API request
    offline_check: Callable[[ProviderSpec], str | None] | None = None  # doctor: problem or None
    usable: Callable[[ProviderSpec], bool] | None = None  # enabled? default: api_key is set
    key_help: str = ""  # what enables it, when more than its api_key does
    errors: ErrorPhrases = field(default_factory=ErrorPhrases)  # joined with the generic ones
    simulator: SimulatorHook | None = None
    plugin_modules: tuple[str, ...] = ()  # LiveKit plugins: must be imported on the main thread
    #: work done once where the worker starts, before it forks job processes (which inherit
    #: it): what the provider's SDK would otherwise do lazily, at every call's first turn
    preload: Callable[[], None] | None = None
    #: the rate-limit headers its responses carry (headroom for the balancer), if any
    rate_limits: tuple[RateLimitSignal, ...] = ()

    def __post_init__(self) -> None:
        if self.slot not in COST_UNITS:
            raise ValueError(f"provider {self.name!r}: slot must be stt, llm or tts")
        if not self.name or self.name != self.name.strip().lower() or "," in self.name:
            raise ValueError(f"provider name {self.name!r}: use lower case, no commas or spaces")
        if self.floor and not self.local:
            raise ValueError(f"{self.id}: a floor provider must be local")

    @property
    def id(self) -> str:
        """``slot:name``, the health store's key (same as :attr:`ProviderSpec.key`)."""
        return f"{self.slot}:{self.name}"

    @property
    def cost_unit(self) -> str:
        return COST_UNITS[self.slot]

    @property
    def needs_key(self) -> bool:
        return self.api_key is not None

    @property
    def default_model(self) -> str | None:
        return self.model.default if self.model else None

    @property
    def key_hint(self) -> str:
        """The setting that enables it, for the one "skipped" log line."""
        return self.key_help or (self.api_key.env if self.api_key else "")

    def settings_options(self) -> tuple[Option, ...]:
        """Every setting this provider reads, in a stable order."""
        named = (self.api_key, self.base_url, self.model, self.voice)
        return tuple(o for o in (*named, *self.options.values()) if o is not None)

    def spec(self, value: Callable[[Option], str | None]) -> ProviderSpec:
        """The spec these settings give; ``value`` reads one option (None when unset).

        The one place a spec is made from settings; :meth:`specs` splits a key pool of it.
        """

        def read(option: Option | None) -> str | None:
            return None if option is None else value(option)

        extra = {name: v for name, o in self.options.items() if (v := value(o)) is not None}
        return ProviderSpec(
            self.slot,
            self.name,
            base_url=read(self.base_url),
            model=read(self.model),
            voice=read(self.voice),
            api_key=read(self.api_key),
            extra=extra,
        )

    def specs(self, value: Callable[[Option], str | None]) -> list[ProviderSpec]:
        """The members these settings give: one spec, or one per key or endpoint of a pool
        (``OPENAI_API_KEY=sk-a,sk-b``). Raises :class:`~plugins.providers.pool.PoolError`
        naming the variable when a pool setting is malformed."""
        return pool_specs(
            self.spec(value),
            key_env=self.api_key.env if self.api_key and self.api_key.kind == "secret" else None,
            url_env=self.base_url.env if self.base_url else None,
        )

    def has_key(self, spec: ProviderSpec) -> bool:
        if self.usable is not None:
            return self.usable(spec)
        if not self.needs_key:
            return True
        return bool(spec.api_key and spec.api_key.strip())

    def endpoint(self, spec: ProviderSpec) -> str:
        """The base URL this spec talks to (configured, else the public API)."""
        return (spec.base_url or self.default_base_url or "").rstrip("/")


def extra_float(spec: ProviderSpec, name: str) -> float | None:
    """A numeric ``spec.extra`` option, or None; a clear error when it is not a number."""
    value = spec.extra.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise ProviderUnusableError(
            f"{spec.key}: extra option {name}={value!r} is not a number"
        ) from None
