"""The free scripted sales responder: lead extraction, the dialogue, and the LiveKit LLM.

A real caller's words come from speech recognition: lower case, no punctuation, numbers as
words. The "real caller" section drives the script with such phrasings after the sales
agent's own greeting (as a production call starts) and checks what it says and captures.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from pathlib import Path
from typing import Literal

import pytest
from livekit.agents import (
    Agent,
    AgentSession,
    APIConnectionError,
    RunResult,
    function_tool,
    llm,
)
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

from agent.responder.lead import Lead
from agent.responder.lead_extraction import (
    extract_all,
    extract_email,
    extract_name,
    extract_phone,
    extract_preferred_time,
)
from agent.responder.sales_responder import SalesResponder
from agent.responder.sales_script import DEFAULT_FAQ_FILE, SalesScript
from agent.sales_agent import GREETING
from plugins.local.faq import load_faq
from plugins.local.responder import Reply, Turn, messages_from_chat_ctx
from plugins.local.scripted_llm import FALLBACK_LINE, ScriptedLLM

# --- extraction: phone ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my number is five five five one two three four five six seven", "+15551234567"),
        ("four one five five five five two six seven one", "+14155552671"),
        ("call me at two one two five five five zero one two three", "+12125550123"),
        ("it's two one two five five five oh one two three", "+12125550123"),
        ("my cell is 555-123-4567", "+15551234567"),
        ("(415) 555-2671 is my number", "+14155552671"),
        ("+1 415 555 2671", "+14155552671"),
        ("one eight hundred five five five one two one two", "+18005551212"),
        ("four one five double five five two six seven one", "+14155552671"),
        ("four one five triple five two six seven one", "+14155552671"),
        ("fifty five fifty five one two three four five six", "+15555123456"),
        ("plus four four seven nine one one one two three four five six", "+447911123456"),
        ("four one five dash five five five dash two six seven one", "+14155552671"),
        ("yeah it's 4155552671 thanks", "+14155552671"),
    ],
)
def test_phone_numbers_are_found_and_normalised_to_e164(text: str, expected: str) -> None:
    assert extract_phone(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "i have two kids and three dogs",
        "call me in five minutes",
        "my zip code is nine four one zero seven",
        "i'm forty two years old",
        "five five five one two three four",  # no area code: not a full number
        "my order number is five five five one two three four five six seven",
        "account one two three four five six seven eight nine zero",
        "we have about twenty five people on the team",
        "tomorrow at three thirty",
        "",
    ],
)
def test_things_that_are_not_phone_numbers_are_ignored(text: str) -> None:
    assert extract_phone(text) is None


def test_phone_region_decides_numbers_without_country_code() -> None:
    assert extract_phone("oh seven nine one one one two three four five six", "GB") == (
        "+447911123456"
    )
    assert extract_phone("four one five five five five two six seven one", "us") == ("+14155552671")


def test_unknown_phone_region_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="two-letter ISO 3166"):
        extract_phone("four one five five five five two six seven one", "USA")


# --- extraction: email ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("it's john at example dot com", "john@example.com"),
        ("my email is john dot smith at gmail dot com", "john.smith@gmail.com"),
        ("john underscore smith at example dot co dot uk", "john_smith@example.co.uk"),
        ("mary dash ann at big dash company dot com", "mary-ann@big-company.com"),
        ("j o h n at example dot com", "john@example.com"),
        ("my email is sarah connor at gmail dot com", "sarahconnor@gmail.com"),
        ("yeah sure it's john seven at example dot com", "john7@example.com"),
        ("John@Example.com is my email", "john@example.com"),
        ("send it to john at example.com please", "john@example.com"),
        ("john at sign example dot org", "john@example.org"),
    ],
)
def test_spoken_and_typed_emails_are_found(text: str, expected: str) -> None:
    assert extract_email(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "i'm at home right now",
        "we're at the office",
        "call me at five",
        "look at the website",
        "i'll be at work dot",
        "my email is john at example",  # no top-level domain
        "john at example dot c",  # one-letter top-level domain
        "i don't have an email",
        "at dot com",
    ],
)
def test_things_that_are_not_emails_are_ignored(text: str) -> None:
    assert extract_email(text) is None


# --- extraction: name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my name is Sarah Connor", "Sarah Connor"),
        ("my name is sarah connor", "Sarah Connor"),
        ("this is mike", "Mike"),
        ("hi this is mike from acme", "Mike"),
        ("i'm jennifer and i'd like a demo", "Jennifer"),
        ("name's bob", "Bob"),
        ("you can call me liz", "Liz"),
        ("my name is mary-jane watson", "Mary-Jane Watson"),
        ("my name is o'brien", "O'Brien"),
        ("i am DeShawn Williams", "DeShawn Williams"),
    ],
)
def test_names_are_found_after_a_cue(text: str, expected: str) -> None:
    assert extract_name(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "i'm interested in your product",
        "this is great",
        "i'm calling about pricing",
        "i'm not sure",
        "i'm good thanks",
        "call me tomorrow",
        "call me back",
        "i am looking for a quote",
        "sarah connor",  # a bare name counts only when the agent asked for it
        "it's sarah",
    ],
)
def test_phrases_that_are_not_names_are_ignored(text: str) -> None:
    assert extract_name(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sarah connor", "Sarah Connor"),
        ("it's sarah", "Sarah"),
        ("yeah sure it's mike", "Mike"),
        ("um pedro", "Pedro"),
        ("no it's sarah", "Sarah"),
    ],
)
def test_a_bare_name_counts_when_the_agent_asked_for_it(text: str, expected: str) -> None:
    assert extract_name(text, expecting=True) == expected


@pytest.mark.parametrize("text", ["yes", "sounds good", "i'd rather not say", "why", "um"])
def test_a_non_answer_to_the_name_question_is_not_a_name(text: str) -> None:
    assert extract_name(text, expecting=True) is None


# --- extraction: preferred time ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call me tomorrow afternoon", "tomorrow afternoon"),
        ("tomorrow at three pm works", "tomorrow at three pm"),
        ("the best time is monday morning around ten", "monday morning around ten"),
        ("you can reach me any time after five", "any time after five"),
        ("call me back on friday", "on friday"),
        ("mornings are best", "mornings"),
        ("call me next week", "next week"),
        ("i'm free between two and four tomorrow", "between two and four tomorrow"),
        ("call me at 3:30 today", "at 3:30 today"),
        ("call me at three p m", "at three p m"),
    ],
)
def test_preferred_times_are_found_when_the_caller_talks_about_calls(
    text: str, expected: str
) -> None:
    assert extract_preferred_time(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tomorrow afternoon", "tomorrow afternoon"),
        ("in the morning", "in the morning"),
        ("whenever", "whenever"),
        ("anytime", "anytime"),
        ("as soon as possible", "as soon as possible"),
        ("around noon", "around noon"),
    ],
)
def test_a_bare_time_counts_when_the_agent_asked_for_it(text: str, expected: str) -> None:
    assert extract_preferred_time(text, expecting=True) == expected


@pytest.mark.parametrize(
    ("text", "expecting"),
    [
        ("good morning", True),
        ("have a good evening", True),
        ("i'm busy today", True),
        ("not tomorrow", True),
        ("i bought it today", False),
        ("i have five kids", True),
        ("we have three locations", False),
    ],
)
def test_phrases_that_are_not_call_back_times_are_ignored(text: str, expecting: bool) -> None:
    assert extract_preferred_time(text, expecting=expecting) is None


# --- extraction: everything at once -----------------------------------------------------------


def test_several_details_in_one_utterance_do_not_steal_each_others_words() -> None:
    found = extract_all(
        "hi this is mike my number is four one five five five five two six seven one "
        "my email is mike at acme dot io and call me monday morning"
    )
    assert found.name == "Mike"
    assert found.phone == "+14155552671"
    assert found.email == "mike@acme.io"
    assert found.preferred_time == "monday morning"
    assert found.found() == ("name", "phone", "email", "preferred_time")


def test_an_email_and_a_phone_after_at_are_not_read_as_times() -> None:
    found = extract_all("call me at five five five one two three four five six seven")
    assert found.phone == "+15551234567"
    assert found.preferred_time is None
    found = extract_all("reach me at john at example dot com", expecting="preferred_time")
    assert found.email == "john@example.com"
    assert found.preferred_time is None


def test_nothing_is_found_in_small_talk() -> None:
    assert extract_all("hello how are you doing today").found() == ()


# --- the dialogue -----------------------------------------------------------------------------

_SPEAKABLE = re.compile(r"^[A-Za-z0-9 ,.?'!:-]+$")


def _talk(script: SalesScript, turns: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    history: list[tuple[str, str]] = [("system", "You are a friendly sales agent.")]
    replies: list[str] = []
    for said in turns:
        history.append(("user", said))
        answer = script.reply(history)
        assert _SPEAKABLE.match(answer), f"not speakable: {answer!r}"
        history.append(("assistant", answer))
        replies.append(answer)
    return replies, history


def test_first_words_are_a_greeting() -> None:
    script = SalesScript(company="Acme Solar", agent_name="Sam")
    greeting = script.reply([("system", "be nice")])
    assert "Acme Solar" in greeting and "Sam" in greeting
    assert greeting.endswith("How can I help you today?")


def test_a_full_call_collects_confirms_and_promises_a_call_back() -> None:
    script = SalesScript()
    replies, history = _talk(
        script,
        [
            "hi",
            "how much does it cost",
            "my name is sarah connor",
            "five five five one two three four five six seven",
            "it's sarah at example dot com",
            "tomorrow afternoon",
            "yes",
            "no thanks bye",
        ],
    )
    assert "name" in replies[0]
    assert "forty nine dollars" in replies[1] and "name" in replies[1]
    assert "Sarah" in replies[2] and "phone number" in replies[2]
    assert "email" in replies[3]
    assert "good time" in replies[4]
    readback = replies[5]
    for spoken in (
        "Sarah Connor",
        "five five five, one two three, four five six seven",
        "sarah at example dot com",
    ):
        assert spoken in readback
    assert "tomorrow afternoon" in readback and readback.endswith("Did I get that right?")
    assert "call you back tomorrow afternoon" in replies[6]
    assert "Goodbye" in replies[7]
    assert script.confirmed(history)
    assert script.lead(history) == Lead(
        name="Sarah Connor",
        phone="+15551234567",
        email="sarah@example.com",
        preferred_time="tomorrow afternoon",
        notes=["asked about price"],
    )


def test_only_missing_details_are_asked_for_and_several_are_taken_at_once() -> None:
    script = SalesScript()
    replies, history = _talk(
        script,
        [
            "hello this is mike my number is four one five five five five two six seven one "
            "and my email is mike at acme dot io",
        ],
    )
    assert "Mike" in replies[0]
    assert "good time" in replies[0]  # straight to the one detail still missing
    assert not script.confirmed(history)


def test_a_correction_at_the_read_back_updates_the_lead_and_reads_it_back_again() -> None:
    script = SalesScript()
    replies, history = _talk(
        script,
        [
            "this is mike four one five five five five two six seven one mike at acme dot io",
            "call me monday morning",
            "no the email is mike at acme dot com",
        ],
    )
    assert "mike at acme dot io" in replies[1]
    assert "Thanks for the correction" in replies[2]
    assert "mike at acme dot com" in replies[2] and replies[2].endswith("Did I get that right?")
    assert not script.confirmed(history)
    history.append(("user", "yes that's right"))
    assert script.confirmed(history)
    assert script.lead(history).email == "mike@acme.com"


def test_a_plain_no_at_the_read_back_asks_what_to_fix() -> None:
    script = SalesScript()
    replies, history = _talk(
        script,
        [
            "my name is bob",
            "five five five one two three four five six seven",
            "bob at example dot com",
            "anytime",
            "no",
            "the name",
            "robert",
            "yes",
        ],
    )
    assert "What should I fix" in replies[4]
    assert replies[5] == "Sure. What's the correct name?"
    assert "your name is Robert" in replies[6]
    assert script.lead(history).name == "Robert"
    assert script.confirmed(history)


def test_a_correction_during_collection_replaces_the_earlier_value() -> None:
    script = SalesScript()
    _, history = _talk(
        script,
        [
            "my name is sarah",
            "actually my name is sara connor",
            "no it's five five five one two three four five six seven",
        ],
    )
    lead = script.lead(history)
    assert lead.name == "Sara Connor"
    assert lead.phone == "+15551234567"


def test_declining_a_detail_moves_on_and_the_read_back_skips_it() -> None:
    script = SalesScript()
    replies, history = _talk(
        script,
        [
            "my name is sarah",
            "i'd rather not give my number",
            "sarah at example dot com",
            "no",
            "yes",
        ],
    )
    assert "email" in replies[1]
    assert "number" not in replies[3] and "sarah at example dot com" in replies[3]
    assert "as soon as possible" in replies[4]
    assert script.confirmed(history)
    assert script.lead(history).phone is None


def test_an_unclear_answer_gets_the_question_again_in_other_words() -> None:
    script = SalesScript()
    replies, _ = _talk(script, ["hi", "um", "sarah"])
    assert replies[1].startswith("Sorry") and "name" in replies[1]
    assert "Sarah" in replies[2]


def test_not_interested_ends_politely() -> None:
    replies, history = _talk(SalesScript(), ["i'm not interested stop calling"])
    assert "Goodbye" in replies[0]
    assert not SalesScript().confirmed(history)


def test_leaving_early_gets_one_last_ask_then_a_goodbye() -> None:
    replies, _ = _talk(SalesScript(), ["hi", "bye", "bye"])
    assert replies[1].startswith("Before you go") and "Goodbye" not in replies[1]
    assert "Goodbye" in replies[2]


def test_faq_is_configurable_and_matches_fuzzy_words() -> None:
    script = SalesScript(
        faq={"shipping, delivery, deliver": "We ship within two days.", "warranty": "Two years."},
        company="Acme",
    )
    replies, _ = _talk(script, ["do you delivr to canada", "what about the warrenty"])
    assert replies[0].startswith("Hi, thanks for calling Acme")
    assert "We ship within two days." in replies[0]
    assert "Two years." in replies[1]
    # the default FAQ is not mixed in
    assert "forty nine" not in script.reply([("user", "how much is it")])


def test_an_unknown_question_is_handed_to_the_specialist() -> None:
    replies, _ = _talk(SalesScript(), ["hi", "do you support spanish speakers"])
    assert "specialist" in replies[1] and "name" in replies[1]


def test_the_script_picks_up_a_call_another_llm_started() -> None:
    history = [
        ("system", "You are a sales agent."),
        ("user", "hi there"),
        ("assistant", "Hello! Happy to help. Could I get your full name?"),
        ("user", "dana scully"),
        ("assistant", "Thanks Dana! And what number can we reach you on?"),
        ("user", "two one two five five five zero one two three"),
    ]
    script = SalesScript()
    reply = script.reply(history)
    assert "email" in reply
    assert script.lead(history).name == "Dana Scully"
    assert script.lead(history).phone == "+12125550123"


def test_the_same_history_always_gets_the_same_reply() -> None:
    script = SalesScript()
    _, history = _talk(script, ["hi", "my name is sarah", "what does it do"])
    assert {SalesScript().reply(history) for _ in range(3)} == {script.reply(history)}


def test_bad_histories_and_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="role 'bot'"):
        SalesScript().reply([("bot", "hi")])
    with pytest.raises(ValueError, match="plain spoken sentences"):
        SalesScript(faq={"price": "**Cheap!**"})
    with pytest.raises(ValueError, match="no trigger words"):
        SalesScript(faq={" , ": "An answer."})
    with pytest.raises(ValueError, match="placeholder"):
        SalesScript(faq={"price": "Ask {boss}."})
    with pytest.raises(ValueError, match="ISO 3166"):
        SalesScript(region="Narnia")


def test_the_sales_faq_file_and_custom_files_load(tmp_path: Path) -> None:
    default = load_faq(DEFAULT_FAQ_FILE)
    assert any("price" in key for key in default)
    custom = tmp_path / "faq.toml"
    custom.write_text('[faq]\n"parking" = "Parking is free."\n', encoding="utf-8")
    assert load_faq(str(custom)) == {"parking": "Parking is free."}
    broken = tmp_path / "broken.toml"
    broken.write_text("faq = 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"needs a \[faq\] table"):
        load_faq(str(broken))


# --- the LiveKit LLM --------------------------------------------------------------------------


class RecordingSink:
    """A LeadSink that keeps what it is given; can refuse the first ``failures`` saves."""

    def __init__(self, failures: int = 0) -> None:
        self.leads: list[Lead] = []
        self.attempts = 0
        self.failures = failures
        self.saved = asyncio.Event()

    async def save_lead(self, lead: Lead) -> str:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("crm down")
        self.leads.append(lead)
        self.saved.set()
        return "saved"


_CALL = [
    "hi",
    "my name is sarah connor",
    "five five five one two three four five six seven",
    "it's sarah at example dot com",
    "tomorrow afternoon",
    "yes",
]


async def _run_session(
    scripted: ScriptedLLM, turns: list[str], agent: Agent | None = None
) -> list[str]:
    replies: list[str] = []
    async with AgentSession(llm=scripted) as session:
        await session.start(agent or Agent(instructions="You are a sales agent."))
        for said in turns:
            result: RunResult[None] = await session.run(user_input=said)
            event = result.expect.next_event().is_message(role="assistant").event()
            result.expect.no_more_events()
            replies.append(event.item.text_content or "")
    return replies


async def test_a_whole_call_through_agent_session_saves_exactly_one_lead() -> None:
    sink = RecordingSink()
    scripted = ScriptedLLM(SalesResponder(sink=sink))
    replies = await _run_session(scripted, [*_CALL, "what are your hours", "no that's all"])
    await scripted.aclose()

    assert "May I have your name" in replies[0]
    assert replies[1] == "Thanks, Sarah. What's the best phone number to reach you?"
    assert replies[2] == "Got it, thanks. And what's your email address?"
    assert replies[3] == "Got it, thanks. When's a good time for us to call you back?"
    assert "five five five, one two three, four five six seven" in replies[4] and replies[
        4
    ].endswith("Did I get that right?")
    assert "call you back tomorrow afternoon" in replies[5]
    assert "Monday to Friday" in replies[6]
    assert "Goodbye" in replies[7]
    assert sink.leads == [
        Lead(
            name="Sarah Connor",
            phone="+15551234567",
            email="sarah@example.com",
            preferred_time="tomorrow afternoon",
        )
    ]


async def test_a_correction_after_confirming_is_saved_again_once_reconfirmed() -> None:
    sink = RecordingSink()
    scripted = ScriptedLLM(SalesResponder(sink=sink))
    replies = await _run_session(
        scripted, [*_CALL, "actually my email is sarah at acme dot com", "yes", "thanks"]
    )
    await scripted.aclose()
    assert "sarah at acme dot com" in replies[6]
    assert [lead.email for lead in sink.leads] == ["sarah@example.com", "sarah@acme.com"]


async def test_a_failing_sink_keeps_the_reply_and_the_lead_is_retried() -> None:
    sink = RecordingSink(failures=1)
    scripted = ScriptedLLM(SalesResponder(sink=sink))
    replies = await _run_session(scripted, _CALL)
    assert "call you back tomorrow afternoon" in replies[-1]
    await scripted.aclose()  # the refused lead gets its retry here at the latest
    assert sink.attempts == 2
    assert [lead.phone for lead in sink.leads] == ["+15551234567"]
    assert scripted.responder.unsaved_leads == []


async def test_the_reply_does_not_wait_for_a_slow_sink() -> None:
    release = asyncio.Event()

    class SlowSink(RecordingSink):
        async def save_lead(self, lead: Lead) -> str:
            await release.wait()
            return await super().save_lead(lead)

    sink = SlowSink()
    scripted = ScriptedLLM(SalesResponder(sink=sink))
    replies = await _run_session(scripted, _CALL)
    assert "call you back" in replies[-1]  # answered while the save is still pending
    assert sink.leads == []
    release.set()
    await scripted.aclose()
    assert len(sink.leads) == 1


class _Tools(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You are a sales agent with CRM tools.")

    @function_tool
    async def save_contact(self, name: str, phone: str) -> str:
        """Save the caller's contact details in the CRM."""
        raise AssertionError("the scripted LLM must never call tools")


