"""One path for every lead into the CRM: validated, then queued in the journal's outbox.

The LLM's ``save_lead`` tool and the scripted free LLM (through :class:`JournaledLeadSink`)
both end here, so a lead captured while every cloud LLM is down reaches GHL the same way.
"""

from __future__ import annotations

import structlog

from agent.crm.validation import (
    InvalidArgumentError,
    clean_tags,
    clean_text,
    normalize_email,
    normalize_phone,
    split_name,
)
from agent.journal import outbox
from agent.journal.call_journal import CallWrites
from agent.journal.deliverer import OutboxDeliverer
from agent.responder.lead import Lead

log = structlog.get_logger(__name__)

LEAD_TAG = "voice-lead"


def queue_lead(
    store: CallWrites,
    call_id: str | None,
    *,
    name: str | None,
    phone: str | None,
    email: str | None,
    notes: list[str] | None = None,
    tags: list[str] | None = None,
    default_region: str = "US",
    deliverer: OutboxDeliverer | None = None,
) -> str:
    """Validate and queue an upsert (+ note); returns what the agent can say.

    Raises :class:`InvalidArgumentError` with a sentence for the caller when a value is wrong.
    """
    e164 = normalize_phone(phone, default_region=default_region) if phone else None
    mail = normalize_email(email) if email else None
    if not e164 and not mail:
        raise InvalidArgumentError(
            "I need a phone number or an email address to save your details. Which do you prefer?"
        )
    fields: dict[str, str] = {"source": "voice agent"}
    fields.update(split_name(name))
    if e164:
        fields["phone"] = e164
    if mail:
        fields["email"] = mail
    all_tags = clean_tags([LEAD_TAG, *(tags or [])])
    note_lines = [clean_text(n, what="note") for n in (notes or []) if n and n.strip()]
    if call_id is not None:
        store.begin_call(call_id)
        store.update_call_info(call_id, phone=e164, email=mail, name=fields.get("name"))
    store.enqueue(call_id, outbox.upsert_contact(fields, all_tags))
    if note_lines:
        ref = outbox.contact_ref(phone=e164, email=mail, name=fields.get("name"))
        store.enqueue(call_id, outbox.add_note(ref, "\n".join(note_lines)))
    if deliverer is not None:
        deliverer.wake()
    log.info("lead queued", call_id=call_id, has_phone=bool(e164), has_email=bool(mail))
    who = f", {fields['firstName']}" if fields.get("firstName") else ""
    return f"Thanks{who}, I've saved your details."


class JournaledLeadSink:
    """:class:`agent.responder.lead.LeadSink` for the scripted LLM: same path as the tools."""

    def __init__(
        self,
        store: CallWrites,
        call_id: str | None,
        *,
        deliverer: OutboxDeliverer | None = None,
        default_region: str = "US",
    ) -> None:
        self.store = store
        self.call_id = call_id
        self.deliverer = deliverer
        self.default_region = default_region

    async def save_lead(self, lead: Lead) -> str:
        """Queue the lead; a phone number the CRM would refuse is kept as a note instead.

        Raises :class:`InvalidArgumentError` (a ``ValueError``) when nothing usable is left to
        reach the caller by: the caller's words are still in the journaled transcript.
        """
        notes = list(lead.notes)
        if lead.preferred_time:
            notes.append(f"Preferred time (as the caller said it): {lead.preferred_time}")
        phone = lead.phone
        if phone:
            try:
                normalize_phone(phone, default_region=self.default_region)
            except InvalidArgumentError:
                log.warning("lead phone is not a valid number; kept as a note")
                notes.append(f"Phone as the caller said it (not a valid number): {phone}")
                phone = None
        return queue_lead(
            self.store,
            self.call_id,
            name=lead.name,
            phone=phone,
            email=lead.email,
            notes=notes,
            default_region=self.default_region,
            deliverer=self.deliverer,
        )
