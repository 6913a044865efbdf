"""Pull a caller's contact details out of speech as a speech-to-text engine writes it.

Transcripts arrive lowercase, without punctuation and with numbers spelled out ("five five
five one two three ..."), and "at" / "dot" spoken instead of "@" / ".". Typed text (the console,
tests) may also carry digits, capitals and real symbols, so both forms are accepted. Every
function is pure and deterministic: the scripted sales responder re-derives the whole lead from
the conversation history on every turn.

Extraction order matters: an email ("john at example dot com") and a phone number ("at five
five five ...") contain words that also look like a time ("at five"), so :func:`extract_all`
takes the email, then the phone, then the time, then the name, each from the words the
previous ones left over.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email

LeadField = Literal["name", "phone", "email", "preferred_time"]
LEAD_FIELDS: tuple[LeadField, ...] = ("name", "phone", "email", "preferred_time")

DEFAULT_REGION = "US"


@dataclass(frozen=True)
class Token:
    """One word of an utterance: ``low`` for matching, ``raw`` as written (for name casing)."""

    low: str
    raw: str


@dataclass(frozen=True)
class Extraction:
    """The contact details found in one utterance (``None`` where absent)."""

    name: str | None = None
    phone: str | None = None
    email: str | None = None
    preferred_time: str | None = None

    def found(self) -> tuple[LeadField, ...]:
        return tuple(f for f in LEAD_FIELDS if getattr(self, f) is not None)


# --- tokenising ---------------------------------------------------------------------------

_TYPED_EMAIL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_TOKEN = re.compile(
    r"\+|@|\d{1,2}:\d{2}|(?<=\w)[._-](?=\w)|[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)*",
)


def tokenize(text: str) -> list[Token]:
    """Words, digits, ``+``/``@``, ``h:mm`` times, and ``. _ -`` only between word characters."""
    tokens: list[Token] = []
    for match in _TOKEN.finditer(text):
        raw = match.group(0).replace("\u2019", "'")
        tokens.append(Token(raw.lower(), raw))
    return tokens


# --- spoken numbers -----------------------------------------------------------------------

_UNITS = {
    "zero": 0,
    "oh": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}
_TEENS = {
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_REPEAT = {"double": 2, "triple": 3}
NUMBER_WORDS = frozenset(_UNITS) | frozenset(_TEENS) | frozenset(_TENS) | {"hundred", "thousand"}


def _unit(tokens: Sequence[Token], i: int) -> int | None:
    if i < len(tokens):
        low = tokens[i].low
        if low in _UNITS:
            return _UNITS[low]
        if len(low) == 1 and low.isdigit():
            return int(low)
    return None


def _two_digit(tokens: Sequence[Token], i: int) -> tuple[int, int] | None:
    """A number below 100 spoken at ``i``: (value, tokens used)."""
    if i >= len(tokens):
        return None
    low = tokens[i].low
    if low in _TEENS:
        return _TEENS[low], 1
    if low in _TENS:
        j = i + 1
        if j < len(tokens) and tokens[j].low == "-":
            j += 1
        unit = _unit(tokens, j)
        if unit is not None and unit > 0 and tokens[j].low != "oh":
            return _TENS[low] + unit, j - i + 1
        return _TENS[low], 1
    unit = _unit(tokens, i)
    if unit is not None:
        return unit, 1
    return None


def _digits_at(tokens: Sequence[Token], i: int, in_run: bool) -> tuple[str, int] | None:
    """The digits a spoken or written number at ``i`` stands for, and how many tokens it used.

    Phone numbers are read digit by digit, in pairs ("fifty five"), with "oh" for zero,
    "double five", or "eight hundred". ``in_run`` allows the bare letter "o" as zero.
    """
    low = tokens[i].low
    if low.isdigit():
        return low, 1
    if low == "o" and in_run:
        return "0", 1
    if low in _REPEAT and (unit := _unit(tokens, i + 1)) is not None:
        return str(unit) * _REPEAT[low], 2
    if low in _UNITS:
        unit = _UNITS[low]
        nxt = tokens[i + 1].low if i + 1 < len(tokens) else ""
        if nxt == "hundred" and unit > 0:
            rest = _two_digit(tokens, i + 2)
            if rest is not None and tokens[i + 2].low in _TENS.keys() | _TEENS.keys():
                return f"{unit * 100 + rest[0]:03d}", 2 + rest[1]
            return f"{unit}00", 2
        if nxt == "thousand" and unit > 0:
            return f"{unit}000", 2
        return str(unit), 1
    pair = _two_digit(tokens, i)
    if pair is not None:
        return f"{pair[0]:02d}", pair[1]
    return None


# --- phone --------------------------------------------------------------------------------

_RUN_SEPARATORS = frozenset({"-", ".", "dash", "hyphen"})
_NOT_A_PHONE_CUES = frozenset(
    {"zip", "postal", "postcode", "order", "account", "card", "invoice", "reference", "ticket"}
    | {"confirmation", "policy", "serial", "pin", "code", "id", "number's"}
)


@dataclass(frozen=True)
class _Span:
    start: int
    end: int  # exclusive


def _find_phone(tokens: Sequence[Token], region: str) -> tuple[str, _Span] | None:
    """The first run of spoken/written digits that is a possible full phone number."""
    i = 0
    while i < len(tokens):
        start = i
        digits = ""
        if tokens[i].low in {"+", "plus"}:
            digits = "+"
            i += 1
        j = i
        while j < len(tokens):
            found = _digits_at(tokens, j, in_run=digits not in ("", "+"))
            if found is not None:
                digits += found[0]
                j += found[1]
                continue
            if (
                tokens[j].low in _RUN_SEPARATORS
                and digits not in ("", "+")
                and j + 1 < len(tokens)
                and _digits_at(tokens, j + 1, in_run=True) is not None
            ):
                j += 1
                continue
            break
        if j == i:
            i = start + 1
            continue
        number = _as_e164(digits, region)
        if number is not None and not _follows_non_phone_cue(tokens, start):
            return number, _Span(start, j)
        i = j
    return None


def _follows_non_phone_cue(tokens: Sequence[Token], start: int) -> bool:
    before = {t.low for t in tokens[max(0, start - 3) : start]}
    return bool(before & _NOT_A_PHONE_CUES) and "phone" not in before


def _as_e164(digits: str, region: str) -> str | None:
    bare = digits.lstrip("+")
    if not 7 <= len(bare) <= 15:
        return None
    try:
        parsed = phonenumbers.parse(digits, region)
    except phonenumbers.NumberParseException:
        return None
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def extract_phone(text: str, region: str = DEFAULT_REGION) -> str | None:
    """The caller's phone number in E.164 (``+15551234567``), or ``None``.

    ``region`` (ISO 3166 alpha-2, e.g. ``"US"``, ``"GB"``) decides how a number without a
    country code is read.
    """
    found = _find_phone(tokenize(text), _checked_region(region))
    return found[0] if found else None


def _checked_region(region: str) -> str:
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(
            f"unknown phone region {region!r}: use a two-letter ISO 3166 country code "
            "such as 'US' or 'GB'"
        )
    return code


# --- email --------------------------------------------------------------------------------

_AT_WORDS = frozenset({"at", "@"})
_EMAIL_SYMBOLS = {
    "dot": ".",
    "period": ".",
    "point": ".",
    ".": ".",
    "underscore": "_",
    "_": "_",
    "dash": "-",
    "hyphen": "-",
    "-": "-",
}
# Words that end the spoken local part when walking back from "at".
_EMAIL_CUES = frozenset(
    {"is", "it's", "its", "email", "e", "mail", "address", "me", "my", "use", "try", "at", "@"}
    | {"that's", "thats", "was", "write", "send", "reach", "to", "it", "under", "s"}
)
# Words that cannot be the part of an address right before "at": "i'm at home".
_NOT_LOCAL_PART = frozenset(
    {"i", "i'm", "im", "we", "we're", "were", "you", "you're", "they", "they're", "he", "she"}
    | {"it", "be", "been", "am", "are", "is", "was", "me", "us", "them", "look", "looking"}
    | {"meet", "home", "work", "working", "here", "there", "stay", "staying", "arrive", "get"}
    | {"live", "living", "lives", "still", "call", "calling", "back", "office", "school", "him"}
    | {"her", "out", "up", "available", "free", "busy", "best", "reached", "reach", "that"}
    | {"number", "phone", "mobile", "cell", "starting", "starts", "begin", "around", "only"}
)
_NOT_DOMAIN = frozenset({"the", "a", "an", "my", "your", "his", "her", "our", "their", "home"})


def _find_email(tokens: Sequence[Token]) -> tuple[str, _Span] | None:
    for at in range(len(tokens)):
        if tokens[at].low not in _AT_WORDS:
            continue
        after = at + 1
        if after < len(tokens) and tokens[after].low in {"sign", "symbol"}:
            after += 1
        domain = _domain_after(tokens, after)
        if domain is None:
            continue
        local = _local_part_before(tokens, at)
        if local is None:
            continue
        address = f"{local[0]}@{domain[0]}"
        try:
            normalized = validate_email(address, check_deliverability=False).normalized
        except EmailNotValidError:
            continue
        return normalized.lower(), _Span(local[1], domain[1])
    return None


def _domain_after(tokens: Sequence[Token], i: int) -> tuple[str, int] | None:
    """``example dot co dot uk`` -> ("example.co.uk", end index); needs at least one dot."""
    if i >= len(tokens) or not tokens[i].low.isalnum() or tokens[i].low in _NOT_DOMAIN:
        return None
    labels = [tokens[i].low]
    j = i + 1
    while j < len(tokens):
        sym = _EMAIL_SYMBOLS.get(tokens[j].low)
        if sym is None or j + 1 >= len(tokens) or not tokens[j + 1].low.isalnum():
            break
        if sym == ".":
            labels.append(tokens[j + 1].low)
        elif sym == "-":
            labels[-1] += "-" + tokens[j + 1].low
        else:
            break
        j += 2
    if len(labels) < 2 or not labels[-1].isalpha() or len(labels[-1]) < 2:
        return None
    return ".".join(labels), j


def _local_part_before(tokens: Sequence[Token], at: int) -> tuple[str, int] | None:
    """Walk back from "at": "john dot smith", "j o h n", "sarah connor" -> (local, start)."""
    parts: list[str] = []
    words = 0
    j = at - 1
    while j >= 0:
        low = tokens[j].low
        sym = _EMAIL_SYMBOLS.get(low)
        if sym is not None and parts and j > 0 and tokens[j - 1].low not in _EMAIL_CUES:
            parts.insert(0, sym)
            j -= 1
            continue
        if not low.replace("'", "").isalnum() or "'" in low:
            break
        if not parts:
            if low in _NOT_LOCAL_PART or low in _EMAIL_CUES:
                return None
        elif low in _EMAIL_CUES or low in COMMON_WORDS or (len(low) > 1 and words >= 3):
            break
        if len(low) > 1:
            words += 1
        parts.insert(0, _email_word(low))
        j -= 1
    while parts and parts[0] in _EMAIL_SYMBOLS.values():
        parts.pop(0)
    if not parts:
        return None
    return "".join(parts), j + 1


def _email_word(low: str) -> str:
    unit = _UNITS.get(low)
    return str(unit) if unit is not None and low != "oh" else low


def extract_email(text: str) -> str | None:
    """The caller's email address (lowercased, syntax-checked, no DNS), or ``None``."""
    typed = _TYPED_EMAIL.search(text)
    if typed:
        try:
            return validate_email(typed.group(0), check_deliverability=False).normalized.lower()
        except EmailNotValidError:
            pass
    found = _find_email(tokenize(text))
    return found[0] if found else None


