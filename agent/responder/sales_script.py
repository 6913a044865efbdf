"""A deterministic sales conversation that carries a call when every cloud LLM is down.

It keeps no state: every turn it re-reads the whole history (what LiveKit hands an LLM each
turn, and what our provider simulators receive), so it picks up a call mid-way after a cloud
LLM fails over to it, and two identical histories always get the same reply. The script greets,
answers a small FAQ, collects the caller's name, phone, email and preferred call-back time one
at a time (taking several at once, and corrections), reads them back, and on "yes" promises a
call back. Replies are short plain sentences, written to be spoken.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import phonenumbers

from agent.crm.tools import BOOK_APPOINTMENT, BOOKED, LIST_FREE_SLOTS, slots_in
from agent.responder.booking import Slot, offer, pick_slot, wants_meeting
from agent.responder.lead import Lead
from agent.responder.lead_extraction import (
    DEFAULT_REGION,
    LEAD_FIELDS,
    Extraction,
    LeadField,
    extract_all,
    guess_email_without_at,
    tokenize,
)
from agent.sales_agent import COMPANY
from plugins.local.faq import FaqBook, FaqEntry, find_phrase, has_phrase, load_faq
from plugins.local.responder import Message, Reply, ToolResult

HistoryItem = Message | ToolResult
"""A (role, text) message, or a CRM tool's answer (what LiveKit puts in the chat context)."""

DEFAULT_COMPANY = COMPANY  # the sales agent's own, so a failover keeps the name
DEFAULT_AGENT_NAME = "Alex"
DEFAULT_FAQ_FILE = Path(__file__).with_name("faq.toml")

_ROLES = frozenset({"system", "developer", "user", "assistant"})

_QUESTIONS: dict[LeadField, str] = {
    "name": "May I have your name, please?",
    "phone": "What's the best phone number to reach you?",
    "email": "And what's your email address?",
    "preferred_time": "When's a good time for us to call you back?",
}
_REASKS: dict[LeadField, str] = {
    "name": "Sorry, I didn't catch that. Could you tell me your name once more?",
    "phone": "Sorry, I didn't catch that. Could you say your phone number digit by digit, "
    "with the area code?",
    "email": "Sorry, I didn't get that. Could you say your email like john at example dot com?",
    "preferred_time": "Sorry, when's a good time to call you? For example, tomorrow morning.",
}
_FIELD_WORDS: dict[LeadField, frozenset[str]] = {
    "name": frozenset({"name", "spelling", "spelled"}),
    "phone": frozenset({"phone", "number", "cell", "mobile"}),
    "email": frozenset({"email", "e-mail", "mail", "address"}),
    "preferred_time": frozenset({"time", "day", "when", "callback"}),
}
_READBACK_MARKERS = (
    "did i get that right",
    "is that correct",
    "is that right",
    "is that all correct",
)
_ANYTHING_ELSE_MARKERS = ("anything else",)
_EMAIL_CHECK = "Just to check, is your email"
_OFFER_MARKERS = ("which works best for you", "does that work for you")
_SLOT_REASK = "Sorry, which of those times works for you? You can say the first, second or third."
_CHECKING_CALENDAR = "Sure, let me check the calendar."
_WHICH_TO_FIX_MARKER = "what should i fix"
_FIELD_LABELS: dict[LeadField, str] = {
    "name": "name",
    "phone": "phone number",
    "email": "email",
    "preferred_time": "time to call",
}
_CUE_WORDS: dict[LeadField, frozenset[str]] = {
    "name": frozenset({"name"}),
    "phone": frozenset({"phone", "number"}),
    "email": frozenset({"email"}),
    "preferred_time": frozenset({"time", "when", "when's"}),
}
_QUESTION_STARTS = frozenset(
    {"what", "what's", "whats", "how", "do", "does", "can", "could", "is", "are", "why"}
    | {"where", "who", "will", "which", "would", "should"}
)
_VAGUE_TIMES = frozenset({"whenever", "anytime", "any time", "asap"})