async def test_tools_are_accepted_and_never_called() -> None:
    scripted = ScriptedLLM(SalesResponder())
    replies = await _run_session(scripted, ["hi", "my name is sarah"], agent=_Tools())
    assert "Sarah" in replies[1]


async def test_chat_streams_word_chunks_with_usage_and_names_itself() -> None:
    scripted = ScriptedLLM(SalesResponder())
    assert (scripted.provider, scripted.model) == ("free-llm", "scripted-v1")
    assert scripted.label.startswith("free-llm")
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="system", content="You are a sales agent.")
    ctx.add_message(role="user", content="how much does it cost")
    chunks = [chunk async for chunk in scripted.chat(chat_ctx=ctx)]
    texts = [c.delta.content for c in chunks if c.delta and c.delta.content]
    assert len(texts) > 5
    assert "".join(texts).startswith("Hi, thanks for calling")
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens > 0 and usage[0].prompt_tokens > 0
    assert usage[0].total_tokens == usage[0].completion_tokens + usage[0].prompt_tokens
    await scripted.aclose()


def test_chat_context_is_read_as_role_and_text() -> None:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="developer", content="rules")
    ctx.add_message(role="user", content="hi")
    ctx.insert(llm.FunctionCall(call_id="1", name="lookup", arguments="{}"))
    ctx.insert(llm.FunctionCallOutput(call_id="1", name="lookup", output="{}", is_error=False))
    ctx.add_message(role="assistant", content="Hello!")
    assert messages_from_chat_ctx(ctx) == [
        ("system", "rules"),
        ("user", "hi"),
        ("assistant", "Hello!"),
    ]


