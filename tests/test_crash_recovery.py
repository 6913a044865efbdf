"""A call process SIGKILLed mid-call loses nothing: the next deliverer sends its transcript once.

The child process runs a real text-mode LiveKit ``AgentSession`` on the scripted free LLM with a
:class:`CallRecorder` attached; it prints every conversation item as the session reports it.
The parent kills it after a few turns (the call still open), then starts a deliverer against
the GHL simulator, as the next worker start would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.crm.ghl_client import GhlClient
from agent.crm.ghl_sim import GhlSimulator
from agent.journal.crypto import JournalKeyError
from agent.journal.deliverer import OutboxDeliverer
from agent.journal.store import JOURNAL_FILENAME, JournalStore

KEY = "c" * 32
PHONE = "+14155550123"
CALL_ID = "room-crash-1"
TURNS = [
    "Hi, I'm interested in your product.",
    "What does it cost?",
    "Can someone call me back on Friday?",
]
REPO = Path(__file__).resolve().parent.parent


async def _child(data_dir: str) -> None:
    from livekit.agents import Agent, AgentSession
    from livekit.agents.voice.events import ConversationItemAddedEvent

    from agent.journal.recorder import CallRecorder
    from agent.responder.sales_responder import SalesResponder
    from plugins.local.scripted_llm import ScriptedLLM

    store = JournalStore.in_dir(data_dir, os.environ["ENCRYPTION_KEY"])
    recorder = CallRecorder(store, CALL_ID, caller_phone=PHONE)
    session: AgentSession[None] = AgentSession(llm=ScriptedLLM(SalesResponder()))
    recorder.attach(session)

    def said(ev: ConversationItemAddedEvent) -> None:
        text = getattr(ev.item, "text_content", None)
        if text:
            role = getattr(ev.item, "role", "?")
            print(f"SAID {role}\t{text}", flush=True)

    session.on("conversation_item_added", said)
    await session.start(Agent(instructions="You sell software."))
    for i, text in enumerate(TURNS):
        await session.run(user_input=text)
        print(f"TURN {i}", flush=True)
    print("IDLE", flush=True)
    await asyncio.Event().wait()  # the call stays open until the kill


def _run_and_kill(data_dir: Path) -> list[tuple[str, str]]:
    env = {**os.environ, "ENCRYPTION_KEY": KEY, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, __file__, "child", str(data_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    said: list[tuple[str, str]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("SAID "):
                role, _, text = line[5:].rstrip("\n").partition("\t")
                said.append((role, text))
            if line.startswith("IDLE"):
                break
        else:
            raise AssertionError(f"child exited early with {proc.wait()}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    return said


@pytest.mark.timeout(60)
async def test_sigkilled_call_is_delivered_once_after_restart(tmp_path: Path) -> None:
    said = await asyncio.to_thread(_run_and_kill, tmp_path)
    assert [t for r, t in said if r == "user"] == TURNS
    assert sum(1 for r, _ in said if r == "assistant") >= len(TURNS)

    raw = b"".join(
        p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(JOURNAL_FILENAME)
    )
    for _, text in said:
        assert text.encode() not in raw
    with pytest.raises(JournalKeyError, match="ENCRYPTION_KEY does not match the journal at"):
        JournalStore.in_dir(tmp_path, "w" * 32)

    store = JournalStore.in_dir(tmp_path, KEY)
    journaled = [
        (r.data["role"], r.data["text"]) for r in store.records(CALL_ID) if r.kind == "message"
    ]
    assert journaled == said
    [summary] = store.calls()
    assert summary.ended_at is None  # the process died before it could close the call

    async with (
        GhlSimulator() as sim,
        GhlClient(api_key="sim-key", location_id="sim-location", base_url=sim.base_url) as client,
    ):
        contact = sim.add_contact(phone=PHONE, tags=["existing"])
        deliverer = OutboxDeliverer(
            store, client, backoff_base_s=0.01, backoff_cap_s=0.05, poll_interval_s=0.05
        )
        deliverer.start()
        try:
            async with asyncio.timeout(15):
                while not store.outbox(CALL_ID) or store.pending():
                    await asyncio.sleep(0.05)
        finally:
            await deliverer.aclose()
        # a second start (another worker, or the same one restarting) sends nothing more
        again = OutboxDeliverer(store, client)
        report = await again.deliver_once()
        assert report.recovered_calls == 0 and report.delivered == 0

        [note] = sim.notes_for(contact["id"])
        speaker = {"user": "Caller", "assistant": "Agent"}
        body_lines = note["body"].splitlines()
        expected = [f"{speaker[r]}: {t}" for r, t in said]
        start = body_lines.index(expected[0])
        assert body_lines[start : start + len(expected)] == expected
        assert "recovered" in body_lines[0]
        assert sim.contacts[contact["id"]]["tags"] == ["existing"]


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "child":
    asyncio.run(_child(sys.argv[2]))
