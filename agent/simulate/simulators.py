"""The cloud simulators a simulated call runs against, and the settings that point at them.

Every cloud provider's real LiveKit plugin is pointed at an in-process simulator of its API
with an obviously fake key, so a call needs no key and no network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pydantic import AnyHttpUrl, SecretStr

from agent.settings import Settings
from agent.simulate.scenarios import SIMULATORS, FaultStep, SimName
from plugins.sim.faults import SimState
from plugins.sim.llm_script import ReplyFn

SIM_KEY = "sim-key"


class Simulator(Protocol):
    state: SimState

    @property
    def base_url(self) -> str: ...

    async def start(self, host: str = ..., port: int = ...) -> Any: ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# what the call produces


def make_simulator(name: SimName) -> Simulator:
    sim: Simulator
    if name == "deepgram":
        from plugins.sim.deepgram_sim import DeepgramSimulator

        sim = DeepgramSimulator()
    elif name == "google-stt":
        from plugins.sim.google_stt_sim import GoogleSttSimulator

        sim = GoogleSttSimulator()
    elif name in ("openai", "openrouter"):
        from plugins.sim.openai_sim import OpenAISimulator

        sim = OpenAISimulator(flavor=name, token_interval_s=0.01, reply=_sales_reply())
    elif name == "gemini":
        from plugins.sim.gemini_sim import GeminiSimulator

        sim = GeminiSimulator(reply=_sales_reply())
    elif name == "cartesia":
        from plugins.sim.cartesia_sim import CartesiaSimulator

        sim = CartesiaSimulator()
    elif name == "elevenlabs":
        from plugins.sim.elevenlabs_sim import ElevenLabsSimulator

        sim = ElevenLabsSimulator()
    else:
        raise ValueError(f"no simulator named {name!r}; known: {', '.join(SIMULATORS)}")
    return sim


def _sales_reply() -> ReplyFn:
    """The simulated cloud LLMs speak the sales script, as the free LLM would."""
    from agent.responder.sales_script import SalesScript

    return SalesScript().reply


def sim_settings(base: Settings, urls: dict[SimName, str], data_dir: Path) -> Settings:
    """``base`` with every cloud provider pointed at its simulator with a fake key.

    Google STT is the real plugin with its client factory pointed at the simulator's plaintext
    gRPC target (the plugin has no endpoint option), authenticated with the API key.
    """
    key = SecretStr(SIM_KEY)
    update: dict[str, Any] = {
        "data_dir": data_dir,
        "redis_url": None,
        "google_application_credentials": None,
        "google_stt_target": None,
        "deepgram_api_key": None,
        "openai_api_key": None,
        "openrouter_api_key": None,
        "google_api_key": None,
        "cartesia_api_key": None,
        "elevenlabs_api_key": None,
    }
    fields = {
        "deepgram": ("deepgram_api_key", "deepgram_base_url"),
        "openai": ("openai_api_key", "openai_base_url"),
        "openrouter": ("openrouter_api_key", "openrouter_base_url"),
        "gemini": ("google_api_key", "google_base_url"),
        "cartesia": ("cartesia_api_key", "cartesia_base_url"),
        "elevenlabs": ("elevenlabs_api_key", "elevenlabs_base_url"),
    }
    for name, url in urls.items():
        if name == "google-stt":  # a gRPC host:port, and the API key it shares with Gemini
            update["google_stt_target"] = url
            update["google_api_key"] = key
            continue
        key_field, url_field = fields[name]
        update[key_field] = key
        update[url_field] = AnyHttpUrl(url)
    return base.model_copy(update=update)


def apply_fault(state: SimState, step: FaultStep) -> None:
    plan = state.plan
    if step.mode == "once":
        plan.once(step.fault, step.times)
    elif step.mode == "always":
        plan.always(step.fault)
    elif step.mode == "window":
        plan.window(step.fault, start_in_s=step.start_in_s, duration_s=step.duration_s)
    elif step.mode == "flapping":
        plan.flapping(step.fault, down_s=step.down_s, up_s=step.up_s)
    else:
        raise ValueError(f"unknown fault mode {step.mode!r}")


# ---------------------------------------------------------------------------------------------
