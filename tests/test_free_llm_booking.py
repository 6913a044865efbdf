"""The free LLM books a real free slot through the CRM tools, against the GHL simulator.

The same :class:`CrmTools` a cloud LLM gets are offered to the free LLM by LiveKit's
``AgentSession``; LiveKit runs the tool calls the scripted responder makes and hands back the
results, the lead reaches the journal through the sink, and the booking lands in the simulated
calendar for the caller's contact.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from livekit.agents import AgentSession, RunResult, llm

from agent.crm.ghl_client import GhlClient
from agent.crm.ghl_sim import GhlSimulator
from agent.crm.leads import JournaledLeadSink
from agent.crm.tools import BOOK_APPOINTMENT, LIST_FREE_SLOTS, CrmTools, slots_in
from agent.journal.deliverer import OutboxDeliverer
from agent.journal.store import JournalStore
from agent.responder.booking import Slot, pick_slot
from agent.responder.sales_responder import SalesResponder
from agent.responder.sales_script import HistoryItem, SalesScript
from agent.sales_agent import GREETING, SalesAgent
from plugins.local.responder import ToolResult
from plugins.local.scripted_llm import ScriptedLLM

pytest_plugins = ["ghl_fixtures"]
CALENDAR = "sim-calendar"
CALL_ID = "call-book"


@pytest.fixture
async def tools(
    client: GhlClient, store: JournalStore, deliverer: OutboxDeliverer
) -> AsyncIterator[CrmTools]:
    yield CrmTools(
        client=client,
        store=store,
        call_id=CALL_ID,
        calendar_id=CALENDAR,
        timezone="America/New_York",
        deliverer=deliverer,
    )


class _Said:
    """What one caller turn produced: the agent's lines and the tool calls with their outputs."""

    def __init__(self, result: RunResult[None]) -> None:
        self.lines: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.outputs: list[str] = []
        for event in result.events:
            item = event.item
            if isinstance(item, llm.ChatMessage) and item.role == "assistant":
                self.lines.append(item.text_content or "")
            elif isinstance(item, llm.FunctionCall):
                self.calls.append((item.name, item.arguments))
            elif isinstance(item, llm.FunctionCallOutput):
                self.outputs.append(item.output)

    @property
    def last(self) -> str:
        return self.lines[-1]


async def _call(session: AgentSession[None], said: str) -> _Said:
    return _Said(await session.run(user_input=said))


async def test_the_free_llm_offers_and_books_a_real_free_slot(
    sim: GhlSimulator, store: JournalStore, tools: CrmTools, deliverer: OutboxDeliverer
) -> None:
    responder = SalesResponder(sink=JournaledLeadSink(store, CALL_ID, deliverer=deliverer))
    scripted = ScriptedLLM(responder)
    async with AgentSession(llm=scripted) as session:
        await session.start(SalesAgent(greeting=GREETING, tools=[tools]))  # as the worker does

        asked = await _call(session, "hi can i book a meeting with someone")
        assert [name for name, _ in asked.calls] == ["list_free_slots"]
        offered = slots_in(asked.outputs[0])
        assert len(offered) >= 3  # the simulator's real free slots, via the GHL client
        second_spoken, second_start = offered[1]
        assert asked.last.startswith(f"I have {offered[0][0]}, {second_spoken}, or ")
        assert asked.last.endswith("Which works best for you?")

        chose = await _call(session, "the second one please")
        assert chose.calls == []
        assert (
            chose.last == f"Great, {second_spoken} it is. To book it, may I have your name, please?"
        )

        await _call(session, "john smith")
        await _call(session, "four one five two three nine eight eight one two")
        email = await _call(session, "john smith gmail dot com")
        assert email.last == "Just to check, is your email johnsmith at gmail dot com?"
        readback = await _call(session, "yes")
        assert f"the meeting is {second_spoken}. Did I get that right?" in readback.last

        booked = await _call(session, "yes that's right")
        [(name, arguments)] = booked.calls
        assert (name, json.loads(arguments)) == ("book_appointment", {"start_time": second_start})
        assert booked.outputs == [f"Booked for {second_spoken}."]
        assert booked.last.startswith(f"You're all set for {second_spoken}.")
    await scripted.aclose()

    [appointment] = sim.appointments
    assert appointment["calendarId"] == CALENDAR
    assert datetime.fromisoformat(appointment["startTime"]) == datetime.fromisoformat(second_start)
    contact = sim.contacts[appointment["contactId"]]
    assert contact["email"] == "johnsmith@gmail.com"
    assert contact["phone"] == "+14152398812"
    # the slot is no longer offered to the next caller
    again = await tools.list_free_slots()
    assert second_start not in again


