"""Argument checks for the CRM tools.

The LLM fills tool arguments from what a caller said, so bad values are normal, not
exceptional. Each check raises :class:`InvalidArgumentError` whose message is a short sentence the
LLM can relay to the caller ("that number seems to be missing a digit"), never a stack trace.

Text is made plain before it goes to GHL and before the agent repeats it (:func:`plain_text`):
control characters, bidi overrides and invisible format characters (which make "Ann" display as
something else, or hide text from the person reading the CRM), HTML/SSML tags and entities
(which GHL's UI or our TTS would interpret) and Markdown emphasis (which a voice would read out
as "asterisk") are removed. Names and tags then keep only the characters they can have.
"""

from __future__ import annotations

import html
import re
import unicodedata
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import EmailNotValidError, validate_email

MAX_BOOKING_DAYS = 31  # GHL's free-slots range
MAX_TAGS = 10
MAX_TAG_LEN = 50
MAX_NOTE_CHARS = 5000


class InvalidArgumentError(ValueError):
    """A tool argument the caller must correct; ``str(e)`` is safe to say aloud."""


_KEEP_FORMAT = {"\u200c", "\u200d"}  # zero-width (non-)joiners: part of Persian, Hindi, emoji
_LINE_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-_])")
_TAG = re.compile(r"<\s*/?\s*[A-Za-z!?][^<>]{0,1000}>")
_MD_LINK = re.compile(r"\[([^\]]{0,200})\]\([^)]{0,2000}\)")
_MD_EMPHASIS = re.compile(r"[*`]+|(?<!\w)_{1,3}|_{1,3}(?!\w)|~~")
_MD_HEADING = re.compile(r"^\s*(?:#{1,6}|>+)\s*", re.MULTILINE)


def plain_text(raw: str | None, *, multiline: bool = False) -> str:
    """``raw`` without control/bidi/invisible characters, markup or Markdown; whitespace
    collapsed (line breaks kept when ``multiline``)."""
    text = _ANSI.sub("", unicodedata.normalize("NFKC", raw or ""))
    text = html.unescape(html.unescape(text))  # "&amp;lt;b&amp;gt;" is markup too
    text = _MD_LINK.sub(r"\1", _TAG.sub(" ", text))
    kept: list[str] = []
    for ch in text:
        if ch in _LINE_BREAKS:
            kept.append("\n" if multiline else " ")
        elif ch == "\t":
            kept.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") and ch not in _KEEP_FORMAT:
            continue  # controls, bidi overrides/isolates, BOM, soft hyphen, private use
        else:
            kept.append(ch)
    text = _MD_EMPHASIS.sub("", _MD_HEADING.sub("", "".join(kept)))
    lines = [" ".join(line.split()) for line in text.split("\n")]
    if not multiline:
        return " ".join(line for line in lines if line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _only(text: str, allowed: str) -> str:
    """Keep letters, combining marks and the ``allowed`` punctuation."""
    out = "".join(
        ch if unicodedata.category(ch)[0] in "LM" or ch in allowed else " " for ch in text
    )
    return " ".join(out.split())


def plain_name(raw: str | None) -> str:
    """A person's name as it can be said and stored: letters, spaces, apostrophes, hyphens, periods."""
    return _only(plain_text(raw), " '\u2019-.")


def plain_tag(raw: str | None) -> str:
    return _only(plain_text(raw).lower(), " -_0123456789")


def normalize_phone(raw: str, *, default_region: str = "US") -> str:
    """Any spoken or typed form (``(415) 555-0100``, ``+44 20 7946 0958``) -> E.164."""
    text = (raw or "").strip()
    if not text:
        raise InvalidArgumentError("I didn't catch a phone number. Could you say it again?")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidArgumentError(
            "That doesn't sound like a phone number. Could you repeat it, with the area code?"
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidArgumentError(
            "That phone number seems incomplete or has a wrong digit. Could you repeat it, with "
            "the area code?"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(raw: str) -> str:
    """Syntax only (no DNS lookup: a call cannot wait for one)."""
    text = (raw or "").strip()
    if not text:
        raise InvalidArgumentError("I didn't catch an email address. Could you spell it for me?")
    try:
        return validate_email(text, check_deliverability=False).normalized
    except EmailNotValidError:
        raise InvalidArgumentError(
            "That email address doesn't look right. Could you spell it for me, letter by letter?"
        ) from None


def parse_timezone(name: str | None, *, default: str) -> ZoneInfo:
    candidate = (name or "").strip() or default
    try:
        return ZoneInfo(candidate)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgumentError(
            f"I don't know the time zone '{candidate}'. Which city are you in?"
        ) from None


def parse_start_time(
    raw: str,
    tz: ZoneInfo,
    *,
    now: datetime,
    max_days: int = MAX_BOOKING_DAYS,
) -> datetime:
    """An ISO-8601 start time in the future and within ``max_days``; a time without an offset
    is read in the caller's zone ``tz``."""
    text = (raw or "").strip()
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgumentError(
            "I couldn't read that time. Please pick one of the times I listed."
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    if value <= now:
        raise InvalidArgumentError(
            "That time has already passed. Could we pick a time in the future?"
        )
    if value > now + timedelta(days=max_days):
        raise InvalidArgumentError(
            f"I can only book up to {max_days} days ahead. Could we pick an earlier day?"
        )
    return value


def parse_day(raw: str | None, tz: ZoneInfo, *, now: datetime) -> datetime:
    """Start of a day (``YYYY-MM-DD``) in ``tz``, not in the past and within range; today's
    date (or nothing) means "from now"."""
    if not raw or not raw.strip():
        return now
    try:
        day = datetime.fromisoformat(raw.strip()[:10]).date()
    except ValueError:
        raise InvalidArgumentError("I couldn't read that date. Which day works for you?") from None
    today = now.astimezone(tz).date()
    if day < today:
        raise InvalidArgumentError("That day has already passed. Which upcoming day works for you?")
    if day > today + timedelta(days=MAX_BOOKING_DAYS):
        raise InvalidArgumentError(
            f"I can only look up to {MAX_BOOKING_DAYS} days ahead. Could we pick an earlier day?"
        )
    if day == today:
        return now
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def clean_tags(tags: list[str]) -> list[str]:
    out = list(dict.fromkeys(t for t in (plain_tag(t) for t in tags if t) if t))
    if not out:
        raise InvalidArgumentError("There was no tag to add.")
    if len(out) > MAX_TAGS or any(len(t) > MAX_TAG_LEN for t in out):
        raise InvalidArgumentError(
            f"Use at most {MAX_TAGS} short tags of up to {MAX_TAG_LEN} characters."
        )
    return out


def clean_text(text: str, *, what: str, limit: int = MAX_NOTE_CHARS) -> str:
    value = plain_text(text, multiline=True)
    if not value:
        raise InvalidArgumentError(f"The {what} was empty.")
    if len(value) > limit:
        raise InvalidArgumentError(f"The {what} is too long (over {limit} characters).")
    return value


def split_name(name: str | None) -> dict[str, str]:
    value = plain_name(name)
    if not value:
        return {}
    if len(value) > 100:
        raise InvalidArgumentError(
            "That name is too long. Could you give just a first and last name?"
        )
    first, _, last = value.partition(" ")
    fields = {"firstName": first, "name": value}
    if last:
        fields["lastName"] = last
    return fields
