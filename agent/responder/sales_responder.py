"""The sales script as the free LLM's responder, and the owner of the leads it captures.

:class:`SalesResponder` is what the agent injects into ``free-llm``
(:class:`plugins.local.scripted_llm.ScriptedLLM`): each turn it asks :class:`SalesScript` for
the next line (or a CRM tool call, which LiveKit runs through the agent's own tools). When the
caller confirms the read-back of their details, the captured :class:`Lead` goes to the same
:class:`LeadSink` the CRM tools use, once per confirmation, in the background so the reply is
not held up. A sink failure is logged and the lead is kept and retried on the next turn and at
``aclose()``, so it is not lost.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence

import structlog

from agent.crm.tools import BOOK_APPOINTMENT
from agent.responder.lead import Lead, LeadSink
from agent.responder.sales_script import HistoryItem, SalesScript
from plugins.local.responder import Reply, Turn

log = structlog.get_logger(__name__)

_MAX_REMEMBERED_CONVERSATIONS = 1024
#: How long a booking waits for the confirmed lead to reach the journal (normally instant).
BOOKING_WAIT_S = 2.0

_LeadKey = tuple[str | None, str | None, str | None, str | None]


class SalesResponder:
    """A :class:`plugins.local.responder.Responder` running :class:`SalesScript`."""

    def __init__(self, script: SalesScript | None = None, *, sink: LeadSink | None = None) -> None:
        self.script = script or SalesScript()
        self._sink = sink
        self._saved: OrderedDict[str, set[_LeadKey]] = OrderedDict()
        self._unsaved: list[tuple[str, Lead]] = []
        self._save_tasks: set[asyncio.Task[None]] = set()

    @property
    def unsaved_leads(self) -> list[Lead]:
        """Confirmed leads the sink refused so far (retried next turn and at ``aclose``)."""
        return [lead for _, lead in self._unsaved]

    async def respond(self, turn: Turn) -> Reply:
        history = turn.history()
        reply = self.script.respond(history, turn.tool_names)
        self._retry_unsaved()
        if self._sink is not None and _ends_with_caller(history):
            try:
                self._maybe_save(history, turn.conversation_id)
            except Exception:
                log.exception("free_llm_lead_check_failed")
        if any(call.name == BOOK_APPOINTMENT for call in reply.tool_calls):
            await self._lead_on_file()
        return reply

    async def _lead_on_file(self) -> None:
        """Booking finds the caller by the details just confirmed: let their save land first."""
        if not self._save_tasks:
            return
        _done, pending = await asyncio.wait(list(self._save_tasks), timeout=BOOKING_WAIT_S)
        if pending:
            log.warning("free_llm_booking_before_lead_saved", pending=len(pending))

    async def aclose(self) -> None:
        """Wait for leads being saved, and give refused ones one last try."""
        self._retry_unsaved()
        while self._save_tasks:
            await asyncio.gather(*list(self._save_tasks), return_exceptions=True)

    def _maybe_save(self, messages: Sequence[HistoryItem], conversation: str) -> None:
        # only the turn on which the caller says yes: a lead confirmed earlier (by this script
        # or by a cloud LLM whose CRM tools already saved it) is not saved again
        if not self.script.confirmed(messages) or self.script.confirmed(messages[:-1]):
            return
        lead = self.script.lead(messages)
        key: _LeadKey = (lead.name, lead.phone, lead.email, lead.preferred_time)
        seen = self._saved.setdefault(conversation, set())
        self._saved.move_to_end(conversation)
        while len(self._saved) > _MAX_REMEMBERED_CONVERSATIONS:
            self._saved.popitem(last=False)
        if key in seen:
            return  # the same turn generated twice (preemptive generation, a retry)
        seen.add(key)
        self._start_save(conversation, lead)

    def _start_save(self, conversation: str, lead: Lead) -> None:
        task = asyncio.get_running_loop().create_task(
            self._save(conversation, lead), name="free_llm.save_lead"
        )
        self._save_tasks.add(task)
        task.add_done_callback(self._save_tasks.discard)

    async def _save(self, conversation: str, lead: Lead) -> None:
        assert self._sink is not None
        fields = [f for f in ("name", "phone", "email", "preferred_time") if getattr(lead, f)]
        try:
            await self._sink.save_lead(lead)
        except ValueError as exc:
            # the details themselves are unusable: retrying cannot help, so say so loudly
            log.error("free_llm_lead_unusable", reason=str(exc), fields=fields)
            return
        except Exception as exc:
            # the lead stays here and is offered again; its contents never reach the log
            self._unsaved.append((conversation, lead))
            log.error(
                "free_llm_lead_save_failed",
                error_type=type(exc).__name__,
                fields=fields,
                pending=len(self._unsaved),
            )
            return
        log.info("free_llm_lead_saved", fields=fields)

    def _retry_unsaved(self) -> None:
        if self._sink is None or not self._unsaved:
            return
        pending, self._unsaved = self._unsaved, []
        for conversation, lead in pending:
            self._start_save(conversation, lead)


def _ends_with_caller(history: Sequence[HistoryItem]) -> bool:
    last = history[-1] if history else None
    return isinstance(last, tuple) and last[0] == "user"