class _DownLLM(llm.LLM[Literal["metrics_collected", "error"]]):
    """A cloud LLM that is down: every request fails to connect."""

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: object,
    ) -> llm.LLMStream:
        return _DownStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _DownStream(llm.LLMStream):
    async def _run(self) -> None:
        raise APIConnectionError("connection refused", retryable=False)


async def test_free_llm_carries_the_call_at_the_end_of_a_fallback_chain() -> None:
    sink = RecordingSink()
    scripted = ScriptedLLM(SalesResponder(sink=sink))
    chain = llm.FallbackAdapter([_DownLLM(), scripted], max_retry_per_llm=0)
    replies: list[str] = []
    async with AgentSession(llm=chain) as session:
        await session.start(Agent(instructions="You are a sales agent."))
        for said in _CALL:
            result: RunResult[None] = await session.run(user_input=said)
            event = result.expect.next_event().is_message(role="assistant").event()
            replies.append(event.item.text_content or "")
    await asyncio.wait_for(sink.saved.wait(), timeout=5)
    await scripted.aclose()
    assert "call you back tomorrow afternoon" in replies[-1]
    assert len(sink.leads) == 1 and sink.leads[0].email == "sarah@example.com"


def test_a_correction_of_another_detail_is_not_taken_as_declining_the_question() -> None:
    script = SalesScript()
    _, history = _talk(
        script,
        [
            "my name is sarah",
            "five five five one two three four five six seven",
            "no it's five five five one two three four five six eight",
        ],
    )
    assert script.lead(history).phone == "+15551234568"
    assert "email" in script.reply(history[:-1])  # still asking for the email


