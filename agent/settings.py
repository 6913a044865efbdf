"""Typed settings, validated once at start-up from the environment and ``.env``.

A bad value must stop the process with one line that names the variable, what is wrong with it
and how to fix it, without ever echoing a secret: :func:`load_settings` turns pydantic's
validation errors into such lines (:class:`SettingsError`).

The provider settings (keys, base URLs, models, voices, options) are not written here: each
provider's definition declares them (:mod:`plugins.providers`), and :data:`Settings` is this
module's :class:`CoreSettings` plus one field per declared option, made when the module is
imported, after the catalog discovered installed provider packages. Their defaults therefore
exist once, in the definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from plugins.catalog import CATALOG, SLOTS
from plugins.providers.definition import Option
from plugins.providers.pool import PoolError, split_pool
from plugins.spec import ProviderSpec, Slot

ProviderList = Annotated[list[str], NoDecode]
ProviderAmounts = Annotated[dict[str, float], NoDecode]
EqualGroups = Annotated[list[tuple[str, tuple[str, ...]]], NoDecode]

_SECRET_FIELDS = frozenset(
    {
        "livekit_api_key",
        "livekit_api_secret",
        "ghl_api_key",
        "encryption_key",
        "encryption_key_previous",
    }
    | {o.field for o in CATALOG.options() if o.kind == "secret"}
)

#: Base URLs that may list several endpoints of one provider (a regional pool).
_POOL_URLS = frozenset(p.base_url.env for p in CATALOG.providers.values() if p.base_url)


def _split_providers(value: Any, slot: Slot) -> list[str]:
    if isinstance(value, str):
        names = [n.strip().lower() for n in value.split(",") if n.strip()]
    else:
        names = [str(n).strip().lower() for n in value]
    if not names:
        raise ValueError(
            f"is empty; list {slot.upper()} providers in order, e.g. "
            f"{','.join(CATALOG.default_order[slot])}"
        )
    known = CATALOG.known(slot)
    for name in names:
        if name not in known:
            broken = (
                f" (provider plugins that failed to load: {', '.join(sorted(CATALOG.broken))})"
                if CATALOG.broken
                else ""
            )
            raise ValueError(
                f"names unknown {slot.upper()} provider {name!r}; "
                f"choose from {', '.join(known)}{broken}"
            )
    if len(set(names)) != len(names):
        raise ValueError("lists a provider twice; name each provider once")
    return names


def _parse_amounts(value: Any) -> dict[str, float]:
    """``tts:cartesia=50, llm:openai=20`` -> {"tts:cartesia": 50.0, "llm:openai": 20.0}."""
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = []
        for part in str(value).split(","):
            if not part.strip():
                continue
            name, sep, amount = part.partition("=")
            if not sep:
                raise ValueError(f"entry {part.strip()!r} has no '='; write slot:provider=amount")
            items.append((name, amount))
    out: dict[str, float] = {}
    for name, amount in items:
        key = str(name).strip().lower()
        slot, _, member = key.partition(":")
        provider, hashed, index = member.partition("#")
        if hashed and not index.isdigit():
            raise ValueError(f"names {key!r}; a pool member is slot:provider#N, e.g. llm:openai#2")
        if slot not in SLOTS or CATALOG.get(slot, provider) is None:  # type: ignore[arg-type]
            raise ValueError(
                f"names unknown provider {key!r}; write slot:provider, e.g. tts:cartesia"
            )
        try:
            number = float(amount)
        except (TypeError, ValueError):
            raise ValueError(f"amount for {key} is not a number: {amount!r}") from None
        if number < 0:
            raise ValueError(f"amount for {key} is negative; use 0 or more")
        out[key] = number
    return out


class CoreSettings(BaseSettings):
    """Every knob of the agent but the providers' own. Field ``foo_bar`` is env var ``FOO_BAR``."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=False,
    )

    # -- provider chains ------------------------------------------------------------------
    stt_providers: ProviderList = Field(default_factory=lambda: list(CATALOG.default_order["stt"]))
    llm_providers: ProviderList = Field(default_factory=lambda: list(CATALOG.default_order["llm"]))
    tts_providers: ProviderList = Field(default_factory=lambda: list(CATALOG.default_order["tts"]))

    # -- LiveKit ----------------------------------------------------------------------------
    livekit_url: str | None = None
    livekit_api_key: SecretStr | None = None
    livekit_api_secret: SecretStr | None = None
    agent_name: str = "never-silent-sales"
    # a worker that cannot register with LiveKit this long after it starts stops with one line
    # and exit 1 (a crash loop an operator sees) instead of retrying silently for ever
    livekit_register_timeout: float = Field(default=30.0, gt=0, le=3600)

    # -- CRM and journal ----------------------------------------------------------------------
    ghl_api_key: SecretStr | None = None
    ghl_location_id: str | None = None
    ghl_calendar_id: str | None = None
    ghl_base_url: AnyHttpUrl = AnyHttpUrl("https://services.leadconnectorhq.com")
    ghl_timezone: str = "America/New_York"
    encryption_key: SecretStr | None = None
    # the key the journal was written with before ENCRYPTION_KEY was rotated (read, re-encrypted)
    encryption_key_previous: SecretStr | None = None

    # -- resilience and health ----------------------------------------------------------------
    data_dir: Path = Path("data")
    redis_url: str | None = None
    health_check_interval: float = Field(default=30.0, gt=0)
    llm_first_token_timeout: float = Field(default=0.8, gt=0, le=30)
    tts_first_audio_timeout: float = Field(default=0.8, gt=0, le=30)
    stt_first_result_timeout: float = Field(default=1.5, gt=0, le=60)
    stt_stall_timeout: float = Field(default=3.0, gt=0, le=60)
    hedge_requests: bool = False
    prewarm_connections: bool = True
    provider_budgets_usd: ProviderAmounts = Field(default_factory=dict)
    provider_prices_usd: ProviderAmounts = Field(default_factory=dict)
    budget_period: Literal["day", "month"] = "month"
    prefer_cheapest: bool = False
    # providers of one slot that are equals, served closest first: llm:openrouter+openai
    equal_providers: EqualGroups = Field(default_factory=list)
    # traffic shares of the members of a pool: llm:openai#1=2,llm:openai#2=1 (default equal)
    provider_weights: ProviderAmounts = Field(default_factory=dict)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    health_port: int = Field(default=8081, ge=0, le=65535)  # 0: any free port (tests)
    drain_timeout: int = Field(default=540, ge=0, le=7200)
    load_threshold: float = Field(default=0.75, gt=0, le=1)
    log_format: Literal["auto", "json", "console"] = "auto"
    # one shared process per worker runs the local models (local-stt, local-tts) for every call
    local_speech_service: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        level = v.strip().upper()
        return "WARNING" if level == "WARN" else level

    @property
    def livekit_log_level(self) -> str:
        """LOG_LEVEL as LiveKit's CLI spells it (it knows WARN, not WARNING)."""
        return "WARN" if self.log_level == "WARNING" else self.log_level

    @field_validator("log_format", "budget_period", mode="before")
    @classmethod
    def _lower_choice(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("stt_providers", mode="before")
    @classmethod
    def _stt(cls, v: Any) -> list[str]:
        return _split_providers(v, "stt")

    @field_validator("llm_providers", mode="before")
    @classmethod
    def _llm(cls, v: Any) -> list[str]:
        return _split_providers(v, "llm")

    @field_validator("tts_providers", mode="before")
    @classmethod
    def _tts(cls, v: Any) -> list[str]:
        return _split_providers(v, "tts")

    @field_validator("provider_budgets_usd", "provider_prices_usd", mode="before")
    @classmethod
    def _amounts(cls, v: Any) -> dict[str, float]:
        return _parse_amounts(v)

    @field_validator("provider_weights", mode="before")
    @classmethod
    def _weights(cls, v: Any) -> dict[str, float]:
        weights = _parse_amounts(v)
        for key, weight in weights.items():
            if weight <= 0:
                raise ValueError(f"weight for {key} must be above 0 (unlist a member instead)")
        return weights

    @field_validator("equal_providers", mode="before")
    @classmethod
    def _equals(cls, v: Any) -> list[tuple[str, tuple[str, ...]]]:
        return _parse_equals(v)

    @field_validator("encryption_key", "encryption_key_previous")
    @classmethod
    def _encryption_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or v.get_secret_value() == "":
            return None
        length = len(v.get_secret_value())
        if length != 32:
            raise ValueError(
                f"must be exactly 32 characters (it has {length}); generate one with "
                "python -c 'import secrets; print(secrets.token_hex(16))'"
            )
        return v

    @field_validator("livekit_url")
    @classmethod
    def _livekit_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        v = v.strip()
        if not v.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError("must start with wss:// (or ws:// for a local server)")
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 (a port that is not a number raises here)
        except ValueError:
            raise ValueError(
                "is not a valid URL; write it as wss://your-project.livekit.cloud"
            ) from None
        if not parts.hostname or " " in v:
            raise ValueError("names no host; write it as wss://your-project.livekit.cloud")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis:// or rediss://, e.g. redis://localhost:6379/0")
        return v or None

    # -- derived ------------------------------------------------------------------------------
    def journal_previous_keys(self) -> list[str]:
        previous = self.secret("encryption_key_previous")
        return [previous] if previous else []

    def secret(self, name: str) -> str | None:
        value = getattr(self, name)
        if value is None:
            return None
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        return raw or None

    def provider_specs(self, slot: Slot) -> list[ProviderSpec]:
        """The configured chain for one slot, in order, a key pool as one spec per member.
        Keys may be missing: the chain builder skips such providers with one log line."""
        order = {"stt": self.stt_providers, "llm": self.llm_providers, "tts": self.tts_providers}
        groups = {
            name: "+".join(names)
            for group_slot, names in self.equal_providers
            if group_slot == slot
            for name in names
        }
        specs: list[ProviderSpec] = []
        for name in order[slot]:
            members = CATALOG.lookup(slot, name).specs(self.option)
            members = [
                replace(m, weight=self.provider_weights[m.key])
                if m.key in self.provider_weights
                else m
                for m in members
            ]
            if name in groups:
                members = [replace(m, tier=groups[name], balance="closest") for m in members]
            specs.extend(members)
        return specs

    def pool_problems(self) -> list[str]:
        """One line per malformed key or endpoint pool (the variable named, never a key)."""
        problems: list[str] = []
        seen: set[str] = set()
        for provider in CATALOG.providers.values():
            try:
                provider.specs(self.option)
            except PoolError as e:
                line = f"Invalid setting {e.env}: {e.problem}"
                if line not in seen:
                    seen.add(line)
                    problems.append(line)
        members = (
            {s.key for slot in SLOTS for s in self.provider_specs(slot)} if not problems else set()
        )
        for key in self.provider_weights:
            if members and key not in members:
                problems.append(
                    f"Invalid setting PROVIDER_WEIGHTS: {key} is not a configured provider; "
                    "pool members are named slot:provider#N, e.g. llm:openai#2 (see `status`)"
                )
        for slot, names in self.equal_providers:
            order = getattr(self, f"{slot}_providers")
            where = [order.index(n) for n in names if n in order]
            if len(where) == len(names) and max(where) - min(where) != len(names) - 1:
                problems.append(
                    f"Invalid setting EQUAL_PROVIDERS: {slot}:{'+'.join(names)} are not next to "
                    f"each other in {slot.upper()}_PROVIDERS; equals must be neighbours"
                )
        return problems

    def with_options(self, values: Mapping[str, str | None]) -> Self:
        """A copy with provider settings replaced, by variable name (``None`` unsets one)."""
        by_env = {o.env: o for o in CATALOG.options()}
        update: dict[str, Any] = {}
        for env, value in values.items():
            option = by_env.get(env)
            if option is None:
                raise ValueError(f"no provider reads a setting named {env}")
            update[option.field] = None if value is None else _typed(option, value)
        return self.model_copy(update=update)

    def option(self, option: Option) -> str | None:
        """One provider setting as text (a secret revealed, a URL without its trailing /)."""
        value = getattr(self, option.field, None)
        if value is None:
            return None
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
        elif isinstance(value, AnyHttpUrl):
            raw = str(value).rstrip("/")
        else:
            raw = str(value)
        return raw or None


def _parse_equals(value: Any) -> list[tuple[str, tuple[str, ...]]]:
    """``llm:openrouter+openai, tts:cartesia+elevenlabs`` -> [("llm", ("openrouter", "openai")), ...]."""
    raw = value if isinstance(value, list) else str(value).split(",")
    out: list[tuple[str, tuple[str, ...]]] = []
    grouped: set[str] = set()
    for part in raw:
        if isinstance(part, tuple):
            out.append(part)
            continue
        text = str(part).strip().lower()
        if not text:
            continue
        slot, sep, rest = text.partition(":")
        names = tuple(n.strip() for n in rest.split("+"))
        if not sep or slot not in SLOTS or len(names) < 2 or not all(names):
            raise ValueError(
                f"entry {text!r} is not slot:provider+provider, e.g. llm:openrouter+openai"
            )
        for name in names:
            if CATALOG.get(slot, name) is None:  # type: ignore[arg-type]
                raise ValueError(f"entry {text!r} names unknown {slot} provider {name!r}")
            if f"{slot}:{name}" in grouped:
                raise ValueError(f"lists {slot}:{name} in two groups; give each provider one")
            grouped.add(f"{slot}:{name}")
        out.append((slot, names))
    return out


def _url_pool(env: str) -> Any:
    """A base URL, or several comma-separated (a regional pool), each a valid http(s) URL."""

    def check(value: Any) -> str | None:
        if value is None:
            return None
        try:
            parts = split_pool(str(value), env, what="URL")
        except PoolError as e:
            raise ValueError(e.problem) from None
        urls = []
        for n, part in enumerate(parts, 1):
            try:
                urls.append(str(AnyHttpUrl(part)).rstrip("/"))
            except ValidationError:
                where = f"entry {n} of {len(parts)} " if len(parts) > 1 else ""
                raise ValueError(
                    f"{where}is not a valid URL (got {part!r}); give a full URL such as "
                    "https://host.example/path (several endpoints: comma-separated)"
                ) from None
        return ",".join(urls) or None

    return BeforeValidator(check)


def _typed(option: Option, value: str) -> Any:
    if option.kind == "secret":
        return SecretStr(value)
    if option.kind == "url" and option.env in _POOL_URLS:
        return value
    if option.kind == "url":
        return AnyHttpUrl(value)
    if option.kind == "file":
        return Path(value)
    return value


def _is_file(env: str) -> Any:
    def check(path: Path | None) -> Path | None:
        if path is not None and str(path) and not path.is_file():
            raise ValueError(
                f"points to {str(path)!r}, which is not a file; give the path of the file or unset {env}"
            )
        return path

    return AfterValidator(check)


def _field(option: Option) -> tuple[Any, Any]:
    """The pydantic field of one provider option: its type, default and description."""
    described = Field(default=option.default, description=option.help)
    if option.kind == "secret":
        return SecretStr | None, described
    if option.kind == "url" and option.env in _POOL_URLS:
        return Annotated[str | None, _url_pool(option.env)], described
    if option.kind == "url":
        return AnyHttpUrl | None, described
    if option.kind == "file":
        return Annotated[Path | None, _is_file(option.env)], described
    return (str if option.default is not None else str | None), described


def _compose() -> type[CoreSettings]:
    fields = {o.field: _field(o) for o in CATALOG.options()}
    clash = sorted(set(fields) & set(CoreSettings.model_fields))
    if clash:
        raise ValueError(f"provider settings {', '.join(clash)} clash with the agent's own")
    return create_model(  # type: ignore[call-overload, no-any-return]
        "Settings", __base__=CoreSettings, __module__=__name__, **fields
    )


if TYPE_CHECKING:
    Settings = CoreSettings
else:
    Settings = _compose()


class SettingsError(Exception):
    """A setting is invalid. ``str(e)`` is one line per problem, safe to print (no secrets)."""


def _describe(error: dict[str, Any]) -> str:
    loc = error.get("loc") or ("?",)
    variable = str(loc[0]).upper()
    msg = str(error.get("msg", "is invalid"))
    msg = msg.removeprefix("Value error, ")
    kind = str(error.get("type", ""))
    if kind == "url_parsing" or kind.startswith("url_"):
        msg = f"is not a valid URL ({msg}); give a full URL such as https://host.example/path"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        msg = f"is out of range: {msg.lower()}"
    elif kind == "bool_parsing":
        msg = "is not a boolean: write true or false"
    elif kind in ("float_parsing", "int_parsing"):
        msg = f"is not a number: {msg.lower()}"
    elif kind == "literal_error":
        msg = f"is not allowed: {msg.lower()}"
    if str(loc[0]) not in _SECRET_FIELDS and "input" in error and kind != "value_error":
        shown = str(error["input"])
        if len(shown) <= 80:
            msg = f"{msg} (got {shown!r})"
    return f"Invalid setting {variable}: {msg}"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings; raise :class:`SettingsError` with one line per problem."""
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        raise SettingsError("\n".join(_describe(dict(err)) for err in e.errors())) from None
    problems = settings.pool_problems()
    if problems:
        raise SettingsError("\n".join(problems))
    return settings
