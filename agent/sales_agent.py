"""The sales ``Agent``: instructions from a prompt file, CRM tools when a CRM is configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from livekit.agents import Agent

PROMPT_DIR = Path(__file__).parent / "prompts"
COMPANY = "Acme Growth"
#: Spoken without an LLM round trip the moment the call starts, whatever the LLM chain's state.
GREETING = f"Hi, this is Alex from {COMPANY}. How can I help you today?"


def load_instructions(
    *, company: str = COMPANY, caller_context: str = "", prompt_file: Path | None = None
) -> str:
    """Prompts live in files so that sales teams can edit them without touching code."""
    template = (prompt_file or PROMPT_DIR / "sales_agent.md").read_text(encoding="utf-8")
    context = (
        f"\nWhat we already know about this caller: {caller_context}" if caller_context else ""
    )
    return template.format(company=company, caller_context=context)


class SalesAgent(Agent):
    def __init__(
        self,
        *,
        company: str = COMPANY,
        caller_context: str = "",
        tools: list[Any] | None = None,
        greeting: str | None = None,
    ) -> None:
        super().__init__(
            instructions=load_instructions(company=company, caller_context=caller_context),
            tools=tools or [],
        )
        self._greeting = greeting

    async def on_enter(self) -> None:
        # A fixed greeting is spoken without an LLM round trip: the caller hears us at once,
        # whatever state the LLM chain is in.
        if self._greeting:
            self.session.say(self._greeting)