def guess_email_without_at(text: str) -> str | None:
    """An address whose "at" the recogniser dropped: "john smith gmail dot com".

    Only worth trying when the agent has just asked for an email, and only as a guess to
    read back for confirmation: the words before the domain are taken as the local part.
    """
    tokens = tokenize(text)
    for start in range(1, len(tokens)):
        domain = _domain_after(tokens, start)
        if domain is None or domain[1] < len(tokens) - 1:
            continue  # the address ends the utterance (allowing one trailing word)
        local = _local_part_before(tokens, start)
        if local is None:
            continue
        try:
            address = validate_email(f"{local[0]}@{domain[0]}", check_deliverability=False)
        except EmailNotValidError:
            continue
        return address.normalized.lower()
    return None


# --- preferred time -----------------------------------------------------------------------

_DAYS = frozenset(
    {"today", "tonight", "tomorrow", "weekend", "weekends", "weekday", "weekdays"}
    | {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
    | {"mondays", "tuesdays", "wednesdays", "thursdays", "fridays", "saturdays", "sundays"}
)
_PARTS = frozenset(
    {"morning", "mornings", "afternoon", "afternoons", "evening", "evenings", "night"}
    | {"noon", "midday", "lunch", "lunchtime", "nights"}
)
_ANYTIME = frozenset({"anytime", "whenever", "asap"})
_CLOCK_ANCHORS = frozenset(
    {"at", "around", "after", "before", "by", "until", "till", "about", "between", "from"}
)
_CLOCK_SUFFIX = frozenset({"am", "pm", "o'clock", "oclock", "ish", "sharp"})
_MINUTES = frozenset({"fifteen", "thirty", "forty", "five", "oh", "forty-five", "ten", "twenty"})
_SPAN_GLUE = frozenset(
    {"in", "the", "on", "this", "next", "or", "and", "early", "late", "mid", "a", "m", "p"}
    | {"sometime", "some", "time", "any", "between", "from", "to", "week", "later", "of"}
    | {"day", "end", "soon", "as", "possible", "right", "away", "either"}
    | _CLOCK_ANCHORS
    | _CLOCK_SUFFIX
)
_SPAN_LEAD = frozenset(
    {"in", "the", "on", "this", "next", "early", "late", "sometime", "any", "between", "from"}
    | {"later", "either", "as"}
    | _CLOCK_ANCHORS
)
_BLOCKERS = frozenset({"good", "busy", "not", "can't", "cannot", "don't", "unavailable", "except"})
_CALLBACK_CUES = frozenset(
    {"call", "reach", "contact", "ring", "best", "works", "work", "prefer", "available", "free"}
    | {"time", "callback", "back", "schedule", "try", "when", "good", "better", "fine"}
)


def _is_hour(low: str) -> bool:
    if low.isdigit():
        return 1 <= int(low) <= 12
    if re.fullmatch(r"\d{1,2}:\d{2}", low) or re.fullmatch(r"\d{1,2}(am|pm)", low):
        return True
    return (low in _UNITS and low not in {"zero", "oh"}) or low in {"ten", "eleven", "twelve"}


_TIME_PAIRS = frozenset(
    {("any", "time"), ("next", "week"), ("this", "week"), ("as", "soon"), ("as", "possible")}
)
_TIME_PAIRS_RIGHT = frozenset({("right", "away")})


def _is_time_word(low: str, prev: str, nxt: str, prev_core: bool, prev2_core: bool) -> bool:
    """Whether ``low`` (between ``prev`` and ``nxt``) names a day, a part of day or a clock time."""
    if low in _DAYS or low in _PARTS or low in _ANYTIME:
        return True
    if (prev, low) in _TIME_PAIRS or (prev, low) in _TIME_PAIRS_RIGHT:
        return True
    if _is_hour(low) and (
        prev in _CLOCK_ANCHORS
        or (prev in {"between", "and", "to", "or"} and prev2_core)
        or nxt in _CLOCK_SUFFIX
        or low.endswith(("am", "pm"))
        or ":" in low
    ):
        return True
    if not prev_core:
        return False
    return (
        (low in _MINUTES and _is_hour(prev))
        or low in _CLOCK_SUFFIX
        or (low in {"a", "p"} and nxt == "m")
        or (low == "m" and prev in {"a", "p"})
    )


def _time_core(tokens: Sequence[Token]) -> list[bool]:
    """Which tokens carry time meaning by themselves (days, parts of day, clock times)."""
    core = [False] * len(tokens)
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1].low if i else ""
        nxt = tokens[i + 1].low if i + 1 < len(tokens) else ""
        core[i] = _is_time_word(tok.low, prev, nxt, i >= 1 and core[i - 1], i >= 2 and core[i - 2])
        if core[i] and i >= 1 and tokens[i - 1].low in _BLOCKERS:
            core[i] = False
        if core[i] and tok.low in _PARTS and i >= 2 and tokens[i - 2].low == "good":
            core[i] = False  # "have a good evening"
    return core


