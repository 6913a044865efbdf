"""The library's own floor responder: greets, answers its FAQ, and never repeats an apology.

It is what ``free-llm`` says when the application injects no responder of its own. It keeps
no state (every turn re-reads the history), so it picks a call up mid-way after a cloud LLM
failed over to it. A question it cannot answer gets an honest "I can't help with that right
now"; a second one in a row gets a different line that names what it *can* answer, so a
caller is never stuck hearing the same sentence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from plugins.local.faq import FaqBook, has_phrase, words
from plugins.local.responder import Message, Reply, Turn

_BYE = (("bye",), ("goodbye",), ("that's", "all"), ("thats", "all"), ("hang", "up"))
_MAX_ANSWERS = 2


class FaqResponder:
    """A :class:`plugins.local.responder.Responder` over a :class:`FaqBook`."""

    def __init__(
        self, faq: FaqBook | Mapping[str, str] | None = None, *, business: str = ""
    ) -> None:
        fields = {"company": business.strip() or "us"}
        self.book = faq if isinstance(faq, FaqBook) else FaqBook(faq or {}, fields=fields)
        self.business = business.strip()

    @property
    def greeting(self) -> str:
        where = f" {self.business}" if self.business else ""
        return f"Hello, thanks for calling{where}. How can I help you today?"

    @property
    def cannot_help(self) -> str:
        return "I'm sorry, I can't help with that right now."

    def reply(self, messages: Sequence[Message]) -> str:
        """The next line for a (role, text) history. Deterministic; never empty."""
        users = [text for role, text in messages if role == "user"]
        if not users:
            return self.greeting
        last_assistant = next((t for r, t in reversed(messages) if r == "assistant"), "")
        if messages[-1][0] != "user":
            return "Is there anything else I can help with?"
        heard = words(users[-1])
        answers = [entry.answer for entry in self.book.matches(heard)][:_MAX_ANSWERS]
        if answers:
            return " ".join([*answers, "Is there anything else I can help with?"])
        if has_phrase(heard, _BYE):
            return "Thanks for calling. Goodbye."
        if last_assistant.startswith(self.cannot_help):
            return self._moving_on()
        topics = self._topics()
        offer = f" I can tell you about {topics}." if topics else ""
        return f"{self.cannot_help}{offer} Our team will be glad to help if you call back later."

    def _moving_on(self) -> str:
        topics = self._topics()
        if topics:
            return f"Let's try another way: would you like to hear about {topics}?"
        return "Thanks for your patience. Please call back a little later and our team will help."

    def _topics(self) -> str:
        names = [entry.topic for entry in self.book.entries[:3]]
        if len(names) <= 1:
            return "".join(names)
        return f"{', '.join(names[:-1])} or {names[-1]}"

    async def respond(self, turn: Turn) -> Reply:
        return Reply(text=self.reply(turn.messages))

    async def aclose(self) -> None:
        return None
