"""The library's floor LLM: an injected responder's words and tool calls, through LiveKit."""

from __future__ import annotations

from pathlib import Path

from livekit.agents import Agent, AgentSession, RunResult, function_tool, llm

from plugins.chain import build_chains
from plugins.local.faq import FaqBook
from plugins.local.faq_responder import FaqResponder
from plugins.local.responder import Reply, ToolResult, Turn
from plugins.local.scripted_llm import ScriptedLLM
from plugins.resilience.store_sqlite import SqliteHealthStore
from plugins.spec import ProviderSpec

FAQ = {"hours, open": "We are open nine to five.", "price, cost": "It is ten dollars."}


def test_faq_responder_greets_answers_and_never_repeats_its_apology() -> None:
    responder = FaqResponder(FAQ, business="Bob's Bikes")
    history: list[tuple[str, str]] = [("system", "rules")]
    assert (
        responder.reply(history)
        == "Hello, thanks for calling Bob's Bikes. How can I help you today?"
    )
    said: list[str] = []
    for heard in ["when are you open", "what does it cost", "do you fix cars", "can you do boats"]:
        history.append(("user", heard))
        said.append(responder.reply(history))
        history.append(("assistant", said[-1]))
    assert said[0].startswith("We are open nine to five.")
    assert said[1].startswith("It is ten dollars.")
    assert said[2].startswith("I'm sorry, I can't help with that right now.")
    assert "hours" in said[2]  # it says what it can answer
    assert said[3] != said[2] and not said[3].startswith("I'm sorry")


class _Booker:
    """A responder that calls the agent's ``book`` tool, then speaks what the tool answered."""

    def __init__(self) -> None:
        self.seen: list[ToolResult] = []
        self.closed = False

    async def respond(self, turn: Turn) -> Reply:
        results = turn.tool_results_since_last_user()
        if results:
            self.seen.extend(results)
            return Reply(text=f"Done: {results[-1].output}")
        if "book" in turn.tool_names:
            return Reply.calling("book", {"slot": "monday 10am"}, text="One moment.")
        return Reply(text="I cannot book here.")

    async def aclose(self) -> None:
        self.closed = True


class _Shop(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You book appointments.")
        self.booked: list[str] = []

    @function_tool
    async def book(self, slot: str) -> str:
        """Book the slot."""
        self.booked.append(slot)
        return f"booked {slot}"


async def test_an_injected_responders_tool_call_runs_the_agents_tool_through_livekit() -> None:
    booker = _Booker()
    scripted = ScriptedLLM(booker)
    agent = _Shop()
    async with AgentSession(llm=scripted) as session:
        await session.start(agent)
        result: RunResult[None] = await session.run(user_input="book me in")
        result.expect.skip_next_event_if(type="message", role="assistant")
        result.expect.next_event().is_function_call(name="book", arguments={"slot": "monday 10am"})
        result.expect.next_event().is_function_call_output(output="booked monday 10am")
        result.expect.next_event().is_message(role="assistant")
    await scripted.aclose()
    assert agent.booked == ["monday 10am"]
    assert booker.seen == [ToolResult("book", {"slot": "monday 10am"}, "booked monday 10am")]
    assert booker.closed  # the LLM owns its responder


async def test_tool_calls_survive_the_chain_adapter(tmp_path: Path) -> None:
    """The floor's tool calls reach LiveKit through the chain's fallback adapter too."""
    store = SqliteHealthStore(tmp_path / "health.db")
    chains = build_chains([], store, probes=False, responder=_Booker())
    agent = _Shop()
    async with AgentSession(llm=chains.llm) as session:
        await session.start(agent)
        await session.run(user_input="book me in")
    await chains.aclose()
    await store.aclose()
    assert agent.booked == ["monday 10am"]


async def test_the_chain_floor_speaks_the_injected_responder_or_the_faq_file(
    tmp_path: Path,
) -> None:
    store = SqliteHealthStore(tmp_path / "health.db")
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="what are your hours")

    booker = _Booker()
    chains = build_chains([], store, probes=False, responder=booker)
    assert chains.order["llm"] == ["llm:free-llm"]
    assert (await chains.llm.chat(chat_ctx=ctx).collect()).text == "I cannot book here."
    await chains.aclose()
    assert booker.closed

    faq = tmp_path / "faq.toml"
    faq.write_text('[faq]\n"hours" = "{company} opens at nine."\n', encoding="utf-8")
    spec = ProviderSpec("llm", "free-llm", extra={"company": "Acme", "faq_file": str(faq)})
    chains = build_chains([spec], store, probes=False)
    assert (await chains.llm.chat(chat_ctx=ctx).collect()).text.startswith("Acme opens at nine.")
    await chains.aclose()

    broken = ProviderSpec("llm", "free-llm", extra={"faq_file": str(tmp_path / "missing.toml")})
    chains = build_chains([broken], store, probes=False)  # a bad FAQ never costs the floor
    assert chains.order["llm"] == ["llm:free-llm"]
    assert (await chains.llm.chat(chat_ctx=ctx).collect()).text
    await chains.aclose()
    await store.aclose()


def test_faq_book_names_the_bad_entry() -> None:
    import pytest

    with pytest.raises(ValueError, match="placeholder"):
        FaqBook({"hours": "Ask {boss}."}, fields={"company": "Acme"})
    with pytest.raises(ValueError, match="cannot be read"):
        FaqBook.from_file("/nonexistent/faq.toml")