def _find_time(tokens: Sequence[Token], expecting: bool) -> tuple[str, _Span] | None:
    if not expecting and not any(t.low in _CALLBACK_CUES for t in tokens):
        return None
    core = _time_core(tokens)
    if not any(core):
        return None
    first = core.index(True)
    end = first + 1
    j = first + 1
    while j < len(tokens):
        if core[j]:
            end = j + 1
        elif tokens[j].low not in _SPAN_GLUE or j - end >= 2:
            break
        j += 1
    start = first
    while start > 0 and tokens[start - 1].low in _SPAN_LEAD and first - start < 3:
        start -= 1
    if any(tokens[k].low in _BLOCKERS for k in range(max(0, start - 3), start)):
        return None
    text = " ".join(t.low for t in tokens[start:end])
    return text, _Span(start, end)


def extract_preferred_time(text: str, *, expecting: bool = False) -> str | None:
    """When the caller wants to be called back, as they said it ("tomorrow afternoon").

    Without ``expecting`` (the agent just asked for a time) the utterance must also talk
    about calling or availability, so "i'm free today" counts and "i bought it today" does not.
    """
    found = _find_time(tokenize(text), expecting)
    return found[0] if found else None


# --- name ---------------------------------------------------------------------------------

# Words that follow "i'm" / "this is" / "call me" but are not names, and words that end a name.
_COMMON_WORDS_TEXT = """
    a about actually after again ago all also always am an and any anyone anything anyway are
    around as ask asking at available away back bad be because been before being best better
    between both busy but by call called calling can can't cannot car checking come coming
    could curious currently day did do doing don't done down each either else email even
    ever every excited fine for free from fun get getting glad go going good got great had happy
    has have having he hello help here hey hi him his hoping how however i i'd i'll i'm if im in
    info information interested into is it it's its just keen kind know later like little
    looking lot looking made make maybe me mind mine more morning most much must my myself
    name need needed new next nice no nope not nothing now number of off oh ok okay on one only
    or other our out over own phone please pleased pretty probably question quick quite
    ready real really reaching right same see she should so some someone something soon sorry
    still sure talk tell than thank thanks that that's the their them then there these they
    thing think thinking this those though through time to today tomorrow too trying two
    um uh er hmm up us very want wanted wanting was way we well were what when where which while
    who why will wish with wondering would yeah yep yes yet you your yours calling sales
    the company customer owner manager here speaking hear listening interested question
    available totally fully just new old small big afraid glad happy sad tired sick
    price pricing cost demo product service plan plans sign signing buy buying purchase
    afternoon evening night tonight week weekend monday tuesday wednesday thursday friday
    saturday sunday whenever anytime asap fine alright all right correct wrong right exactly
    perfect awesome cool nah nope yup hang hold wait second minute moment
    absolutely definitely certainly indeed sounds correct true false fantastic wonderful
    bye goodbye nothing else sir madam ma'am mister miss thats that's what's whats lets let's
    whatever nevermind pass huh pardon repeat excuse skip rather prefer say said spell mhm
    busy driving working wrong bad line hear hearing sorry again slowly slow understand
"""
COMMON_WORDS = frozenset(_COMMON_WORDS_TEXT.split()) | NUMBER_WORDS

