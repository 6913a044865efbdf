"""What the outbox carries: CRM writes described as data, so they survive a crash.

Each item names its contact by reference (an id, or the phone/email to upsert by, or "the
caller of this call"), so a write queued before the contact existed still lands on the right
contact. Notes carry a reference line so a note whose answer was lost can be found again
instead of being written twice.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from agent.crm.validation import plain_text
from agent.journal.store import NewOutboxItem, Record

UPSERT_CONTACT = "upsert_contact"
ADD_TAGS = "add_tags"
ADD_NOTE = "add_note"
BOOK_APPOINTMENT = "book_appointment"
OPS = (UPSERT_CONTACT, ADD_TAGS, ADD_NOTE, BOOK_APPOINTMENT)


def malformed(op: str, payload: dict[str, Any]) -> str | None:
    """Why an item (which decrypted fine) can never be sent as it is, or None when it can."""
    if op not in OPS:
        return f"unknown outbox operation {op!r}"
    needs: dict[str, tuple[tuple[str, type | tuple[type, ...]], ...]] = {
        UPSERT_CONTACT: (("fields", dict), ("tags", list)),
        ADD_TAGS: (("contact", dict), ("tags", list)),
        ADD_NOTE: (("contact", dict), ("body", str)),
        BOOK_APPOINTMENT: (("contact", dict), ("calendar_id", str), ("start", str)),
    }
    for name, kind in needs[op]:
        if not isinstance(payload.get(name), kind):
            return f"{op} item has no valid {name!r}"
    if op == BOOK_APPOINTMENT:
        try:
            datetime.fromisoformat(payload["start"])
        except ValueError:
            return f"book_appointment item has an unreadable start {payload['start']!r}"
    return None


def contact_ref(
    *,
    contact_id: str | None = None,
    phone: str | None = None,
    email: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    ref = {"contact_id": contact_id, "phone": phone, "email": email, "name": name}
    return {k: v for k, v in ref.items() if v}


def upsert_contact(fields: dict[str, Any], tags: list[str] | None = None) -> NewOutboxItem:
    """``fields`` must not contain ``tags`` (GHL's upsert would replace the contact's tags);
    ``tags`` are added afterwards, keeping the ones the contact already has."""
    clean = {k: v for k, v in fields.items() if k != "tags" and v not in (None, "")}
    return NewOutboxItem(UPSERT_CONTACT, {"fields": clean, "tags": list(tags or [])})


def add_tags(ref: dict[str, Any], tags: list[str]) -> NewOutboxItem:
    return NewOutboxItem(ADD_TAGS, {"contact": ref, "tags": tags})


def add_note(
    ref: dict[str, Any], body: str, *, uid: str | None = None, through_seq: int | None = None
) -> NewOutboxItem:
    """``through_seq``: a transcript's last record, so a later part can follow it."""
    uid = uid or uuid.uuid4().hex
    payload: dict[str, Any] = {"contact": ref, "body": body}
    if through_seq is not None:
        payload["through_seq"] = through_seq
    return NewOutboxItem(ADD_NOTE, payload, uid=uid)


def book_appointment(
    ref: dict[str, Any], *, calendar_id: str, start: datetime, title: str | None = None
) -> NewOutboxItem:
    return NewOutboxItem(
        BOOK_APPOINTMENT,
        {"contact": ref, "calendar_id": calendar_id, "start": start.isoformat(), "title": title},
    )


def note_marker(uid: str) -> str:
    return f"[journal ref {uid}]"


def with_marker(body: str, uid: str) -> str:
    return f"{body}\n\n{note_marker(uid)}"


_SPEAKERS = {"user": "Caller", "assistant": "Agent"}


def transcript_lines(records: list[Record]) -> list[str]:
    lines = []
    for r in records:
        if r.kind != "message":
            continue
        speaker = _SPEAKERS.get(str(r.data.get("role")))
        text = plain_text(str(r.data.get("text") or ""))  # one clean line per utterance
        if speaker and text:
            suffix = " [interrupted]" if r.data.get("interrupted") else ""
            lines.append(f"{speaker}: {text}{suffix}")
    return lines


def transcript_note(
    call_id: str,
    started_at: float | None,
    records: list[Record],
    *,
    reason: str,
    usage_summary: str | None,
) -> str | None:
    """The end-of-call note, or None when nothing was said."""
    lines = transcript_lines(records)
    if not lines:
        return None
    when = (
        datetime.fromtimestamp(started_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        if started_at
        else "unknown time"
    )
    head = f"Call transcript ({when}, call {call_id}, {reason})"
    parts = [head, "", *lines]
    if usage_summary:
        parts += ["", f"Usage: {usage_summary}"]
    return "\n".join(parts)


def transcript_uid(call_id: str) -> str:
    """One transcript per call, whoever queues it (the call itself or a crash recovery)."""
    return f"transcript:{call_id}"