_YES = frozenset(
    {"yes", "yeah", "yep", "yup", "yea", "correct", "right", "sure", "exactly", "perfect"}
    | {"absolutely", "definitely", "affirmative", "ok", "okay", "alright", "great", "good"}
    | {"fine", "certainly", "indeed", "confirmed", "confirm", "mhm", "mmhmm", "yes's"}
)
_YES_PHRASES = (("uh", "huh"), ("you", "got", "it"), ("sounds", "good"), ("that", "works"))
_NO = frozenset(
    {"no", "nope", "nah", "wrong", "incorrect", "not", "don't", "dont", "isn't", "wait"}
    | {"actually", "change", "fix", "mistake", "rather", "skip", "none", "without"}
)
_DECLINE = frozenset(
    {"no", "nope", "nah", "rather", "skip", "don't", "dont", "none", "without", "not", "won't"}
)
_BYE = (
    ("bye",),
    ("goodbye",),
    ("that's", "all"),
    ("thats", "all"),
    ("that's", "it"),
    ("nothing", "else"),
    ("no", "thanks"),
    ("no", "thank", "you"),
    ("have", "a", "good"),
    ("have", "a", "great"),
    ("hang", "up"),
)
_NOT_INTERESTED = (
    ("not", "interested"),
    ("stop", "calling"),
    ("remove", "me"),
    ("do", "not", "call"),
    ("don't", "call"),
    ("take", "me", "off"),
)
_HELLO = frozenset({"hi", "hello", "hey", "morning", "afternoon", "evening", "there", "good"})


@cache
def _default_faq() -> tuple[tuple[str, str], ...]:
    return tuple(load_faq(DEFAULT_FAQ_FILE).items())


@dataclass
class _Conversation:
    """What the history says so far, rebuilt from scratch every turn."""

    values: dict[LeadField, str] = field(default_factory=dict)
    declined: set[LeadField] = field(default_factory=set)
    confirmed_values: dict[LeadField, str] | None = None
    topics: list[str] = field(default_factory=list)
    user_turns: int = 0
    last_user: str = ""
    last_extraction: Extraction = field(default_factory=Extraction)
    last_assistant: str = ""  # the assistant turn right before the last user turn
    assistant_spoke: bool = False
    asked_any: bool = False  # some assistant turn already asked for a detail
    pressed_to_stay: bool = False  # some assistant turn already said "before you go"
    ends_with_assistant: bool = False
    # email heard without its "at": kept, and checked with the caller before going on
    tentative_email: bool = False
    guessed_now: bool = False
    email_checked_now: bool = False
    refused_guesses: int = 0
    skipped_now: LeadField | None = None  # a detail given up on after a second failed ask
    accepted_unclear: bool = False  # a read-back answered unclearly twice: kept as it stands
    small_talk: bool = False  # "how are you"
    # booking through the CRM tools
    can_book: bool = False
    wants_meeting: bool = False
    meeting_now: bool = False
    slots: list[Slot] = field(default_factory=list)
    slots_checked: bool = False
    calendar_down: bool = False
    chosen: Slot | None = None
    chose_now: bool = False
    slot_misses: int = 0
    booked: str | None = None
    pending_tool: ToolResult | None = None

    @property
    def missing(self) -> list[LeadField]:
        return [f for f in LEAD_FIELDS if f not in self.values and f not in self.declined]

    @property
    def contactable(self) -> bool:
        return "phone" in self.values or "email" in self.values

    @property
    def confirmed(self) -> bool:
        return self.confirmed_values is not None and self.confirmed_values == self.values


