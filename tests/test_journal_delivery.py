"""The outbox deliverer against GHL faults: everything lands, exactly once."""

from __future__ import annotations

import pytest

from agent.crm.ghl_client import GhlClient
from agent.crm.ghl_sim import GhlSimulator
from agent.journal import outbox
from agent.journal.deliverer import OutboxDeliverer
from agent.journal.finish import finish_call
from agent.journal.recorder import CallRecorder
from agent.journal.store import JournalStore
from plugins.sim.faults import Fault, FaultType

pytest_plugins = ["ghl_fixtures"]
LOCATION = "sim-location"

PHONE = "+14155550100"


def _queue_note(store: JournalStore, body: str = "Interested in the pro plan") -> None:
    store.begin_call("c1", {"phone": PHONE})
    store.enqueue("c1", outbox.add_note(outbox.contact_ref(phone=PHONE), body))


def _notes(sim: GhlSimulator) -> list[str]:
    contact = sim.find_by_phone(PHONE)
    assert contact is not None
    return [n["body"] for n in sim.notes_for(contact["id"])]


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultType.STATUS, status=429, retry_after_s=0.2),
        Fault(FaultType.STATUS, status=500),
        Fault(FaultType.STATUS, status=503),
        Fault(FaultType.HANG),
        Fault(FaultType.RESET),
        Fault(FaultType.CUT),  # GHL commits the note, the answer is lost
    ],
    ids=lambda f: f"{f.type.value}-{f.status}",
)
async def test_note_is_delivered_exactly_once_despite(
    fault: Fault, sim: GhlSimulator, store: JournalStore, deliverer: OutboxDeliverer
) -> None:
    sim.add_contact(phone=PHONE)
    _queue_note(store)
    # each fault hits the note write twice in a row
    sim.state.plan.always(fault)
    report = await deliverer.deliver_once()  # the upsert that resolves the contact fails first
    sim.state.plan.clear()
    sim.state.plan.once(fault, times=1)
    assert report.delivered == 0
    assert await deliverer.drain(10)
    notes = _notes(sim)
    assert len(notes) == 1 and notes[0].startswith("Interested in the pro plan")
    [item] = store.outbox("c1")
    assert item.state == "delivered" and item.attempts >= 2


async def test_lost_note_answer_is_checked_not_resent(
    sim: GhlSimulator, store: JournalStore, deliverer: OutboxDeliverer
) -> None:
    sim.add_contact(phone=PHONE)
    store.begin_call("c1", {"phone": PHONE})
    await deliverer.deliver_once()  # nothing queued yet
    store.update_call_info("c1", contact_id=sim.find_by_phone(PHONE)["id"])  # type: ignore[index]
    _queue_note(store)
    sim.state.plan.once(Fault(FaultType.CUT))
    assert await deliverer.drain(5)
    assert len(_notes(sim)) == 1
    assert sim.state.log.count(f"POST /contacts/{sim.find_by_phone(PHONE)['id']}/notes") == 1  # type: ignore[index]


async def test_429_retry_after_is_honoured(
    sim: GhlSimulator, store: JournalStore, deliverer: OutboxDeliverer
) -> None:
    import time

    sim.add_contact(phone=PHONE)
    _queue_note(store)
    sim.state.plan.once(Fault(FaultType.STATUS, status=429, retry_after_s=0.5))
    t0 = time.time()
    await deliverer.deliver_once()
    [item] = store.pending()
    assert item.next_attempt_at - t0 >= 0.5
    assert "429" in (item.last_error or "")
    assert await deliverer.drain(5)
    assert len(_notes(sim)) == 1


async def test_401_pauses_delivery_with_a_clear_reason(
    sim: GhlSimulator, store: JournalStore, client: GhlClient
) -> None:
    sim.add_contact(phone=PHONE)
    _queue_note(store)
    async with GhlClient(api_key="revoked", location_id=LOCATION, base_url=sim.base_url) as bad:
        d = OutboxDeliverer(store, bad, auth_pause_s=30)
        await d.deliver_once()
        await d.deliver_once()  # paused: no second request
    assert sim.state.log.count() == 1
    [item] = store.pending()
    assert "GHL_API_KEY" in (item.last_error or "") and "revoked" not in (item.last_error or "")
    fixed = OutboxDeliverer(store, client)
    assert await fixed.drain(5)
    assert len(_notes(sim)) == 1


async def test_422_fails_the_item_and_keeps_going(
    sim: GhlSimulator, store: JournalStore, deliverer: OutboxDeliverer
) -> None:
    store.enqueue(None, outbox.upsert_contact({"email": "not-an-email"}))
    store.enqueue(None, outbox.upsert_contact({"phone": PHONE}, ["lead"]))
    assert await deliverer.drain(5)
    bad, good = store.outbox()
    assert bad.state == "failed" and "email" in (bad.last_error or "")
    assert good.state == "delivered"
    assert sim.find_by_phone(PHONE)["tags"] == ["lead"]  # type: ignore[index]


async def test_items_of_a_call_keep_their_order(
    sim: GhlSimulator, store: JournalStore, deliverer: OutboxDeliverer
) -> None:
    store.begin_call("c1")
    store.enqueue("c1", outbox.upsert_contact({"phone": PHONE, "firstName": "Ada"}))
    store.enqueue("c1", outbox.add_note({}, "after the upsert"))  # "the caller of this call"
    sim.state.plan.once(Fault(FaultType.STATUS, status=503))
    assert await deliverer.drain(5)
    assert [n.split("\n")[0] for n in _notes(sim)] == ["after the upsert"]


async def test_transcript_reaches_the_contact_once_with_usage(
    sim: GhlSimulator, store: JournalStore, deliverer: OutboxDeliverer
) -> None:
    contact = sim.add_contact(phone=PHONE)
    rec = CallRecorder(store, "call-42", caller_phone=PHONE, usage_summary=lambda: "tts 310 chars")
    rec.record_message("assistant", "Hello! How can I help?")
    rec.record_message("user", "I want a quote.")
    rec.record_provider_switch("tts", "cartesia", "local-tts", "timeout")
    rec.finish()
    rec.finish()
    finish_call(store, "call-42", reason="duplicate")
    sim.state.plan.once(Fault(FaultType.CUT))
    assert await deliverer.drain(5)
    [note] = sim.notes_for(contact["id"])
    assert "Agent: Hello! How can I help?\nCaller: I want a quote." in note["body"]
    assert "Usage: tts 310 chars" in note["body"]