_NAME_CUES: tuple[tuple[str, ...], ...] = (
    ("my", "name", "is"),
    ("my", "name's"),
    ("my", "names"),
    ("the", "name", "is"),
    ("name", "is"),
    ("name's",),
    ("names",),
    ("this", "is"),
    ("i", "am"),
    ("i'm",),
    ("im",),
    ("you", "can", "call", "me"),
    ("call", "me"),
    ("it's",),
    ("its",),
    ("it", "is"),
)
_CONTEXT_ONLY_CUES = frozenset({("it's",), ("its",), ("it", "is")})
_NAME_FILLERS = frozenset(
    {"yeah", "yes", "sure", "ok", "okay", "um", "uh", "er", "hmm", "oh", "well", "so", "no"}
    | {"it's", "its", "it", "is", "my", "name", "name's", "names", "the", "this", "i'm", "im"}
    | {"i", "am", "actually", "sorry", "of", "course", "yep", "yup", "hi", "hello", "hey"}
    | {"first", "last", "full", "and"}
)


_AFTER_BARE_NAME = frozenset({"and", "|", "here", "speaking", "from", "my", "calling", "but"})


def _name_word(tok: Token) -> bool:
    low = tok.low
    return (
        low.replace("'", "").isalpha()
        and len(low) > 1
        and low not in COMMON_WORDS
        and low not in _DAYS
        and low not in _PARTS
    )