def test_leaving_with_details_on_file_reads_them_back_first() -> None:
    replies, _ = _talk(
        SalesScript(),
        ["this is mike five five five one two three four five six seven", "bye", "yes"],
    )
    assert replies[1].startswith("Before you go, let me read back: your name is Mike")
    assert "call you back as soon as possible" in replies[2]


_VOCABULARY = [
    "yes",
    "no",
    "hi",
    "bye",
    "my",
    "name",
    "is",
    "this",
    "i'm",
    "it's",
    "at",
    "dot",
    "com",
    "five",
    "one",
    "two",
    "three",
    "seven",
    "oh",
    "eight",
    "tomorrow",
    "morning",
    "how",
    "much",
    "cost",
    "price",
    "email",
    "number",
    "phone",
    "sarah",
    "mike",
    "call",
    "me",
    "back",
    "not",
    "interested",
    "actually",
    "wrong",
    "the",
    "time",
    "whenever",
    "um",
    "uh",
    "what",
    "do",
    "you",
    "do",
    "hours",
    "and",
    "or",
]


def test_any_jumble_of_words_gets_a_speakable_reply() -> None:
    rng = random.Random(1234)
    script = SalesScript()
    for _ in range(25):
        history: list[tuple[str, str]] = [("system", "rules")]
        for _ in range(10):
            said = " ".join(rng.choice(_VOCABULARY) for _ in range(rng.randint(1, 12)))
            history.append(("user", said))
            answer = script.reply(history)
            assert answer and _SPEAKABLE.match(answer), (said, answer)
            history.append(("assistant", answer))
        script.lead(history)
        script.confirmed(history)