class SalesScript:
    """The scripted sales responder: ``reply(history)`` -> the next thing the agent says."""

    def __init__(
        self,
        faq: Mapping[str, str] | None = None,
        company: str = DEFAULT_COMPANY,
        agent_name: str = DEFAULT_AGENT_NAME,
        region: str = DEFAULT_REGION,
    ) -> None:
        if not company.strip():
            raise ValueError("company must be a non-empty name the agent can say")
        if not agent_name.strip():
            raise ValueError("agent_name must be a non-empty name the agent can say")
        if region.strip().upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"unknown phone region {region!r}: use a two-letter ISO 3166 country code "
                "such as 'US' or 'GB'"
            )
        self.company = company.strip()
        self.agent_name = agent_name.strip()
        self.region = region.strip().upper()
        source = dict(_default_faq()) if faq is None else dict(faq)
        self._faq = FaqBook(source, fields={"company": self.company, "agent_name": self.agent_name})

    # --- public API -----------------------------------------------------------------------

    def reply(self, messages: Sequence[HistoryItem]) -> str:
        """The agent's next line for this history. Deterministic; never empty."""
        return self.respond(messages).text

    def respond(self, history: Sequence[HistoryItem], tools: Collection[str] = ()) -> Reply:
        """The next line, and the CRM tool call to make when ``tools`` offers the calendar."""
        conv = self._read(history)
        conv.can_book = {LIST_FREE_SLOTS, BOOK_APPOINTMENT} <= set(tools)
        booking = self._booking_reply(conv)
        if booking is not None:
            return booking
        return Reply(
            text=self._never_sorry_twice(conv, " ".join(p for p in self._compose(conv) if p))
        )

    def lead(self, messages: Sequence[HistoryItem]) -> Lead:
        """The lead as the history stands (latest correction wins)."""
        conv = self._read(messages)
        return Lead(
            name=conv.values.get("name"),
            phone=conv.values.get("phone"),
            email=conv.values.get("email"),
            preferred_time=conv.values.get("preferred_time"),
            notes=[f"asked about {topic}" for topic in conv.topics],
        )

    def confirmed(self, messages: Sequence[HistoryItem]) -> bool:
        """Whether the caller said yes to a read-back of exactly the details now on file."""
        conv = self._read(messages)
        return conv.confirmed and conv.contactable

    # --- reading the history --------------------------------------------------------------

    def _read(self, messages: Sequence[HistoryItem]) -> _Conversation:
        conv = _Conversation()
        previous_assistant = ""
        for index, message in enumerate(messages):
            if isinstance(message, ToolResult):
                self._read_tool_result(conv, message)
                continue
            if not (isinstance(message, tuple | list) and len(message) == 2):
                raise TypeError(f"message {index} must be a (role, text) tuple, got {message!r}")
            role, text = message
            if role not in _ROLES:
                raise ValueError(
                    f"message {index} has role {role!r}: use 'system', 'user' or 'assistant'"
                )
            if role in ("system", "developer"):
                continue
            if role == "assistant":
                previous_assistant = text
                conv.pending_tool = None
                conv.assistant_spoke = True
                conv.asked_any = conv.asked_any or _asked_field(text) is not None
                conv.pressed_to_stay = conv.pressed_to_stay or text.startswith("Before you go")
                conv.ends_with_assistant = True
                continue
            conv.ends_with_assistant = False
            conv.pending_tool = None
            self._read_user_turn(conv, text, previous_assistant)
        return conv

    def _read_tool_result(self, conv: _Conversation, result: ToolResult) -> None:
        conv.ends_with_assistant = False
        conv.pending_tool = result
        listed = [Slot(spoken, start) for spoken, start in slots_in(result.output)]
        if result.name == LIST_FREE_SLOTS:
            conv.slots_checked = True
            conv.slots = listed
            conv.calendar_down = not listed
        elif result.name == BOOK_APPOINTMENT:
            if result.output.startswith(BOOKED) or "put in the request" in result.output:
                conv.booked = conv.chosen.spoken if conv.chosen else result.output
            elif listed:
                conv.slots, conv.chosen = listed, None
                conv.values.pop("preferred_time", None)
            elif "just taken" not in result.output:
                conv.calendar_down = True

    def _read_user_turn(self, conv: _Conversation, text: str, asked_by: str) -> None:
        readback = _is_readback(asked_by)
        asked = None if readback else _asked_field(asked_by)
        words = [t.low for t in tokenize(text)]
        correcting = readback and bool(_NO.intersection(words))
        expecting: set[LeadField] = set()
        if asked is not None:
            expecting.add(asked)
        if correcting:
            expecting.update({"name", "preferred_time"})
        extraction = extract_all(text, expecting=expecting, region=self.region)
        for name in extraction.found():
            value = getattr(extraction, name)
            conv.values[name] = value
            conv.declined.discard(name)
        conv.guessed_now = conv.email_checked_now = False
        conv.skipped_now = None
        conv.chose_now = conv.meeting_now = False
        conv.small_talk = find_phrase(words, ("how", "are", "you")) is not None
        checking_email = _EMAIL_CHECK.lower() in _last_question(asked_by)
        if checking_email and extraction.email is None:
            if _is_yes(words):
                conv.tentative_email = False
                conv.email_checked_now = True
            elif _NO.intersection(words):
                conv.values.pop("email", None)
                conv.tentative_email = False
                conv.refused_guesses += 1
                if conv.refused_guesses >= 2:  # heard wrong twice: move on, don't loop
                    conv.declined.add("email")
                    conv.skipped_now = "email"
        elif extraction.email is not None:
            conv.tentative_email = False
        email_meant = asked == "email" or "email" in words
        if email_meant and extraction.email is None and conv.refused_guesses < 2:
            guess = guess_email_without_at(text)
            if guess is not None:
                conv.values["email"] = guess
                conv.declined.discard("email")
                conv.tentative_email = conv.guessed_now = True
        if wants_meeting(words):
            conv.wants_meeting = conv.meeting_now = True
        if conv.slots and _offered_slots(asked_by):
            chosen = pick_slot(words, conv.slots, agreed=_is_yes(words))
            if chosen is not None:
                conv.chosen, conv.chose_now = chosen, True
                conv.values["preferred_time"] = chosen.spoken
                conv.declined.discard("preferred_time")
            elif not extraction.found():
                conv.slot_misses += 1
                if conv.slot_misses >= 2:
                    conv.calendar_down = True  # stop offering; a specialist calls back
        if (
            _DECLINE.intersection(words)
            and not _YES.intersection(words)
            and not readback
            and not checking_email
        ):
            named = _named_field(words)
            declined = named or asked
            if declined is not None and not extraction.found():
                conv.declined.add(declined)
        if readback and not extraction.found() and _is_yes(words):
            conv.confirmed_values = dict(conv.values)
        elif (
            readback
            and not extraction.found()
            and not _NO.intersection(words)
            and asked_by.startswith("Sorry, was that a yes?")
        ):
            conv.confirmed_values = dict(conv.values)  # unclear twice: keep the details
            conv.accepted_unclear = True
        gave_nothing = not extraction.found() and not conv.guessed_now and not conv.chose_now
        if (
            asked is not None
            and asked not in conv.values
            and asked not in conv.declined
            and gave_nothing
            and asked_by.startswith("Sorry")
            and not set(words) <= _HELLO
        ):
            conv.declined.add(asked)  # asked twice: move on rather than loop
            conv.skipped_now = asked
        for entry in self._faq_matches(words):
            if entry.topic not in conv.topics:
                conv.topics.append(entry.topic)
        conv.user_turns += 1
        conv.last_user = text
        conv.last_extraction = extraction
        conv.last_assistant = asked_by

    # --- composing the reply --------------------------------------------------------------

    def _compose(self, conv: _Conversation) -> list[str]:
        if conv.user_turns == 0:
            return [self._greeting(), "How can I help you today?"]
        if conv.ends_with_assistant:
            return [self._next_step(conv)]
        words = [t.low for t in tokenize(conv.last_user)]
        found = conv.last_extraction.found()
        faq_answers = [e.answer for e in self._faq_matches(words)][:2]
        before = conv.last_assistant.lower()

        if has_phrase(words, _NOT_INTERESTED):
            return ["No problem at all. Thanks for your time, and have a great day. Goodbye."]
        if not found and not faq_answers and self._wants_to_leave(conv, words):
            return self._farewell_or_last_ask(conv)

        parts: list[str] = []
        if not conv.assistant_spoke:
            parts.append(self._greeting())
        if conv.small_talk:
            parts.append("I'm doing well, thanks for asking.")
        if conv.chose_now and conv.chosen is not None:
            parts.append(f"Great, {conv.chosen.spoken} it is.")
            found = tuple(f for f in found if f != "preferred_time")
        if found:
            parts.append(self._acknowledge(conv, found))
        elif conv.email_checked_now:
            parts.append("Great, thanks.")
        if conv.skipped_now is not None:
            parts.append("No problem, our specialist can sort that out with you.")
        parts.extend(faq_answers)
        if (
            found
            or faq_answers
            or conv.guessed_now
            or conv.email_checked_now
            or conv.chose_now
            or conv.skipped_now
        ):
            parts.append(self._next_step(conv))
            return parts
        if conv.meeting_now:
            parts.append(self._next_step(conv))
            return parts
        if conv.small_talk or (
            conv.assistant_spoke
            and not conv.values
            and not conv.asked_any
            and _greeting_only(words)
        ):
            parts.append(
                f"I can tell you what {self.company} does and what it costs, or set up a meeting "
                "with one of our specialists. What would you like to do?"
            )
            return parts

        # nothing new: answer what the caller's reply to our last line means
        if _is_readback(before):
            if conv.accepted_unclear and conv.confirmed:
                kept = "No problem, I'll keep these details and our specialist will check them."
                return [
                    *parts,
                    kept,
                    self._promise(conv),
                    "Is there anything else I can help with?",
                ]
            if _is_yes(words) and conv.confirmed:
                return [*parts, self._promise(conv), "Is there anything else I can help with?"]
            if _NO.intersection(words):
                return [*parts, self._which_to_fix(words)]
            return [*parts, "Sorry, was that a yes?", self._readback(conv)]
        if _WHICH_TO_FIX_MARKER in before and (named := _named_field(words)) is not None:
            return [*parts, f"Sure. What's the correct {_FIELD_LABELS[named]}?"]
        if any(m in before for m in _ANYTHING_ELSE_MARKERS) and _is_yes(words):
            return [*parts, "Sure, what would you like to know?"]
        if words and words[0] in _QUESTION_STARTS and not (_named_field(words) and conv.missing):
            parts.append(
                "That's a good question for our specialist, who can go through it with you."
            )
            parts.append(self._next_step(conv))
            return parts
        asked = _asked_field(before)
        greeting_only = not conv.assistant_spoke and bool(words) and set(words) <= _HELLO
        if asked is not None and asked in conv.missing and not greeting_only:
            return [*parts, _REASKS[asked]]
        parts.append(self._next_step(conv))
        return parts

    def _booking_reply(self, conv: _Conversation) -> Reply | None:
        """The turn's reply when a meeting is being booked through the CRM tools, else None."""
        if not conv.can_book:
            return None
        tool = conv.pending_tool
        if tool is not None and tool.name == LIST_FREE_SLOTS:
            if conv.slots:
                return Reply(text=offer(conv.slots))
            return Reply(
                text="I can't get to the calendar right now, so one of our specialists will "
                "call you to set up the meeting. " + self._next_step(conv)
            )
        if tool is not None and tool.name == BOOK_APPOINTMENT:
            return self._after_booking(conv, tool)
        if conv.booked is not None or conv.calendar_down or conv.user_turns == 0:
            return None
        if conv.ends_with_assistant or has_phrase(_words(conv.last_user), _NOT_INTERESTED):
            return None
        chosen = conv.chosen
        if chosen is not None and conv.confirmed and conv.contactable:
            name = conv.values.get("name")
            thanks = f"Perfect, thank you {_first_name(name)}." if name else "Perfect, thank you."
            return Reply.calling(
                BOOK_APPOINTMENT,
                {"start_time": chosen.start_time},
                text=f"{thanks} Let me book {chosen.spoken} for you.",
            )
        if conv.meeting_now and chosen is None and not conv.slots_checked:
            return Reply.calling(LIST_FREE_SLOTS, {}, text=_CHECKING_CALENDAR)
        if (
            conv.slots
            and chosen is None
            and conv.slot_misses == 1
            and _offered_slots(conv.last_assistant)
        ):
            return Reply(text=_SLOT_REASK)
        return None

    def _after_booking(self, conv: _Conversation, tool: ToolResult) -> Reply:
        anything = "Is there anything else I can help with?"
        if conv.booked is not None and tool.output.startswith(BOOKED):
            return Reply(text=f"You're all set for {conv.booked}. {anything}")
        if conv.booked is not None:
            return Reply(
                text=f"I've put in the request for {conv.booked}, and a confirmation will "
                f"follow shortly. {anything}"
            )
        if conv.slots and conv.chosen is None:
            return Reply(text=f"Sorry, that time has just gone. {offer(conv.slots)}")
        if "just taken" in tool.output:
            return Reply.calling(
                LIST_FREE_SLOTS,
                {},
                text="That time was just taken. Let me check what else is free.",
            )
        when = f" to confirm {conv.chosen.spoken}" if conv.chosen else ""
        return Reply(
            text=f"I couldn't book it just now, so one of our specialists will call you{when}. "
            + anything
        )

    def _never_sorry_twice(self, conv: _Conversation, text: str) -> str:
        """The last line was an apology: do not open with another one, move the call on."""
        if not (text.startswith("Sorry") and conv.last_assistant.startswith("Sorry")):
            return text
        return "Let's keep going. " + self._next_step(conv)

    def _greeting(self) -> str:
        return f"Hi, thanks for calling {self.company}. This is {self.agent_name}."

    def _next_step(self, conv: _Conversation) -> str:
        if conv.tentative_email and "email" in conv.values:
            return f"{_EMAIL_CHECK} {_speak_email(conv.values['email'])}?"
        if conv.confirmed and conv.contactable:
            return "Is there anything else I can help with?"
        missing = conv.missing
        if missing:
            question = _QUESTIONS[missing[0]]
            if conv.chose_now:
                return f"To book it, {question[0].lower()}{question[1:]}"
            if conv.meeting_now and (conv.values or conv.asked_any):
                return f"Sure, I can set up a meeting with one of our specialists. {question}"
            if not conv.values and not conv.declined and not conv.asked_any:
                if conv.wants_meeting:
                    return (
                        f"I'd be happy to set up a meeting with one of our specialists. {question}"
                    )
                return f"I'd be happy to set up a call back with one of our specialists. {question}"
            if missing[0] == "email" and "phone" in conv.declined:
                return "No problem. Then what's your email address?"
            return question
        if not conv.contactable:
            return (
                "Without a phone number or an email we can't call you back, but you're welcome "
                "to call us any time. Is there anything else I can help with?"
            )
        return self._readback(conv)

    def _readback(self, conv: _Conversation, opening: str = "Let me read that back") -> str:
        items: list[str] = []
        if "name" in conv.values:
            items.append(f"your name is {conv.values['name']}")
        if "phone" in conv.values:
            items.append(f"your number is {_speak_phone(conv.values['phone'], self.region)}")
        if "email" in conv.values:
            items.append(f"your email is {_speak_email(conv.values['email'])}")
        if conv.chosen is not None and conv.values.get("preferred_time") == conv.chosen.spoken:
            items.append(f"the meeting is {conv.chosen.spoken}")
        elif "preferred_time" in conv.values:
            items.append(f"the best time to call is {conv.values['preferred_time']}")
        listed = items[0] if len(items) == 1 else f"{', '.join(items[:-1])}, and {items[-1]}"
        return f"{opening}: {listed}. Did I get that right?"

    def _acknowledge(self, conv: _Conversation, found: tuple[LeadField, ...]) -> str:
        if _is_readback(conv.last_assistant) or conv.confirmed_values is not None:
            return "Thanks for the correction."
        if "name" in found:
            return f"Thanks, {_first_name(conv.values['name'])}."
        return "Got it, thanks."

    def _promise(self, conv: _Conversation) -> str:
        name = conv.values.get("name")
        thanks = f"Perfect, thank you {_first_name(name)}." if name else "Perfect, thank you."
        when = conv.values.get("preferred_time", "as soon as possible")
        if when in _VAGUE_TIMES:
            when = "as soon as possible"
        if conv.wants_meeting:
            return f"{thanks} One of our specialists will call you {when} to set up the meeting."
        return f"{thanks} One of our specialists will call you back {when}."

    def _which_to_fix(self, words: Sequence[str]) -> str:
        named = _named_field(words)
        if named is not None:
            return f"Sorry about that. What's the correct {_FIELD_LABELS[named]}?"
        return (
            "Sorry about that. What should I fix: the name, the phone number, "
            "the email, or the time?"
        )

    def _wants_to_leave(self, conv: _Conversation, words: Sequence[str]) -> bool:
        if has_phrase(words, _BYE):
            return True
        after_anything_else = any(m in conv.last_assistant.lower() for m in _ANYTHING_ELSE_MARKERS)
        return (
            after_anything_else and bool(_NO.intersection(words)) and not _YES.intersection(words)
        )

    def _farewell_or_last_ask(self, conv: _Conversation) -> list[str]:
        name = conv.values.get("name")
        farewell = (
            f"Thanks for calling {self.company}"
            + (f", {_first_name(name)}" if name else "")
            + ". Have a great day. Goodbye."
        )
        if conv.confirmed or conv.pressed_to_stay or not conv.missing:
            return [farewell]
        if conv.contactable:
            return [self._readback(conv, opening="Before you go, let me read back")]
        return [
            "Before you go, could I get a phone number so one of our specialists can follow up?"
        ]

    def _faq_matches(self, words: Sequence[str]) -> list[FaqEntry]:
        return self._faq.matches(words)


