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
    records = store.records(call_id)
    body = outbox.transcript_note(
        call_id, store.call_started_at(call_id), records, reason=reason, usage_summary=usage_summary
    )
    then: list[NewOutboxItem] = []
    if body is not None:
        then.append(
            outbox.add_note(
                ref, body, uid=outbox.transcript_uid(call_id), through_seq=records[-1].seq
            )
        )
    done = store.end_call(call_id, reason, then)
    if done:
        log.info("call journal closed", call_id=call_id, reason=reason, transcript=bool(then))
    elif then and reason != RECOVERED_REASON:
        _after_recovery(store, call_id, ref, reason, usage_summary)
    return done


def _after_recovery(
    store: JournalStore,
    call_id: str,
    ref: dict[str, str],
    reason: str,
    usage_summary: str | None,
) -> None:
    """The call's own end came after another process had already finished it (its lease ran
    out while the call was alive): send what the recovery's transcript did not have."""
    records = store.records(call_id)
    sent = [i for i in store.outbox(call_id) if i.uid.startswith(outbox.transcript_uid(call_id))]
    if any("through_seq" not in i.payload for i in sent):
        return  # a transcript from before parts were tracked: it covered the call
    seen = max((int(i.payload["through_seq"]) for i in sent), default=0)
    later = [r for r in records if r.seq > seen]
    body = outbox.transcript_note(
        call_id, store.call_started_at(call_id), later, reason=reason, usage_summary=usage_summary
    )
    if body is None:
        return
    uid = outbox.transcript_uid(call_id) + (f":after:{seen}" if sent else "")
    store.enqueue(call_id, outbox.add_note(ref, body, uid=uid, through_seq=records[-1].seq))
    log.warning(
        "call ended after its recovery: the rest of its transcript is queued", call_id=call_id
    )