def _cased(tok: Token) -> str:
    if tok.raw != tok.low:
        return tok.raw
    return "'".join(part[:1].upper() + part[1:] for part in tok.low.split("'"))


def _name_from(tokens: Sequence[Token], i: int) -> tuple[str, int] | None:
    words: list[str] = []
    j = i
    while j < len(tokens) and len(words) < 3:
        tok = tokens[j]
        if tok.low == "-" and words and j + 1 < len(tokens) and _name_word(tokens[j + 1]):
            words[-1] += "-" + _cased(tokens[j + 1])
            j += 2
            continue
        if not _name_word(tok):
            break
        words.append(_cased(tok))
        j += 1
    if not words:
        return None
    return " ".join(words), j


def _find_name(tokens: Sequence[Token], expecting: bool) -> tuple[str, _Span] | None:
    lows = [t.low for t in tokens]
    for i in range(len(tokens)):
        for cue in _NAME_CUES:
            if tuple(lows[i : i + len(cue)]) != cue:
                continue
            if cue in _CONTEXT_ONLY_CUES and not expecting:
                continue
            found = _name_from(tokens, i + len(cue))
            if found is not None:
                return found[0], _Span(i, found[1])
    if expecting:
        # a bare answer: the first real words, ending the utterance or followed by a break
        rest = [k for k, t in enumerate(tokens) if t.low not in _NAME_FILLERS]
        if rest:
            found = _name_from(tokens, rest[0])
            if found is not None and (
                found[1] == len(tokens) or tokens[found[1]].low in _AFTER_BARE_NAME
            ):
                return found[0], _Span(rest[0], found[1])
    return None