async def test_without_a_calendar_the_free_llm_takes_a_call_back_time(
    client: GhlClient, store: JournalStore
) -> None:
    no_calendar = CrmTools(
        client=client, store=store, call_id=CALL_ID, calendar_id=None, timezone="America/New_York"
    )
    scripted = ScriptedLLM(SalesResponder())
    async with AgentSession(llm=scripted) as session:
        await session.start(SalesAgent(greeting=GREETING, tools=[no_calendar]))
        asked = await _call(session, "i'd like to schedule an appointment")
        assert [name for name, _ in asked.calls] == ["list_free_slots"]
        assert asked.last.startswith("I can't get to the calendar right now, so one of our")
        assert asked.last.endswith("May I have your name, please?")
        later = [
            await _call(session, said)
            for said in ("sam lee", "four one five two three nine eight eight one two", "no")
        ]
        assert later[-1].calls == []
        assert later[-1].last.endswith("When's a good time for us to call you back?")
    await scripted.aclose()


# --- choosing among offered times, as a recogniser writes the answer -----------------------

OFFERED = [
    Slot("Monday, December 7 at 9:00 AM", "2026-12-07T09:00:00-05:00"),
    Slot("Monday, December 7 at 9:30 AM", "2026-12-07T09:30:00-05:00"),
    Slot("Tuesday, December 8 at 2:00 PM", "2026-12-08T14:00:00-05:00"),
]


@pytest.mark.parametrize(
    ("said", "index"),
    [
        ("the first one", 0),
        ("second please", 1),
        ("the last one", 2),
        ("nine thirty", 1),
        ("tuesday", 2),
        ("the afternoon one", 2),
        ("two pm works", 2),
        ("monday at nine", None),  # two Monday slots start at nine-something: ambiguous
        ("nine", None),
        ("wednesday", None),
        ("sounds good", None),
    ],
)
def test_the_caller_picks_an_offered_time(said: str, index: int | None) -> None:
    words = said.split()
    expected = None if index is None else OFFERED[index]
    assert pick_slot(words, OFFERED, agreed=False) == expected


def test_a_yes_takes_the_only_offered_time_and_not_one_of_several() -> None:
    assert pick_slot(["yes", "that", "works"], OFFERED[:1], agreed=True) == OFFERED[0]
    assert pick_slot(["yes", "that", "works"], OFFERED, agreed=True) is None


def test_a_time_not_understood_twice_falls_back_to_a_call_back() -> None:
    script = SalesScript()
    tools = {LIST_FREE_SLOTS, BOOK_APPOINTMENT}
    history: list[HistoryItem] = [("assistant", GREETING), ("user", "can i book a demo")]
    first = script.respond(history, tools)
    assert [c.name for c in first.tool_calls] == [LIST_FREE_SLOTS]
    history += [("assistant", first.text), ToolResult(LIST_FREE_SLOTS, {}, _LISTING)]
    offer = script.respond(history, tools)
    assert offer.text.startswith("I have Monday, December 7 at 9:00 AM")
    history += [("assistant", offer.text), ("user", "hmm whichever")]
    again = script.respond(history, tools)
    assert again.text.startswith("Sorry, which of those times works for you?")
    history += [("assistant", again.text), ("user", "i don't know")]
    moved_on = script.respond(history, tools)
    assert not moved_on.text.startswith("Sorry") and not moved_on.tool_calls
    assert moved_on.text.endswith("May I have your name, please?")


_LISTING = "Free times in America/New_York: " + "; ".join(
    f"{s.spoken} (start_time {s.start_time})" for s in OFFERED
)
