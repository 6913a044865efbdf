"""The CRM tools (as the LLM calls them) against the GHL simulator, through the journal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from livekit.agents import llm

from agent.crm.ghl_client import GhlClient
from agent.crm.ghl_sim import GhlSimulator
from agent.crm.leads import JournaledLeadSink
from agent.crm.tools import CrmTools
from agent.crm.validation import InvalidArgumentError
from agent.journal.deliverer import OutboxDeliverer
from agent.journal.store import JournalStore
from agent.responder.lead import Lead
from plugins.sim.faults import Fault, FaultType

pytest_plugins = ["ghl_fixtures"]
CALENDAR = "sim-calendar"

CALLER = "+14155550100"


@pytest.fixture
async def tools(
    client: GhlClient, store: JournalStore, deliverer: OutboxDeliverer
) -> AsyncIterator[CrmTools]:
    t = CrmTools(
        client=client,
        store=store,
        call_id="call-1",
        calendar_id=CALENDAR,
        timezone="America/New_York",
        deliverer=deliverer,
    )
    yield t


def test_tools_are_livekit_function_tools(tools: CrmTools) -> None:
    ctx = llm.ToolContext([tools])
    assert {
        "find_contact",
        "save_lead",
        "tag_contact",
        "add_note",
        "list_free_slots",
        "book_appointment",
    } <= set(ctx.function_tools)


async def test_lookup_caller_known_unknown_and_crm_down(sim: GhlSimulator, tools: CrmTools) -> None:
    c = sim.add_contact(firstName="Ada", phone=CALLER)
    found = await tools.lookup_caller("(415) 555-0100")
    assert found is not None and found.id == c["id"]
    assert tools.store.call_info("call-1")["contact_id"] == c["id"]
    assert await tools.lookup_caller("+1 212 555 0199") is None
    sim.state.plan.always(Fault(FaultType.HANG))
    assert await tools.lookup_caller("+1 212 555 0199") is None  # unknown, not a crash
    assert await tools.lookup_caller("12") is None


async def test_find_contact(sim: GhlSimulator, tools: CrmTools) -> None:
    sim.add_contact(
        firstName="Ada", lastName="L", phone=CALLER, email="ada@example.com", tags=["vip"]
    )
    out = await tools.find_contact(phone="415-555-0100")
    assert "Ada L" in out and "vip" in out
    assert "Ada L" in await tools.find_contact(email="ada@example.com")
    assert "No customer record" in await tools.find_contact(email="nobody@example.com")
    assert "phone number" in (await tools.find_contact(phone="555")).lower()
    assert "email" in (await tools.find_contact(email="ada@@example")).lower()
    assert "phone number or an email" in await tools.find_contact()
    sim.state.plan.always(Fault(FaultType.STATUS, status=500))
    assert "not reachable" in await tools.find_contact(phone=CALLER)


async def test_save_lead_keeps_existing_tags(
    sim: GhlSimulator, tools: CrmTools, deliverer: OutboxDeliverer
) -> None:
    c = sim.add_contact(phone=CALLER, tags=["vip"])
    out = await tools.save_lead(
        name="Ada Lovelace",
        phone="(415) 555-0100",
        email="ada@example.com",
        notes="Wants the pro plan",
    )
    assert out.startswith("Thanks, Ada")
    assert await deliverer.drain(5)
    contact = sim.contacts[c["id"]]
    assert set(contact["tags"]) == {"vip", "voice-lead"}
    assert contact["email"] == "ada@example.com" and contact["firstName"] == "Ada"
    notes = sim.notes_for(c["id"])
    assert len(notes) == 1 and "Wants the pro plan" in notes[0]["body"]
    assert len(sim.contacts) == 1


async def test_save_lead_bad_arguments(tools: CrmTools, store: JournalStore) -> None:
    assert "phone number" in (await tools.save_lead(name="Bo", phone="12345")).lower()
    assert "email" in (await tools.save_lead(name="Bo", email="bo at example")).lower()
    assert "phone number or an email" in await tools.save_lead(name="Bo")
    assert store.pending() == []


async def test_save_lead_uses_the_caller_number(
    sim: GhlSimulator, tools: CrmTools, deliverer: OutboxDeliverer
) -> None:
    await tools.lookup_caller(CALLER)
    await tools.save_lead(name="Grace Hopper")
    assert await deliverer.drain(5)
    created = sim.find_by_phone(CALLER)
    assert created is not None and created["firstName"] == "Grace"


async def test_tag_and_note(sim: GhlSimulator, tools: CrmTools, deliverer: OutboxDeliverer) -> None:
    c = sim.add_contact(phone=CALLER, tags=["old"])
    await tools.lookup_caller(CALLER)
    assert "Tagged" in await tools.tag_contact(["Interested", " callback "])
    assert "Note saved" in await tools.add_note("Asked about pricing")
    assert "no tag" in (await tools.tag_contact([" "])).lower()
    assert "empty" in await tools.add_note("   ")
    assert await deliverer.drain(5)
    assert set(sim.contacts[c["id"]]["tags"]) == {"old", "interested", "callback"}
    assert [n["body"].split("\n")[0] for n in sim.notes_for(c["id"])] == ["Asked about pricing"]


async def test_free_slots_are_listed_in_the_callers_zone_and_cached(
    sim: GhlSimulator, tools: CrmTools
) -> None:
    out = await tools.list_free_slots(timezone="America/Los_Angeles")
    assert "America/Los_Angeles" in out and "start_time" in out
    assert "-08:00" in out or "-07:00" in out
    calls = sim.state.log.count(f"GET /calendars/{CALENDAR}/free-slots")
    await tools.list_free_slots(timezone="America/Los_Angeles")
    assert sim.state.log.count(f"GET /calendars/{CALENDAR}/free-slots") == calls  # cached
    assert "time zone" in await tools.list_free_slots(timezone="Mars/Olympus")
    assert "passed" in await tools.list_free_slots(day="2020-01-01")
    assert "couldn't read" in await tools.list_free_slots(day="next blursday")
    far = (datetime.now(UTC) + timedelta(days=60)).date().isoformat()
    assert "31 days" in await tools.list_free_slots(day=far)


async def _a_free_slot(client: GhlClient) -> datetime:
    now = datetime.now(UTC)
    slots = await client.free_slots(CALENDAR, now, now + timedelta(days=7), "America/New_York")
    return slots[0]


async def test_book_happy_path_and_bad_times(
    sim: GhlSimulator, client: GhlClient, tools: CrmTools
) -> None:
    c = sim.add_contact(phone=CALLER)
    await tools.lookup_caller(CALLER)
    slot = await _a_free_slot(client)
    assert "Booked" in await tools.book_appointment(slot.isoformat())
    assert [a["startTime"] for a in sim.appointments_for(c["id"])] == [slot.isoformat()]
    assert "passed" in await tools.book_appointment("2020-01-01T10:00:00-05:00")
    assert "couldn't read" in await tools.book_appointment("tomorrow-ish")
    odd = slot + timedelta(minutes=7)
    assert "not a free time" in await tools.book_appointment(odd.isoformat())
    # the booked slot is no longer offered
    assert slot.isoformat() not in await tools.list_free_slots(day=slot.date().isoformat())
    assert len(sim.appointments) == 1


async def test_booking_with_a_lost_answer_is_not_duplicated(
    sim: GhlSimulator, client: GhlClient, tools: CrmTools, deliverer: OutboxDeliverer
) -> None:
    c = sim.add_contact(phone=CALLER)
    await tools.lookup_caller(CALLER)
    slot = await _a_free_slot(client)
    await tools.list_free_slots()
    # GHL commits the appointment, then the connection drops before the answer
    sim.state.plan.once(Fault(FaultType.CUT))
    out = await tools.book_appointment(slot.isoformat())
    assert "Booked" in out
    assert len(sim.appointments_for(c["id"])) == 1
    assert sim.state.log.count("POST /calendars/events/appointments") == 1
    assert await deliverer.drain(2)
    assert len(sim.appointments_for(c["id"])) == 1


async def test_booking_whose_answer_never_comes_is_checked_later_not_resent(
    sim: GhlSimulator,
    client: GhlClient,
    tools: CrmTools,
    deliverer: OutboxDeliverer,
    store: JournalStore,
) -> None:
    c = sim.add_contact(phone=CALLER)
    await tools.lookup_caller(CALLER)
    slot = await _a_free_slot(client)
    await tools.list_free_slots()
    # the booking lands, its answer is lost, and the check right after also fails
    sim.state.plan.once(Fault(FaultType.CUT)).once(Fault(FaultType.STATUS, status=503), times=2)
    out = await tools.book_appointment(slot.isoformat())
    assert "request" in out and "confirmation" in out
    [item] = store.pending()
    assert item.op == "book_appointment" and item.maybe_sent
    assert await deliverer.drain(5)
    assert len(sim.appointments_for(c["id"])) == 1
    assert sim.state.log.count("POST /calendars/events/appointments") == 1


async def test_booking_without_a_contact_creates_one(
    sim: GhlSimulator, client: GhlClient, tools: CrmTools
) -> None:
    await tools.lookup_caller(CALLER)  # unknown caller
    slot = await _a_free_slot(client)
    assert "Booked" in await tools.book_appointment(
        slot.astimezone(ZoneInfo("America/New_York")).isoformat()
    )
    created = sim.find_by_phone(CALLER)
    assert created is not None and len(sim.appointments_for(created["id"])) == 1


async def test_journaled_lead_sink(
    sim: GhlSimulator, store: JournalStore, deliverer: OutboxDeliverer
) -> None:
    sink = JournaledLeadSink(store, "call-9", deliverer=deliverer)
    lead = Lead(
        name="Linus T",
        phone="+44 20 7946 0958",
        preferred_time="Friday morning",
        notes=["needs 5 seats"],
    )
    assert "saved" in await sink.save_lead(lead)
    with pytest.raises(InvalidArgumentError, match="phone number or an email"):
        await sink.save_lead(Lead(name="X", phone="999"))  # nothing left to reach them by
    # a number the CRM would refuse does not cost the lead: it is kept as a note
    assert "saved" in await sink.save_lead(Lead(name="Y", phone="+15551234567", email="y@z.io"))
    assert await deliverer.drain(5)
    [kept] = [c for c in sim.contacts.values() if c.get("email") == "y@z.io"]
    assert "+15551234567" in sim.notes_for(kept["id"])[0]["body"]
    created = sim.find_by_phone("+442079460958")
    assert created is not None and "voice-lead" in created["tags"]
    [note] = sim.notes_for(created["id"])
    assert "Friday morning" in note["body"] and "needs 5 seats" in note["body"]