def extract_name(text: str, *, expecting: bool = False) -> str | None:
    """The caller's name from "my name is ...", "this is ...", "i'm ...", or ``None``.

    With ``expecting`` (the agent just asked for the name, or is correcting it) a bare answer
    ("sarah connor", "it's mike") counts too.
    """
    found = _find_name(tokenize(text), expecting)
    return found[0] if found else None


# --- everything at once -------------------------------------------------------------------


def extract_all(
    text: str,
    *,
    expecting: LeadField | Collection[LeadField] | None = None,
    region: str = DEFAULT_REGION,
) -> Extraction:
    """Every contact detail in one utterance, each taken from words the others left over.

    ``expecting`` names the detail(s) the agent just asked for, which lets bare answers count
    ("sarah connor" for a name, "in the morning" for a time).
    """
    region = _checked_region(region)
    expected = {expecting} if isinstance(expecting, str) else set(expecting or ())
    email: str | None = None
    typed = _TYPED_EMAIL.search(text)
    if typed:
        email = extract_email(typed.group(0))
        if email is not None:
            text = text[: typed.start()] + " " + text[typed.end() :]
    tokens = tokenize(text)
    if email is None:
        found_email = _find_email(tokens)
        if found_email is not None:
            email = found_email[0]
            tokens = _without(tokens, found_email[1])
    phone: str | None = None
    found_phone = _find_phone(tokens, region)
    if found_phone is not None:
        phone = found_phone[0]
        tokens = _without(tokens, found_phone[1])
    preferred_time: str | None = None
    found_time = _find_time(tokens, "preferred_time" in expected)
    if found_time is not None:
        preferred_time = found_time[0]
        tokens = _without(tokens, found_time[1])
    found_name = _find_name(tokens, "name" in expected)
    return Extraction(
        name=found_name[0] if found_name else None,
        phone=phone,
        email=email,
        preferred_time=preferred_time,
    )


def _without(tokens: Sequence[Token], span: _Span) -> list[Token]:
    # a marker keeps the words either side of the cut from reading as one phrase
    return [*tokens[: span.start], Token("|", "|"), *tokens[span.end :]]