def _ctx(history: list[tuple[str, str]]) -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    for role, text in history:
        ctx.add_message(role=role, content=text)  # type: ignore[arg-type]
    return ctx


async def test_the_same_confirmation_turn_generated_twice_saves_once() -> None:
    sink = RecordingSink()
    scripted = ScriptedLLM(SalesResponder(sink=sink))
    _, history = _talk(SalesScript(), _CALL[:-1])
    history.append(("user", "yes"))
    ctx = _ctx(history)
    first = await scripted.chat(chat_ctx=ctx).collect()
    again = await scripted.chat(chat_ctx=ctx.copy()).collect()  # e.g. preemptive generation
    await scripted.aclose()
    assert first.text == again.text and "call you back" in first.text
    assert len(sink.leads) == 1


async def test_a_script_failure_still_gets_a_spoken_line() -> None:
    class Broken:
        async def respond(self, turn: Turn) -> Reply:
            raise RuntimeError("bug")

        async def aclose(self) -> None:
            return None

    scripted = ScriptedLLM(Broken())
    response = await scripted.chat(chat_ctx=_ctx([("user", "hi")])).collect()
    assert response.text == FALLBACK_LINE
    # the apology is not repeated: the second failure in a row moves the call on
    again = await scripted.chat(
        chat_ctx=_ctx([("user", "hi"), ("assistant", FALLBACK_LINE), ("user", "hello?")])
    ).collect()
    await scripted.aclose()
    assert again.text and again.text != FALLBACK_LINE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sarah and my email is sarah at example dot com", "Sarah"),
        ("pedro here", "Pedro"),
        ("it's mike calling about the demo", "Mike"),
    ],
)
def test_a_bare_name_can_lead_a_longer_answer(text: str, expected: str) -> None:
    assert extract_all(text, expecting="name").name == expected


