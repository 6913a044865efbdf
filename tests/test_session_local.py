"""A full in-process ``AgentSession`` on the local chain only: no network, no key, no server.

The caller's turns go through the real pipeline (Silero VAD, turn detection, free-stt, free-llm,
local-tts) over a :class:`PhoneLine`; the assertions check what a caller would check: the agent
understood the words, answered with the scripted line, and that answer is audible speech that
a recogniser turns back into the same words.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from livekit.agents import AgentSession, llm, vad
from livekit.plugins import silero

from agent.responder.sales_responder import SalesResponder
from agent.responder.sales_script import SalesScript
from agent.sales_agent import SalesAgent
from plugins.local.hibari_tts import HibariEngine, HibariTTS
from plugins.local.responder import messages_from_chat_ctx
from plugins.local.scripted_llm import ScriptedLLM
from plugins.local.sphinx_stt import SphinxEngine, SphinxSTT
from plugins.sim.phone_line import AgentTurn, PhoneLine, speech_seconds

GREETING = "Hi, this is Alex. How can I help you today?"


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference length."""
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)


def scripted_reply_before(session: AgentSession[None], turn: AgentTurn) -> str:
    """What the script says for the history up to (not including) this turn's reply."""
    items = list(session.history.items)
    last_reply = max(
        i
        for i, item in enumerate(items)
        if isinstance(item, llm.ChatMessage) and item.role == "assistant"
    )
    ctx = llm.ChatContext(items[:last_reply])
    return SalesScript().reply(messages_from_chat_ctx(ctx))


@pytest.fixture(scope="module")
def silero_vad() -> vad.VAD:
    HibariEngine.shared()
    SphinxEngine.shared()
    return silero.VAD.load()


@pytest.fixture
async def line(silero_vad: vad.VAD) -> AsyncIterator[PhoneLine]:
    session: AgentSession[None] = AgentSession(
        stt=SphinxSTT(), llm=ScriptedLLM(SalesResponder()), tts=HibariTTS(), vad=silero_vad
    )
    async with PhoneLine(session, SalesAgent(greeting=GREETING), speed=2.0) as phone:
        greeting = await phone.listen()
        assert greeting.text == GREETING
        assert greeting.answered
        yield phone


def assert_spoken(turn: AgentTurn) -> None:
    assert turn.answered, turn.error
    assert speech_seconds(turn.audio, turn.sample_rate) > 0.5
    back = SphinxEngine.shared().transcribe(turn.audio, turn.sample_rate)
    assert wer(turn.text, back) <= 0.5, (turn.text, back)


async def test_text_turn_gets_the_scripted_spoken_reply(line: PhoneLine) -> None:
    turn = await line.type("Hi, I'd like to know your pricing.")

    assert turn.heard == "Hi, I'd like to know your pricing."
    assert turn.text == scripted_reply_before(line.session, turn)
    assert turn.text != GREETING
    assert_spoken(turn)


async def test_audio_turn_is_heard_answered_and_spoken(line: PhoneLine) -> None:
    said = "Hello, my name is John Smith and I would like to talk to sales."
    turn = await line.say(said)

    assert wer(said, turn.heard) <= 0.35, turn.heard
    assert turn.text == scripted_reply_before(line.session, turn)
    assert turn.latency_s is not None and turn.latency_s > 0
    assert_spoken(turn)
    # the session committed the caller's words and the reply, in that order
    assert line.transcript[-2:] == [("user", turn.heard), ("assistant", turn.text)]
