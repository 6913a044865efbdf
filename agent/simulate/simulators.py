"""The cloud simulators a simulated call runs against, and the settings that point at them.

Every cloud provider's real LiveKit plugin is pointed at an in-process simulator of its API
with an obviously fake key, so a call needs no key and no network. Which simulator stands in
for a provider, and which settings aim the provider at it, is the provider definition's
simulator hook (:class:`plugins.providers.definition.SimulatorHook`).
"""

from __future__ import annotations

from pathlib import Path

from agent.settings import Settings
from agent.simulate.scenarios import SIMULATORS, FaultStep, SimName
from plugins.catalog import CATALOG
from plugins.providers.definition import Provider, SimOptions, SimServer
from plugins.sim.faults import SimState
from plugins.sim.llm_script import ReplyFn

SIM_KEY = "sim-key"

Simulator = SimServer


def make_simulator(name: SimName) -> Simulator:
    hook = CATALOG.simulators().get(name)
    if hook is None:
        raise ValueError(f"no simulator named {name!r}; known: {', '.join(SIMULATORS)}")
    return hook.make(SimOptions(reply=_sales_reply()))


def _sales_reply() -> ReplyFn:
    """The simulated cloud LLMs speak the sales script, as the free LLM would."""
    from agent.responder.sales_script import SalesScript

    return SalesScript().reply


def _aim(provider: Provider, url: str) -> dict[str, str | None]:
    """The settings that point ``provider`` at its simulator at ``url``."""
    hook = provider.simulator
    if hook is not None and hook.settings is not None:
        return dict(hook.settings(url, SIM_KEY))
    aimed: dict[str, str | None] = {}
    if provider.api_key is not None:
        aimed[provider.api_key.env] = SIM_KEY
    if provider.base_url is not None:
        aimed[provider.base_url.env] = url
    return aimed


def sim_settings(base: Settings, urls: dict[SimName, str], data_dir: Path) -> Settings:
    """``base`` with every cloud provider pointed at its simulator with a fake key.

    Every other provider's key is unset, so nothing reaches a real API: a provider without a
    simulator is skipped, as it would be on a machine without its key.
    """
    values: dict[str, str | None] = {
        o.env: None for o in CATALOG.options() if o.kind in ("secret", "file")
    }
    for name, url in urls.items():
        for provider in CATALOG.served_by(name):
            values.update(_aim(provider, url))
    local = base.model_copy(update={"data_dir": data_dir, "redis_url": None})
    return local.with_options(values)


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