@pytest.mark.parametrize("text", ["whatever", "pardon", "can you repeat that", "what was that"])
def test_asking_back_is_not_a_name(text: str) -> None:
    assert extract_all(text, expecting="name").name is None


# --- a real caller ----------------------------------------------------------------------------

OPENED: list[tuple[str, str]] = [("system", "You are a sales agent."), ("assistant", GREETING)]
OFFER = (
    "I can tell you what Acme Growth does and what it costs, or set up a meeting with one of "
    "our specialists. What would you like to do?"
)
PRODUCT = "Acme Growth answers and follows up on your sales calls around the clock"
PRICE = "Our plans start at forty nine dollars a month per seat"


def _after(
    history: list[tuple[str, str]], turns: list[str], script: SalesScript | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """The agent's replies to ``turns`` said after ``history``, and the history after them."""
    script = script or SalesScript()
    history = list(history)
    replies: list[str] = []
    for said in turns:
        history.append(("user", said))
        answer = script.reply(history)
        assert _SPEAKABLE.match(answer), f"not speakable: {answer!r}"
        history.append(("assistant", answer))
        replies.append(answer)
    return replies, history


@pytest.mark.parametrize("said", ["hi", "hello there", "hey", "good morning", "hi how are you"])
def test_a_greeting_gets_what_the_agent_can_do_and_captures_nothing(said: str) -> None:
    [reply], history = _after(OPENED, [said])
    assert reply.endswith(OFFER)
    assert ("doing well" in reply) == ("how are you" in said)
    assert SalesScript().lead(history) == Lead()


@pytest.mark.parametrize(
    "said",
    [
        "what does your company sell",
        "what do you guys do",
        "so what exactly do you sell",
        "tell me about your company",
        "what kind of services do you offer",
        "what's this about",
        "what does your company do",
    ],
)
def test_what_do_you_sell_in_its_common_phrasings(said: str) -> None:
    [reply], history = _after(OPENED, [said])
    assert reply.startswith(PRODUCT)
    assert reply.endswith("May I have your name, please?")  # and the call moves on
    assert SalesScript().lead(history).notes == ["asked about what do you do"]


@pytest.mark.parametrize(
    "said",
    [
        "how much is it",
        "what does it cost",
        "what are your prices",
        "how much do you charge",
        "is it expensive",
    ],
)
def test_price_questions_get_the_price(said: str) -> None:
    [reply], history = _after(OPENED, [said])
    assert reply.startswith(PRICE)
    assert SalesScript().lead(history).notes == ["asked about price"]


@pytest.mark.parametrize(
    "said",
    [
        "i'd like to book a meeting",
        "can we schedule a call",
        "i want to set up an appointment",
        "can i talk to someone",
        "could i speak to a specialist",
    ],
)
def test_a_meeting_request_without_a_crm_collects_a_call_back(said: str) -> None:
    replies, history = _after(
        OPENED,
        [
            said,
            "john smith",
            "four one five two three nine eight eight one two",
            "no",
            "monday at ten",
            "yes",
        ],
    )
    assert replies[0] == (
        "I'd be happy to set up a meeting with one of our specialists. May I have your name, please?"
    )
    assert replies[3] == "When's a good time for us to call you back?"
    assert replies[5] == (
        "Perfect, thank you John. One of our specialists will call you monday at ten to set up "
        "the meeting. Is there anything else I can help with?"
    )
    assert SalesScript().lead(history) == Lead(
        name="John Smith", phone="+14152398812", preferred_time="monday at ten"
    )


_TO_EMAIL = ["my name is john smith", "four one five two three nine eight eight one two"]


@pytest.mark.parametrize(
    ("said", "email", "spoken"),
    [
        ("john smith gmail dot com", "johnsmith@gmail.com", "johnsmith at gmail dot com"),
        ("it's jane doe yahoo dot com", "janedoe@yahoo.com", "janedoe at yahoo dot com"),
        (
            "my email is bob hotmail dot co dot uk",
            "bob@hotmail.co.uk",
            "bob at hotmail dot co dot uk",
        ),
        (
            "sarah dot connor outlook dot com",
            "sarah.connor@outlook.com",
            "sarah dot connor at outlook dot com",
        ),
    ],
)
def test_an_email_whose_at_was_dropped_is_confirmed_not_looped(
    said: str, email: str, spoken: str
) -> None:
    replies, history = _after(OPENED, [*_TO_EMAIL, said, "yes"])
    assert replies[1] == "Got it, thanks. And what's your email address?"
    assert replies[2] == f"Just to check, is your email {spoken}?"
    assert replies[3] == "Great, thanks. When's a good time for us to call you back?"
    assert SalesScript().lead(history).email == email


def test_a_refused_email_guess_is_asked_once_more_then_the_call_moves_on() -> None:
    replies, history = _after(
        OPENED,
        [*_TO_EMAIL, "john smith gmail dot com", "no", "jon smith gmail dot com", "no", "mumble"],
    )
    assert replies[3].startswith("Sorry, I didn't get that. Could you say your email")
    assert replies[4] == "Just to check, is your email jonsmith at gmail dot com?"
    assert replies[5] == (  # heard wrong twice: the call moves on
        "No problem, our specialist can sort that out with you. "
        "When's a good time for us to call you back?"
    )
    assert SalesScript().lead(history).email is None


@pytest.mark.parametrize(
    "said",
    [
        "yes that's right",
        "yeah that's correct",
        "yep",
        "correct",
        "uh huh",
        "that's right",
        "yes it is",
        "sounds good",
    ],
)
def test_a_yes_after_the_read_back_confirms_the_lead(said: str) -> None:
    script = SalesScript()
    replies, history = _after(
        OPENED,
        [
            "my name is sarah connor",
            "four one five two three nine eight eight one two",
            "sarah at example dot com",
            "tomorrow afternoon",
            said,
        ],
        script,
    )
    assert replies[3].endswith("Did I get that right?")
    assert replies[4] == (
        "Perfect, thank you Sarah. One of our specialists will call you back tomorrow afternoon. "
        "Is there anything else I can help with?"
    )
    assert script.confirmed(history)
    assert script.lead(history) == Lead(
        name="Sarah Connor",
        phone="+14152398812",
        email="sarah@example.com",
        preferred_time="tomorrow afternoon",
    )


def test_never_sorry_twice_a_detail_that_is_not_heard_twice_is_skipped() -> None:
    replies, _ = _after(OPENED, ["i'd like a call back", "um", "uh"])
    assert replies[1].startswith("Sorry, I didn't catch that.")
    assert replies[2] == (
        "No problem, our specialist can sort that out with you. What's the best phone number "
        "to reach you?"
    )
    for earlier, later in itertools.pairwise(replies):
        assert not (earlier.startswith("Sorry") and later.startswith("Sorry"))


def test_never_sorry_twice_an_unclear_read_back_twice_keeps_the_details() -> None:
    script = SalesScript()
    replies, history = _after(
        OPENED,
        ["my name is sam", "no", "sam at example dot com", "no", "hmm", "what"],
        script,
    )
    assert replies[3].startswith("Let me read that back") and replies[4].startswith("Sorry")
    assert replies[5].startswith("No problem, I'll keep these details")
    for earlier, later in itertools.pairwise(replies):
        assert not (earlier.startswith("Sorry") and later.startswith("Sorry")), replies
    assert script.confirmed(history)
    assert script.lead(history).email == "sam@example.com"


def test_a_six_turn_call_greeting_product_price_booking_dropped_at_confirmation() -> None:
    script = SalesScript()
    turns = [
        "hi there",
        "what does your company do",
        "how much does it cost",
        "i'd like to book a meeting my name is john smith",
        "four one five two three nine eight eight one two and my email is john smith gmail dot com",
        "yes",
        "friday morning",
        "yes that's right",
    ]
    replies, history = _after(OPENED, turns, script)
    assert replies[0].endswith(OFFER)
    assert replies[1].startswith(PRODUCT)
    assert replies[2].startswith(PRICE)
    assert replies[3].startswith("Thanks, John.")
    assert replies[4].endswith("Just to check, is your email johnsmith at gmail dot com?")
    assert replies[7].startswith("Perfect, thank you John.")
    assert script.confirmed(history)
    assert script.lead(history).email == "johnsmith@gmail.com"
