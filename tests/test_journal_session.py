"""The CRM tools and the recorder inside a real LiveKit ``AgentSession`` (text mode).

A tiny scripted LLM asks for the ``save_lead`` tool on the first turn and answers in words once
the tool's output is in the context, as a cloud LLM would.
"""

from __future__ import annotations

import json
from typing import Any

from livekit.agents import Agent, AgentSession, llm, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

from agent.crm.ghl_client import GhlClient
from agent.crm.ghl_sim import GhlSimulator
from agent.crm.tools import CrmTools
from agent.journal.deliverer import OutboxDeliverer
from agent.journal.recorder import CallRecorder
from agent.journal.store import JournalStore

pytest_plugins = ["ghl_fixtures"]
CALLER = "+14155550100"


class ToolCallingLLM(llm.LLM):
    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> llm.LLMStream:
        return _Stream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _Stream(llm.LLMStream):
    async def _run(self) -> None:
        outputs = [i for i in self.chat_ctx.items if isinstance(i, llm.FunctionCallOutput)]
        rid = utils.shortuuid("fake_")
        if not outputs:
            args = json.dumps({"name": "Ada Lovelace", "email": "ada@example.com"})
            call = llm.FunctionToolCall(name="save_lead", arguments=args, call_id="call_1")
            delta = llm.ChoiceDelta(role="assistant", tool_calls=[call])
        else:
            delta = llm.ChoiceDelta(role="assistant", content=f"Done: {outputs[-1].output}")
        self._event_ch.send_nowait(llm.ChatChunk(id=rid, delta=delta))


async def test_tool_call_in_a_real_session_is_journaled_and_delivered(
    sim: GhlSimulator, client: GhlClient, store: JournalStore, deliverer: OutboxDeliverer
) -> None:
    existing = sim.add_contact(phone=CALLER, tags=["vip"])
    recorder = CallRecorder(store, "room-7", caller_phone=CALLER, usage_summary=lambda: "1 turn")
    tools = CrmTools(
        client=client,
        store=store,
        call_id="room-7",
        calendar_id="sim-calendar",
        timezone="America/New_York",
        deliverer=deliverer,
    )
    await tools.lookup_caller(CALLER)
    async with AgentSession[None](llm=ToolCallingLLM()) as session:
        recorder.attach(session)
        await session.start(Agent(instructions="Sell.", tools=[tools]))
        await session.run(user_input="I'm Ada, save my details please")
    # closing the session closed the call's journal and queued the transcript
    kinds = [r.kind for r in store.records("room-7")]
    assert kinds.count("tool_call") == 1 and kinds.count("message") >= 2
    [tool] = [r.data for r in store.records("room-7") if r.kind == "tool_call"]
    assert tool["name"] == "save_lead" and "saved your details" in tool["output"]
    assert await deliverer.drain(5)
    contact = sim.contacts[existing["id"]]
    assert contact["email"] == "ada@example.com" and set(contact["tags"]) == {"vip", "voice-lead"}
    [note] = sim.notes_for(existing["id"])
    assert "Caller: I'm Ada, save my details please" in note["body"]
    assert "Agent: Done: Thanks, Ada, I've saved your details." in note["body"]
    assert "Usage: 1 turn" in note["body"]
