"""End-of-call work, shared by a call that ends normally and by crash recovery."""

from __future__ import annotations

import structlog

from agent.journal import outbox
from agent.journal.store import JournalStore, NewOutboxItem

log = structlog.get_logger(__name__)

RECOVERED_REASON = "recovered after the call's owner was gone"


def finish_call(
    store: JournalStore, call_id: str, *, reason: str, usage_summary: str | None = None
) -> bool:
    """Mark the call ended and queue its transcript note, atomically; False if already ended."""
    info = store.call_info(call_id)
    ref = outbox.contact_ref(
        contact_id=info.get("contact_id"),
        phone=info.get("phone"),
        email=info.get("email"),
        name=info.get("name"),
    )
    body = outbox.transcript_note(
        call_id,
        store.call_started_at(call_id),
        store.records(call_id),
        reason=reason,
        usage_summary=usage_summary,
    )
    then: list[NewOutboxItem] = []
    if body is not None:
        then.append(outbox.add_note(ref, body, uid=outbox.transcript_uid(call_id)))
    done = store.end_call(call_id, reason, then)
    if done:
        log.info("call journal closed", call_id=call_id, reason=reason, transcript=bool(then))
    return done
