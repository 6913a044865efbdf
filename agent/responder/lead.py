"""The lead a call captures, and where it goes.

The scripted free LLM and the CRM tools hand leads to the same :class:`LeadSink`, so a lead
captured while every cloud LLM is down takes the same path to the CRM as one captured by GPT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Lead:
    name: str | None = None
    phone: str | None = None  # E.164 when known
    email: str | None = None
    preferred_time: str | None = None  # as the caller said it
    notes: list[str] = field(default_factory=list)

    @property
    def is_contactable(self) -> bool:
        return bool(self.phone or self.email)


class LeadSink(Protocol):
    async def save_lead(self, lead: Lead) -> str:
        """Persist the lead (durably); returns a short confirmation the agent can say."""
        ...
