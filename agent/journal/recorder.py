"""Writes a call's journal from a LiveKit ``AgentSession``'s own events.

Each conversation item, tool execution and provider switch is committed to disk the moment
the session reports it, so a process killed mid-call loses nothing already said. At the end
(``finish()``, or the session's ``close`` event) the transcript is queued for the CRM in the
same transaction that marks the call ended; if the process dies first, the next deliverer
does it (:func:`agent.journal.finish.finish_call`). Writes go through a
:class:`~agent.journal.call_journal.CallJournal`, so a journal that cannot be written holds
them and nothing here raises into the session or LiveKit's shutdown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from livekit.agents import AgentSession
from livekit.agents.llm import ChatMessage
from livekit.agents.voice.events import (
    CloseEvent,
    ConversationItemAddedEvent,
    FunctionToolsExecutedEvent,
)

from agent.journal.call_journal import CallJournal
from agent.journal.store import JournalStore

log = structlog.get_logger(__name__)


class CallRecorder:
    def __init__(
        self,
        journal: CallJournal | JournalStore,
        call_id: str,
        *,
        caller_phone: str | None = None,
        usage_summary: Callable[[], str | None] | None = None,
        on_finished: Callable[[], None] | None = None,
    ) -> None:
        if isinstance(journal, JournalStore):
            journal = CallJournal.over(journal, call_id)
        self.journal = journal
        self.call_id = call_id
        self._usage_summary = usage_summary
        self._on_finished = on_finished
        self._finished = False
        journal.begin_call(call_id, {"phone": caller_phone} if caller_phone else {})

    # -- wiring ----------------------------------------------------------------------------
    def attach(self, session: AgentSession[Any]) -> None:
        session.on("conversation_item_added", self._on_item)
        session.on("function_tools_executed", self._on_tools)
        session.on("close", self._on_close)
        self.journal.start()  # retries held writes, renews the call's lease

    def _on_item(self, ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if isinstance(item, ChatMessage):
            self.record_message(item.role, item.text_content or "", interrupted=item.interrupted)
        else:
            self._append(str(getattr(item, "type", "item")), item.model_dump(mode="json"))

    def _on_tools(self, ev: FunctionToolsExecutedEvent) -> None:
        for call, output in ev.zipped():
            self._append(
                "tool_call",
                {
                    "name": call.name,
                    "arguments": call.arguments,
                    "output": output.output if output else None,
                    "is_error": output.is_error if output else None,
                },
            )

    def _on_close(self, ev: CloseEvent) -> None:
        reason = getattr(ev.reason, "value", str(ev.reason))
        self.finish(reason=f"session closed: {reason}")

    # -- API for the worker ----------------------------------------------------------------
    def record_message(self, role: str, text: str, *, interrupted: bool = False) -> None:
        self._append("message", {"role": role, "text": text, "interrupted": interrupted})

    def record_provider_switch(
        self, slot: str, from_provider: str | None, to_provider: str, reason: str
    ) -> None:
        self._append(
            "provider_switch",
            {"slot": slot, "from": from_provider, "to": to_provider, "reason": reason},
        )

    def set_contact(
        self,
        *,
        contact_id: str | None = None,
        phone: str | None = None,
        email: str | None = None,
        name: str | None = None,
    ) -> None:
        """Remember who the caller is, so the transcript lands on their contact."""
        self.journal.update_call_info(
            self.call_id, contact_id=contact_id, phone=phone, email=email, name=name
        )

    def finish(self, *, reason: str = "completed", usage_summary: str | None = None) -> None:
        """Close the call's journal and queue the transcript note (idempotent; never raises:
        it runs in LiveKit's shutdown, where an exception would only hide the call's end)."""
        if self._finished:
            return
        self._finished = True
        if usage_summary is None and self._usage_summary is not None:
            try:
                usage_summary = self._usage_summary()
            except Exception:
                log.exception("usage summary failed; transcript sent without it")
        try:
            self.journal.finish(reason=reason, usage_summary=usage_summary)
        except Exception:  # a bug, not a journal fault (those are held): still end the call
            log.exception("journal finish failed", call_id=self.call_id)
        if self._on_finished is not None:
            try:
                self._on_finished()
            except Exception:
                log.exception("on_finished callback failed", call_id=self.call_id)

    def _append(self, kind: str, data: dict[str, Any]) -> None:
        try:
            self.journal.append(self.call_id, kind, data)
        except Exception:  # a bug, not a journal fault (those are held): the call goes on
            log.exception("journal append failed", call_id=self.call_id, kind=kind)
