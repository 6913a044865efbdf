"""The CRM side of one call: the journal recorder, the lead sink and the agent's CRM tools.

The journal needs only ``ENCRYPTION_KEY``, which every worker started by ``python -m agent``
has (:mod:`agent.startup`); transcripts are kept even with no CRM configured, and delivered
once one is; the CRM tools need GHL's token and location too. Delivery itself
runs in the worker process (:mod:`agent.drain`), so a call's process only appends to the
journal and never waits on the CRM. Opening never fails the call: a journal that cannot be opened
(wrong key, damaged file, read-only or full disk) holds the call's writes in memory
(:class:`~agent.journal.call_journal.CallJournal`) and the caller is answered as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from agent.responder.lead import LeadSink
from agent.settings import Settings
from plugins.observability.switches import SwitchEvent

log = structlog.get_logger(__name__)


@dataclass
class CallCrm:
    recorder: Any  # agent.journal.recorder.CallRecorder
    lead_sink: LeadSink
    tools: Any | None  # agent.crm.tools.CrmTools when GHL is configured
    _store: Any
    _client: Any | None

    @classmethod
    def open(
        cls,
        settings: Settings,
        call_id: str,
        *,
        caller_phone: str | None = None,
        usage_summary: Any = None,
    ) -> CallCrm | None:
        key = settings.secret("encryption_key")
        if key is None:
            # `python -m agent start/dev/console` never get here: start refuses to run without
            # a key and console/dev create one (agent.startup). Only a worker launched some
            # other way can, and it must say loudly what it loses.
            log.error(
                "ENCRYPTION_KEY is not set: this call's transcript and leads are NOT kept; "
                "set ENCRYPTION_KEY (32 characters) or run the worker with `python -m agent`"
            )
            return None
        from agent.crm.leads import JournaledLeadSink
        from agent.journal.call_journal import CallJournal
        from agent.journal.recorder import CallRecorder
        from agent.journal.spool import spool_dirs
        from agent.journal.store import JournalStore

        store = CallJournal(
            call_id,
            lambda: JournalStore.in_dir(
                settings.data_dir, key, previous_keys=settings.journal_previous_keys()
            ),
            key=key,
            spool_dirs=spool_dirs(settings.data_dir),
        )
        recorder = CallRecorder(
            store, call_id, caller_phone=caller_phone, usage_summary=usage_summary
        )
        sink = JournaledLeadSink(store, call_id)
        tools = client = None
        if settings.secret("ghl_api_key") and settings.ghl_location_id:
            from agent.crm.ghl_client import GhlClient
            from agent.crm.tools import CrmTools

            client = GhlClient(
                api_key=settings.secret("ghl_api_key") or "",
                location_id=settings.ghl_location_id,
                base_url=str(settings.ghl_base_url).rstrip("/"),
            )
            tools = CrmTools(
                client=client,
                store=store,
                call_id=call_id,
                calendar_id=settings.ghl_calendar_id,
                timezone=settings.ghl_timezone,
            )
        return cls(recorder, sink, tools, store, client)

    def on_switch(self, event: SwitchEvent) -> None:
        self.recorder.record_provider_switch(
            event.slot, event.from_provider, event.to_provider, event.reason
        )

    async def aclose(self) -> None:
        """Never raises: it runs in LiveKit's shutdown callback."""
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:
                log.exception("closing the GHL client failed")
        try:
            self._store.close()
        except Exception:
            log.exception("closing the journal failed")
