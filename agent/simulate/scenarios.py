"""The seed's test scenarios as data: which simulator fails how, and what the call must show.

A scenario is a caller script, a list of faults (simulator, fault, mode, when) and the switches
the chains are expected to make. Keeping them as data lets ``simulate --list`` describe them,
the runner inject them and the tests assert the same expectations the runner checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from plugins.catalog import CATALOG
from plugins.sim.faults import Fault, FaultType

SimName = str
"""A simulator's name, as a provider definition's simulator hook gives it."""

SIMULATORS: tuple[SimName, ...] = tuple(CATALOG.simulators())
"""Every cloud simulator a call runs against (``openai`` also serves Whisper STT)."""

#: The providers (slot, name) each simulator stands in for.
SIM_PROVIDERS: dict[SimName, tuple[tuple[str, str], ...]] = {
    sim: tuple((p.slot, p.name) for p in CATALOG.served_by(sim)) for sim in SIMULATORS
}

Mode = Literal["once", "always", "window", "flapping"]


@dataclass(frozen=True)
class FaultStep:
    """One fault rule given to one simulator's plan before caller turn ``before_turn``.

    ``before_turn=0`` injects it before the call starts (so even the greeting is affected);
    ``1`` just before the caller's first line, and so on.
    """

    sim: SimName
    fault: Fault
    mode: Mode = "always"
    times: int = 1  # once
    down_s: float = 0.0  # flapping: down this long, then healthy for up_s
    up_s: float = 3600.0
    start_in_s: float = 0.0  # window
    duration_s: float = 0.0  # window
    before_turn: int = 0

    def describe(self) -> str:
        what = self.fault.type.value
        if self.fault.status:
            what += f" {self.fault.status}"
        if self.fault.retry_after_s is not None:
            what += f" (Retry-After {self.fault.retry_after_s:g} s)"
        if self.fault.type in (FaultType.CUT, FaultType.STALL):
            what += f" after {self.fault.after_chunks} chunk(s)"
        when = {
            "once": f"{self.times} request(s)",
            "always": "every request",
            "window": f"for {self.duration_s:g} s",
            "flapping": f"down {self.down_s:g} s, then healthy",
        }[self.mode]
        return f"{self.sim}: {what}, {when}"


@dataclass(frozen=True)
class ExpectedSwitch:
    """A switch the call must show: ``slot`` moved off ``from_provider`` (to ``to_provider``).

    ``None`` matches any provider; a switch *to* the primary is a recovery.
    """

    slot: str
    from_provider: str | None
    to_provider: str | None = None

    def matches(self, slot: str, from_provider: str | None, to_provider: str) -> bool:
        return (
            slot == self.slot
            and (self.from_provider is None or self.from_provider == from_provider)
            and (self.to_provider is None or self.to_provider == to_provider)
        )

    def describe(self) -> str:
        return f"{self.slot.upper()} {self.from_provider or 'any'} -> {self.to_provider or 'next'}"


DEFAULT_CALLER: tuple[str, ...] = (
    "Hi, I'd like to know your pricing.",
    "My name is John Smith.",
    "My number is five five five, one two three, four five six seven, "
    "and my email is john at example dot com.",
    "Tomorrow morning works for me.",
    "Yes, that's right.",
)
"""A short sales call: a question, the caller's name and number, a time, a confirmation."""


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str  # one line for --list
    faults: tuple[FaultStep, ...] = ()
    expect: tuple[ExpectedSwitch, ...] = ()
    # slots that must end the call on local providers only (all-paid-fail)
    local_only: tuple[str, ...] = ()
    # slots whose provider must be the same at the end as at the start (recovery)
    back_on_primary: tuple[str, ...] = ()
    caller: tuple[str, ...] = field(default=DEFAULT_CALLER)