# --- helpers --------------------------------------------------------------------------------


def _is_yes(words: Sequence[str]) -> bool:
    said_yes = bool(_YES.intersection(words)) or has_phrase(words, _YES_PHRASES)
    return said_yes and not _NO.intersection(words)


def _greeting_only(words: Sequence[str]) -> bool:
    return bool(words) and set(words) <= _HELLO | {"how", "are", "you", "doing", "today", "yes"}


def _words(text: str) -> list[str]:
    return [t.low for t in tokenize(text)]


def _offered_slots(text: str) -> bool:
    question = _last_question(text)
    return any(marker in question for marker in _OFFER_MARKERS)


def _last_question(text: str) -> str:
    sentences = [s for s in re.split(r"(?<=[.?!])\s+", text.strip()) if s.endswith("?")]
    return sentences[-1].lower() if sentences else ""


def _is_readback(text: str) -> bool:
    question = _last_question(text)
    return any(marker in question for marker in _READBACK_MARKERS)


def _asked_field(text: str) -> LeadField | None:
    """Which single detail the agent's last question asked for, judged by its words.

    Works on other LLMs' phrasing too ("and what number can we reach you on?"), since a cloud
    LLM may have asked the question this script now hears answered.
    """
    question = _last_question(text)
    if not question or "else" in question or _WHICH_TO_FIX_MARKER in question:
        return None
    words = [t.low for t in tokenize(question)]
    hits = {name for name, cues in _CUE_WORDS.items() if cues.intersection(words)}
    return hits.pop() if len(hits) == 1 else None


