"""Argument checks for the CRM tools.

The LLM fills tool arguments from what a caller said, so bad values are normal, not
exceptional. Each check raises :class:`InvalidArgumentError` whose message is a short sentence the
LLM can relay to the caller ("that number seems to be missing a digit"), never a stack trace.
"""

from __future__ import annotations

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
    out = list(dict.fromkeys(t.strip().lower() for t in tags if t and t.strip()))
    if not out:
        raise InvalidArgumentError("There was no tag to add.")
    if len(out) > MAX_TAGS or any(len(t) > MAX_TAG_LEN for t in out):
        raise InvalidArgumentError(
            f"Use at most {MAX_TAGS} short tags of up to {MAX_TAG_LEN} characters."
        )
    return out


def clean_text(text: str, *, what: str, limit: int = MAX_NOTE_CHARS) -> str:
    value = (text or "").strip()
    if not value:
        raise InvalidArgumentError(f"The {what} was empty.")
    if len(value) > limit:
        raise InvalidArgumentError(f"The {what} is too long (over {limit} characters).")
    return value


def split_name(name: str | None) -> dict[str, str]:
    value = " ".join((name or "").split())
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
