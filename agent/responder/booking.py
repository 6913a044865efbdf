"""Booking a meeting by voice: hearing the request, and which offered time the caller chose.

The free times themselves come from the CRM tools (:mod:`agent.crm.tools`), exactly as a cloud
LLM gets them; this module only reads a caller's words. Callers answer an offer of times in
many ways ("the first one", "tuesday", "nine thirty", "the afternoon one", "yes that works"
when only one was offered), so a choice is scored against every offered slot and taken only
when exactly one fits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from plugins.local.faq import has_phrase

MEETING_PHRASES: tuple[tuple[str, ...], ...] = (
    ("book",),
    ("booking",),
    ("schedule",),
    ("appointment",),
    ("meeting",),
    ("consultation",),
    ("set", "up", "a", "call"),
    ("set", "up", "a", "time"),
    ("talk", "to", "someone"),
    ("speak", "to", "someone"),
    ("speak", "with", "someone"),
    ("talk", "to", "a"),
    ("speak", "to", "a"),
    ("speak", "with", "a"),
    ("a", "demo"),
    ("meet",),
)

_ORDINALS = {"first": 0, "1st": 0, "earliest": 0, "second": 1, "2nd": 1, "third": 2, "3rd": 2}
_LAST = frozenset({"last", "latest", "final"})
_HOURS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "noon": 12,
}
_MINUTES = {"fifteen": 15, "thirty": 30, "half": 30, "forty": 45, "o'clock": 0, "oclock": 0}
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MORNING = frozenset({"morning", "am", "a.m"})
_AFTERNOON = frozenset({"afternoon", "evening", "pm", "p.m", "noon"})
_AT = frozenset({"at", "around", "about", "by"})
_HALVES = frozenset({"am", "pm"})
_SPOKEN = re.compile(r"^([A-Za-z]+), [A-Za-z]+ \d+ at (\d{1,2}):(\d{2}) ([AP]M)$")


@dataclass(frozen=True)
class Slot:
    spoken: str  # "Monday, December 7 at 9:00 AM": what the agent says
    start_time: str  # ISO 8601, exactly as the calendar tool listed it

    @property
    def parts(self) -> tuple[str, int, int, str]:
        """(weekday, hour 1-12, minute, "am"/"pm")."""
        m = _SPOKEN.match(self.spoken)
        if m is None:
            return ("", 0, 0, "")
        return (m.group(1).lower(), int(m.group(2)), int(m.group(3)), m.group(4).lower())


def wants_meeting(words: Sequence[str]) -> bool:
    return has_phrase(words, MEETING_PHRASES)


def offer(slots: Sequence[Slot]) -> str:
    """ "I have X, Y, or Z. Which works best for you?" for up to three slots."""
    times = [s.spoken for s in slots[:3]]
    if len(times) == 1:
        return f"I have {times[0]}. Does that work for you?"
    listed = f"{', '.join(times[:-1])}, or {times[-1]}"
    return f"I have {listed}. Which works best for you?"


def pick_slot(words: Sequence[str], slots: Sequence[Slot], *, agreed: bool) -> Slot | None:
    """The one offered slot the caller's words choose, if exactly one fits.

    ``agreed`` (the caller said yes) picks the slot when only one was offered.
    """
    offered = list(slots[:3])
    if not offered:
        return None
    for word in words:
        if word in _ORDINALS and _ORDINALS[word] < len(offered):
            return offered[_ORDINALS[word]]
        if word in _LAST:
            return offered[-1]
    heard = _heard_time(words)
    if heard == (None, None, None, None):
        return offered[0] if agreed and len(offered) == 1 else None
    fits = [slot for slot in offered if _fits(heard, slot)]
    return fits[0] if len(fits) == 1 else None


_Heard = tuple[str | None, int | None, int | None, str | None]


def _heard_time(words: Sequence[str]) -> _Heard:
    day = next((w for w in words if w in _WEEKDAYS), None)
    hour: int | None = None
    minute: int | None = None
    for i, word in enumerate(words):
        value = _hour(word)
        if value is None:
            continue
        nxt = words[i + 1] if i + 1 < len(words) else ""
        prev = words[i - 1] if i else ""
        if word == "one" and prev not in _AT and nxt not in _MINUTES and nxt not in _HALVES:
            continue  # "the afternoon one", "that one": a pointer, not one o'clock
        hour, minute = value
        if minute is None and nxt in _MINUTES:
            minute = _MINUTES[nxt]
        break
    half: str | None = None
    if any(w in _MORNING for w in words):
        half = "am"
    elif any(w in _AFTERNOON for w in words):
        half = "pm"
    return day, hour, minute, half


def _hour(word: str) -> tuple[int, int | None] | None:
    if word in _HOURS:
        return _HOURS[word], None
    m = re.fullmatch(r"(\d{1,2})(?::(\d{2}))?(?:am|pm)?", word)
    if m and 1 <= int(m.group(1)) <= 12:
        return int(m.group(1)), int(m.group(2)) if m.group(2) else None
    return None


def _fits(heard: _Heard, slot: Slot) -> bool:
    day, hour, minute, half = heard
    s_day, s_hour, s_minute, s_half = slot.parts
    return (
        (day is None or day == s_day)
        and (hour is None or hour == s_hour)
        and (minute is None or minute == s_minute)
        and (half is None or half == s_half)
    )