def _always(sim: SimName, fault: Fault) -> FaultStep:
    return FaultStep(sim, fault, "always")


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "normal",
            "every provider healthy: the primaries (Deepgram, OpenRouter, Cartesia) carry the call",
        ),
        Scenario(
            "tts-quota-exceeded",
            "Cartesia answers with its out-of-credits error: TTS moves off Cartesia",
            faults=(_always("cartesia", Fault(FaultType.QUOTA)),),
            expect=(ExpectedSwitch("tts", "cartesia"),),
        ),
        Scenario(
            "stt-api-error",
            "Deepgram refuses with 503: STT moves to Google",
            faults=(_always("deepgram", Fault(FaultType.STATUS, status=503)),),
            expect=(ExpectedSwitch("stt", "deepgram", "google"),),
        ),
        Scenario(
            "llm-rate-limit",
            "OpenRouter answers 429 with Retry-After: LLM moves to OpenAI",
            faults=(_always("openrouter", Fault(FaultType.STATUS, status=429, retry_after_s=60)),),
            expect=(ExpectedSwitch("llm", "openrouter"),),
        ),
        Scenario(
            "all-paid-fail",
            "every cloud provider fails (quota, 5xx, 429, reset): the free providers answer",
            faults=(
                _always("deepgram", Fault(FaultType.STATUS, status=503)),
                _always("google-stt", Fault(FaultType.QUOTA)),
                _always("openai", Fault(FaultType.STATUS, status=500)),
                _always("openrouter", Fault(FaultType.STATUS, status=429)),
                _always("gemini", Fault(FaultType.RESET)),
                _always("cartesia", Fault(FaultType.QUOTA)),
                _always("elevenlabs", Fault(FaultType.QUOTA)),
            ),
            expect=(
                ExpectedSwitch("stt", "deepgram"),
                ExpectedSwitch("llm", "openrouter"),
                ExpectedSwitch("tts", "cartesia"),
            ),
            local_only=("stt", "llm", "tts"),
        ),
        Scenario(
            "provider-hang",
            "OpenRouter accepts the request and never answers: abandoned at the first-token "
            "deadline, LLM moves on",
            faults=(_always("openrouter", Fault(FaultType.HANG)),),
            expect=(ExpectedSwitch("llm", "openrouter"),),
        ),
        Scenario(
            "mid-stream-cut",
            "OpenRouter's stream is cut after a few tokens: the next LLM continues the reply "
            "from the words already said",
            faults=(
                FaultStep(
                    "openrouter",
                    Fault(FaultType.CUT, after_chunks=3),
                    "once",
                    times=1,
                    before_turn=1,
                ),
            ),
            expect=(ExpectedSwitch("llm", "openrouter"),),
        ),
        Scenario(
            "tts-cut",
            "Cartesia's audio is cut a second into an answer: the next voice resumes at the "
            "first sentence not yet spoken",
            faults=(
                FaultStep(
                    "cartesia",
                    Fault(FaultType.CUT, after_chunks=25),
                    "once",
                    times=1,
                    before_turn=1,
                ),
            ),
            expect=(ExpectedSwitch("tts", "cartesia"),),
        ),
        Scenario(
            "tts-silent",
            "Cartesia answers with well-formed silence: counted as a failure, the next voice "
            "speaks the answer",
            faults=(FaultStep("cartesia", Fault(FaultType.SILENT), "once", before_turn=1),),
            expect=(ExpectedSwitch("tts", "cartesia"),),
        ),
        Scenario(
            "stt-stall",
            "Deepgram stops transcribing while the caller speaks: the utterance is replayed to "
            "the next recogniser, so the caller's words are not lost",
            faults=(
                FaultStep(
                    "deepgram",
                    Fault(FaultType.STALL, after_chunks=0),
                    "once",
                    times=1,
                    before_turn=1,
                ),
            ),
            expect=(ExpectedSwitch("stt", "deepgram"),),
        ),
        Scenario(
            "llm-empty",
            "OpenRouter answers with an empty reply: counted as a failure, the next LLM answers",
            faults=(FaultStep("openrouter", Fault(FaultType.EMPTY), "once", before_turn=1),),
            expect=(ExpectedSwitch("llm", "openrouter"),),
        ),
        Scenario(
            "flapping",
            "OpenRouter is down for 4 s, then healthy: LLM falls back, then returns to OpenRouter",
            faults=(
                FaultStep(
                    "openrouter",
                    Fault(FaultType.STATUS, status=503),
                    "flapping",
                    down_s=4.0,
                    before_turn=1,
                ),
            ),
            expect=(
                ExpectedSwitch("llm", "openrouter"),
                ExpectedSwitch("llm", None, "openrouter"),
            ),
            back_on_primary=("llm",),
        ),
    )
}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(
            f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)} "
            "(python -m agent simulate --list describes them)"
        ) from None