def _named_field(words: Sequence[str]) -> LeadField | None:
    """The one detail a caller's words name ("the email is wrong"), if exactly one."""
    hits = {name for name, cues in _FIELD_WORDS.items() if cues.intersection(words)}
    return hits.pop() if len(hits) == 1 else None


def _first_name(name: str | None) -> str:
    return name.split()[0] if name else ""


def _speak_phone(e164: str, region: str) -> str:
    """Say "+15551234567" as "five five five, one two three, ...", grouped as written.

    Words, not digits, so every TTS in the chain reads them one by one the same way.
    """
    parsed = phonenumbers.parse(e164, region)
    own_country = parsed.country_code == phonenumbers.country_code_for_region(region)
    style = (
        phonenumbers.PhoneNumberFormat.NATIONAL
        if own_country
        else phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    written = phonenumbers.format_number(parsed, style)
    groups = re.findall(r"\+?\d+", written)
    spoken = [
        ("plus " if g.startswith("+") else "")
        + " ".join(_DIGIT_WORDS[int(d)] for d in g.lstrip("+"))
        for g in groups
    ]
    return ", ".join(spoken)


_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _speak_email(email: str) -> str:
    spoken = email.replace("@", " at ").replace(".", " dot ")
    return spoken.replace("_", " underscore ").replace("-", " dash ")


__all__ = ["DEFAULT_AGENT_NAME", "DEFAULT_COMPANY", "DEFAULT_FAQ_FILE", "SalesScript"]
