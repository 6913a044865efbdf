"""The CRM tools the sales agent's LLM can call, as a LiveKit ``Toolset``.

Pass one instance per call: ``Agent(tools=[CrmTools(...)])``. Every tool returns a short
sentence the LLM can relay; a bad argument or an unreachable CRM is a sentence too, never an
exception that would end the turn in silence. Reads happen live under a short deadline; writes
go to the journal's outbox (durable, retried by the deliverer), except booking, which a caller
wants confirmed now: it is sent once, and a lost answer is checked, never blindly re-sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from livekit.agents import llm
from livekit.agents.llm import function_tool

from agent.crm.errors import GhlError, GhlValidationError
from agent.crm.ghl_client import (
    INTERACTIVE_CHECK,
    INTERACTIVE_READ,
    INTERACTIVE_WRITE,
    Appointment,
    Contact,
    GhlClient,
)
from agent.crm.leads import queue_lead
from agent.crm.slots_cache import FreeSlotsCache
from agent.crm.validation import (
    InvalidArgumentError,
    clean_tags,
    clean_text,
    normalize_email,
    normalize_phone,
    parse_day,
    parse_start_time,
    parse_timezone,
    plain_name,
    plain_tag,
    plain_text,
)
from agent.journal import outbox
from agent.journal.call_journal import CallWrites
from agent.journal.deliverer import OutboxDeliverer
from agent.journal.store import NewOutboxItem

log = structlog.get_logger(__name__)

CRM_DOWN = "The customer records are not reachable right now; carry on without them."
MAX_SLOTS_SPOKEN = 6
#: The tools' names as LiveKit offers them to an LLM (the free LLM's sales script calls them).
LIST_FREE_SLOTS = "list_free_slots"
BOOK_APPOINTMENT = "book_appointment"
BOOKED = "Booked for "
#: How a free slot appears in the tools' answers: "Monday, December 7 at 9:00 AM (start_time ...)".
SLOT_IN_ANSWER = re.compile(
    r"([A-Z][a-z]+, [A-Z][a-z]+ \d{1,2} at \d{1,2}:\d{2} [AP]M) \(start_time ([^)\s]+)\)"
)


def slots_in(answer: str) -> list[tuple[str, str]]:
    """The (spoken time, start_time) pairs a tool answer lists, in order."""
    return [(m.group(1), m.group(2)) for m in SLOT_IN_ANSWER.finditer(answer)]


def say_time(t: datetime, tz: ZoneInfo) -> str:
    local = t.astimezone(tz)
    return local.strftime("%A, %B ") + f"{local.day} at " + local.strftime("%I:%M %p").lstrip("0")


class CrmTools(llm.Toolset):
    def __init__(
        self,
        *,
        client: GhlClient,
        store: CallWrites,
        call_id: str,
        calendar_id: str | None,
        timezone: str,
        deliverer: OutboxDeliverer | None = None,
        slots_cache: FreeSlotsCache | None = None,
        default_region: str = "US",
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.store = store
        self.call_id = call_id
        self.calendar_id = calendar_id
        try:
            self.timezone = ZoneInfo(timezone).key
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"GHL time zone {timezone!r} is not an IANA time zone (e.g. America/New_York)"
            ) from None
        self.deliverer = deliverer
        self.slots_cache = slots_cache or FreeSlotsCache()
        self.default_region = default_region
        self._now = now
        self.contact: Contact | None = None
        self.caller_phone: str | None = None
        self._lookup: asyncio.Task[Contact | None] | None = None
        super().__init__(id="ghl_crm")

    # -- call start ------------------------------------------------------------------------
    async def lookup_caller(self, phone: str) -> Contact | None:
        """Find the caller by their number (the SIP participant's) while the greeting plays.

        Never raises: an unknown number, a bad number or an unreachable CRM all mean "unknown
        caller". Remembers the number so leads and notes land on the caller.
        """
        try:
            e164 = normalize_phone(phone, default_region=self.default_region)
        except InvalidArgumentError:
            log.info("caller number is not a valid phone number; caller unknown")
            return None
        self.caller_phone = e164
        self.store.begin_call(self.call_id)
        self.store.update_call_info(self.call_id, phone=e164)
        try:
            contact = await self.client.find_duplicate(phone=e164, policy=INTERACTIVE_READ)
        except GhlError as e:
            log.warning("caller lookup failed; treating the caller as unknown", error=str(e))
            return None
        if contact is not None:
            self._remember(contact)
        return contact

    def start_caller_lookup(self, phone: str) -> asyncio.Task[Contact | None]:
        """Start :meth:`lookup_caller` in the background; the tools wait for it briefly."""
        self._lookup = asyncio.create_task(self.lookup_caller(phone), name="ghl-caller-lookup")
        return self._lookup

    async def _caller(self) -> Contact | None:
        if self._lookup is not None and not self._lookup.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(self._lookup), timeout=INTERACTIVE_READ.deadline_s
                )
        return self.contact

    def _remember(self, contact: Contact) -> None:
        self.contact = contact
        self.store.begin_call(self.call_id)
        self.store.update_call_info(
            self.call_id,
            contact_id=contact.id,
            name=plain_name(contact.display_name) or None,
            email=plain_text(contact.email) or None,
        )

    def _ref(self) -> dict[str, str]:
        if self.contact is not None:
            return outbox.contact_ref(contact_id=self.contact.id)
        info = self.store.call_info(self.call_id)
        return outbox.contact_ref(
            contact_id=info.get("contact_id"),
            phone=info.get("phone") or self.caller_phone,
            email=info.get("email"),
            name=info.get("name"),
        )

    def _queue(self, item: NewOutboxItem) -> None:
        self.store.begin_call(self.call_id)
        self.store.enqueue(self.call_id, item)
        if self.deliverer is not None:
            self.deliverer.wake()

    # -- tools -----------------------------------------------------------------------------
    @function_tool
    async def find_contact(self, phone: str | None = None, email: str | None = None) -> str:
        """Look up a customer in the CRM by phone number or email address.

        Args:
            phone: The phone number as the caller said it, with area code.
            email: The email address, spelled out.
        """
        try:
            e164 = normalize_phone(phone, default_region=self.default_region) if phone else None
            mail = normalize_email(email) if email else None
        except InvalidArgumentError as e:
            return str(e)
        if not e164 and not mail:
            return "Ask for a phone number or an email address to look the customer up."
        try:
            contact = await self.client.find_duplicate(
                phone=e164, email=mail, policy=INTERACTIVE_READ
            )
        except GhlError as e:
            log.warning("find_contact failed", error=str(e))
            return CRM_DOWN
        if contact is None:
            return "No customer record matches that. Treat them as a new customer."
        # only the caller's own record becomes "the caller" (their transcript lands there)
        if (e164 and e164 == self.caller_phone) or (self.contact is None and not self.caller_phone):
            self._remember(contact)
        # what GHL holds is repeated to the caller: only plain text, never markup or controls
        bits = [plain_name(contact.display_name) or "name unknown"]
        if contact.email:
            bits.append(f"email {plain_text(contact.email)}")
        tags = [t for t in (plain_tag(t) for t in contact.tags) if t]
        if tags:
            bits.append("tags: " + ", ".join(tags))
        return "Found the customer: " + "; ".join(bits) + "."

    @function_tool
    async def save_lead(
        self,
        name: str | None = None,
        phone: str | None = None,
        email: str | None = None,
        notes: str | None = None,
    ) -> str:
        """Save the caller as a lead in the CRM (creates or updates their contact; existing
        tags are kept). Call it once you have a name and a phone number or email.

        Args:
            name: The caller's full name.
            phone: Their phone number with area code; leave empty to use the number they called from.
            email: Their email address.
            notes: What they are interested in, in one or two sentences.
        """
        try:
            return queue_lead(
                self.store,
                self._begin(),
                name=name,
                phone=phone or self.caller_phone,
                email=email,
                notes=[notes] if notes else None,
                default_region=self.default_region,
                deliverer=self.deliverer,
            )
        except InvalidArgumentError as e:
            return str(e)

    def _begin(self) -> str:
        self.store.begin_call(self.call_id)
        return self.call_id

    @function_tool
    async def tag_contact(self, tags: list[str]) -> str:
        """Add tags to the caller's CRM contact (keeps the tags it already has).

        Args:
            tags: Short labels such as "interested" or "callback".
        """
        try:
            clean = clean_tags(tags)
        except InvalidArgumentError as e:
            return str(e)
        await self._caller()
        ref = self._ref()
        if not ref:
            return "Save the caller as a lead first (I need their phone number or email)."
        self._queue(outbox.add_tags(ref, clean))
        return "Tagged: " + ", ".join(clean) + "."

    @function_tool
    async def add_note(self, text: str) -> str:
        """Add a note to the caller's CRM contact.

        Args:
            text: The note, in plain sentences.
        """
        try:
            body = clean_text(text, what="note")
        except InvalidArgumentError as e:
            return str(e)
        await self._caller()
        ref = self._ref()
        if not ref:
            return "Save the caller as a lead first (I need their phone number or email)."
        self._queue(outbox.add_note(ref, body))
        return "Note saved."

    @function_tool
    async def list_free_slots(self, day: str | None = None, timezone: str | None = None) -> str:
        """List free appointment times. Offer a few of them to the caller.

        Args:
            day: The day to look at, as YYYY-MM-DD; leave empty for the next available days.
            timezone: The caller's IANA time zone (for example America/Chicago) if they said
                where they are; leave empty for the business's zone.
        """
        if not self.calendar_id:
            return "Booking is not set up; offer to have someone call them back."
        try:
            tz = parse_timezone(timezone, default=self.timezone)
            now = self._now()
            start = parse_day(day, tz, now=now)
            first_day = start.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
            end = first_day + timedelta(days=1 if day else 7)  # day-aligned: cache-friendly
            slots = await self._free_slots(start, end, tz)
        except InvalidArgumentError as e:
            return str(e)
        except GhlError as e:
            log.warning("free slots unavailable", error=str(e))
            return (
                "The calendar is not reachable right now. Ask which days and times suit the "
                "caller, note them, and offer a confirmation call."
            )
        if not slots:
            return "No free times then. Offer another day."
        listed = "; ".join(
            f"{say_time(s, tz)} (start_time {s.astimezone(tz).isoformat()})"
            for s in slots[:MAX_SLOTS_SPOKEN]
        )
        return f"Free times in {tz.key}: {listed}."

    async def _free_slots(self, start: datetime, end: datetime, tz: ZoneInfo) -> list[datetime]:
        assert self.calendar_id is not None
        cached = self.slots_cache.get(self.calendar_id, start, end)
        if cached is not None:
            return cached
        slots = await self.client.free_slots(
            self.calendar_id, start, end, tz.key, policy=INTERACTIVE_READ
        )
        self.slots_cache.put(self.calendar_id, start, end, slots)
        return slots

    @function_tool
    async def book_appointment(self, start_time: str, timezone: str | None = None) -> str:
        """Book an appointment for the caller at one of the free times you listed.

        Args:
            start_time: The start_time of the chosen free slot, exactly as listed.
            timezone: The caller's IANA time zone, if different from the business's.
        """
        if not self.calendar_id:
            return "Booking is not set up; offer to have someone call them back."
        try:
            tz = parse_timezone(timezone, default=self.timezone)
            start = parse_start_time(start_time, tz, now=self._now())
        except InvalidArgumentError as e:
            return str(e)
        when = say_time(start, tz)
        day_start = start.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
        try:
            lo = max(day_start, self._now())  # what an earlier listing already covers
            free = await self._free_slots(lo, day_start + timedelta(days=1), tz)
        except GhlError as e:
            log.warning("cannot check the slot before booking", error=str(e))
            return "The calendar is not reachable right now. Note the time they want and offer a confirmation call."
        if not any(s == start for s in free):
            options = "; ".join(
                f"{say_time(s, tz)} (start_time {s.astimezone(tz).isoformat()})" for s in free[:3]
            )
            return f"{when} is not a free time. " + (
                f"Free that day: {options}." if options else "That day is full; offer another day."
            )
        contact_id = await self._contact_for_booking()
        if contact_id is None:
            ref = self._ref()
            if not ref:
                return "I need the caller's phone number or email before booking. Ask for it, then save the lead."
            self._queue(outbox.book_appointment(ref, calendar_id=self.calendar_id, start=start))
            return f"I've put in the request for {when}; a confirmation will follow shortly."
        return await self._book(contact_id, start, when)

    async def _contact_for_booking(self) -> str | None:
        contact = await self._caller()
        if contact is not None:
            return contact.id
        info = self.store.call_info(self.call_id)
        if info.get("contact_id"):
            return str(info["contact_id"])
        phone = info.get("phone") or self.caller_phone
        email = info.get("email")
        if not phone and not email:
            return None
        fields = {
            k: v for k, v in {"phone": phone, "email": email, "source": "voice agent"}.items() if v
        }
        try:  # idempotent: GHL matches the existing contact by email/phone
            found, _new = await self.client.upsert_contact(fields, policy=INTERACTIVE_CHECK)
        except GhlError as e:
            log.warning("could not create the contact for a booking", error=str(e))
            return None
        self._remember(found)
        return found.id

    async def _book(self, contact_id: str, start: datetime, when: str) -> str:
        assert self.calendar_id is not None
        ref = outbox.contact_ref(contact_id=contact_id)
        try:
            appt = await self.client.create_appointment(
                calendar_id=self.calendar_id,
                contact_id=contact_id,
                start=start,
                policy=INTERACTIVE_WRITE,
            )
        except GhlValidationError as e:
            self.slots_cache.invalidate(self.calendar_id)
            log.info("booking refused", error=str(e))
            return f"{when} was just taken. Offer another free time."
        except GhlError as e:
            if e.maybe_applied:
                found = await self._check_booked(contact_id, start)
                if found is not None:
                    return self._booked(found, when)
            item = outbox.book_appointment(ref, calendar_id=self.calendar_id, start=start)
            # when the attempt may have landed, the deliverer looks before sending
            self._queue(replace(item, maybe_sent=e.maybe_applied))
            log.warning(
                "booking queued after a failed attempt", error=str(e), maybe_applied=e.maybe_applied
            )
            return f"I've put in the request for {when}; a confirmation will follow shortly."
        return self._booked(appt, when)

    async def _check_booked(self, contact_id: str, start: datetime) -> Appointment | None:
        assert self.calendar_id is not None
        t0 = time.monotonic()
        try:
            for appt in await self.client.contact_appointments(
                contact_id, policy=INTERACTIVE_CHECK
            ):
                if appt.calendar_id == self.calendar_id and appt.start_time == start:
                    log.info(
                        "booking had landed despite the lost answer",
                        ms=round((time.monotonic() - t0) * 1000),
                    )
                    return appt
        except GhlError as e:
            log.warning("could not check whether the booking landed", error=str(e))
        return None

    def _booked(self, appt: Appointment, when: str) -> str:
        assert self.calendar_id is not None
        self.slots_cache.invalidate(self.calendar_id)
        self.store.begin_call(self.call_id)
        self.store.append(
            self.call_id,
            "booking",
            {"appointment_id": appt.id, "start": appt.start_time.isoformat()},
        )
        return f"{BOOKED}{when}."
