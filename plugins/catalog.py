"""Every provider the chains know: the built-in definitions, then those installed packages add.

Built-ins live in :mod:`plugins.providers` (one module per vendor). A package adds providers by
declaring an entry point in the group ``never_silent.providers`` whose object is a
:class:`~plugins.providers.definition.Provider`, a sequence of them, or a function returning
either; once installed, its names work in ``TTS_PROVIDERS`` etc., ``doctor`` and ``status``.
The catalog is read once, when this module is imported. A package that fails to load is left
out, logged once when the worker starts, shown by ``doctor`` and named in the error of any
setting that asks for it, so a broken plugin never stops a worker that does not use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import structlog

from plugins.providers import cartesia, deepgram, elevenlabs, google, local, openai, openrouter
from plugins.providers.definition import (
    Option,
    Provider,
    ProviderUnusableError,
    SimulatorHook,
)
from plugins.spec import ProviderSpec, Slot

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "never_silent.providers"
SLOTS: tuple[Slot, ...] = ("stt", "llm", "tts")

#: The built-in providers, in each slot's default order (DESIGN.md).
BUILTIN: tuple[Provider, ...] = (
    deepgram.STT,
    google.STT,
    openai.WHISPER,
    local.LOCAL_STT,
    local.FREE_STT,
    openrouter.LLM,
    openai.LLM,
    google.LLM,
    local.FREE_LLM,
    cartesia.TTS,
    local.LOCAL_TTS,
    elevenlabs.TTS,
    local.FREE_TTS,
)


@dataclass(frozen=True)
class Catalog:
    """The providers known in this process, keyed ``slot:name``, built-ins first."""

    providers: Mapping[str, Provider]
    default_order: Mapping[Slot, tuple[str, ...]]
    broken: Mapping[str, str] = field(default_factory=dict)  # entry point -> why not loaded
    origin: Mapping[str, str] = field(default_factory=dict)  # provider id -> distribution

    def known(self, slot: Slot) -> tuple[str, ...]:
        return tuple(p.name for p in self.providers.values() if p.slot == slot)

    def floor(self, slot: Slot) -> str:
        return next(p.name for p in self.providers.values() if p.slot == slot and p.floor)

    @property
    def floors(self) -> dict[Slot, str]:
        return {slot: self.floor(slot) for slot in SLOTS}

    @property
    def local_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.providers.values() if p.local)

    def get(self, slot: Slot, name: str) -> Provider | None:
        return self.providers.get(f"{slot}:{name}")

    def lookup(self, slot: Slot, name: str) -> Provider:
        """The definition, or an error that names the choices (and a plugin that failed)."""
        found = self.get(slot, name)
        if found is not None:
            return found
        raise ProviderUnusableError(self.unknown(slot, name))

    def unknown(self, slot: Slot, name: str) -> str:
        """One line: ``name`` is not a ``slot`` provider; what is."""
        line = f"unknown {slot} provider {name!r}; choose one of {', '.join(self.known(slot))}"
        if self.broken:
            line += f" (plugins that failed to load: {', '.join(sorted(self.broken))})"
        return line

    def options(self) -> tuple[Option, ...]:
        """Every provider setting, once each, in catalog order.

        Providers may share a setting (``OPENAI_API_KEY``) only by declaring the same one.
        """
        seen: dict[str, Option] = {}
        for provider in self.providers.values():
            for option in provider.settings_options():
                other = seen.setdefault(option.env, option)
                if other != option:
                    raise ValueError(
                        f"{provider.id} declares {option.env} differently from another provider"
                    )
        return tuple(seen.values())

    def simulators(self) -> dict[str, SimulatorHook]:
        """Each simulator once (one may serve several providers), in catalog order."""
        hooks: dict[str, SimulatorHook] = {}
        for provider in self.providers.values():
            if provider.simulator is not None:
                hooks.setdefault(provider.simulator.name, provider.simulator)
        return hooks

    def served_by(self, simulator: str) -> tuple[Provider, ...]:
        return tuple(
            p
            for p in self.providers.values()
            if p.simulator is not None and p.simulator.name == simulator
        )

    def plugin_modules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for p in self.providers.values() for m in p.plugin_modules))


def _as_providers(loaded: object) -> list[Provider]:
    if callable(loaded) and not isinstance(loaded, Provider):
        loaded = loaded()
    items: Iterable[object] = [loaded] if isinstance(loaded, Provider) else loaded  # type: ignore[assignment]
    providers = list(items)
    for item in providers:
        if not isinstance(item, Provider):
            raise TypeError(f"gave {type(item).__name__}, not a plugins.providers Provider")
    return providers  # type: ignore[return-value]


def load_catalog(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
) -> Catalog:
    """The built-ins plus every provider the installed packages declare."""
    providers: dict[str, Provider] = {p.id: p for p in BUILTIN}
    origin: dict[str, str] = dict.fromkeys(providers, "built-in")
    broken: dict[str, str] = {}
    found = metadata.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
    for ep in found:
        where = ep.dist.name if ep.dist is not None else ep.value
        try:
            added = _as_providers(ep.load())
        except Exception as e:  # a third party's import error must not stop the worker
            broken[ep.name] = f"{where}: {type(e).__name__}: {e}"
            continue
        for provider in added:
            problem = _refuse(provider, providers)
            if problem:
                broken[ep.name] = f"{where}: {problem}"
                continue
            providers[provider.id] = provider
            origin[provider.id] = where
    order = {s: tuple(p.name for p in BUILTIN if p.slot == s) for s in SLOTS}
    return Catalog(providers, order, broken, origin)


def _refuse(provider: Provider, known: Mapping[str, Provider]) -> str | None:
    if provider.id in known:
        return f"{provider.id} is already defined; pick another name"
    if provider.floor:
        return f"{provider.id}: only the built-in local providers end a chain (floor=True)"
    return None


CATALOG: Catalog = load_catalog()


def import_plugins(catalog: Catalog = CATALOG) -> None:
    """Import every LiveKit plugin a provider may build, and run the providers' preloads.

    LiveKit plugins register themselves on import and refuse to do so off the main thread (the
    console runs jobs in a thread): the worker calls this at start-up, on the main thread.
    Provider packages that failed to load are logged here, once, where a worker starts.
    """
    for name, why in sorted(catalog.broken.items()):
        log.error(
            "provider package failed to load; its providers are left out",
            entry_point=name,
            error=why,
        )
    for module in catalog.plugin_modules():
        importlib.import_module(module)
    preloads = {p.preload: p.name for p in catalog.providers.values() if p.preload is not None}
    for preload, name in preloads.items():  # once each: providers may share one
        try:
            preload()
        except Exception as e:  # each call will do that work itself: slower, not broken
            log.warning("provider preload failed", provider=name, error=str(e))


def definition_for(spec: ProviderSpec, catalog: Catalog = CATALOG) -> Provider:
    """The definition that builds ``spec``: its own factory, else the catalog's entry."""
    if spec.factory is not None:
        return custom_definition(spec)
    return catalog.lookup(spec.slot, spec.name)


def custom_definition(spec: ProviderSpec) -> Provider:
    """A definition for a spec that carries its own factory (or a ready LiveKit plugin).

    Guarded like any cloud provider; it needs a key only if the spec gives one.
    """
    factory = spec.factory

    def build(s: ProviderSpec, ctx: Any) -> Any:
        made = factory(s, ctx) if callable(factory) and not _is_plugin(factory) else factory
        if not _is_plugin(made):
            raise ProviderUnusableError(
                f"{s.key}: the factory gave {type(made).__name__}, not a LiveKit STT/LLM/TTS"
            )
        return made

    return Provider(
        slot=spec.slot,
        name=spec.name,
        build=build,
        summary="custom provider (in code)",
    )


def _is_plugin(value: object) -> bool:
    from livekit.agents import llm, stt, tts

    return isinstance(value, stt.STT | llm.LLM | tts.TTS)
