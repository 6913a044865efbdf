"""The words providers use for failures their status code alone does not tell apart.

A 401 from ElevenLabs is a bad key *or* used-up characters, a 429 from OpenAI is a rate limit
*or* an exhausted quota, a 400 from Gemini may be a bad key: only the body says which. The
generic wording (any provider's "quota exceeded") lives here; each provider's definition adds
its own (:class:`ErrorPhrases`), and a provider's guard classifies with both
(:func:`vocabulary`), so one provider's jargon never decides another's failures.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorPhrases:
    """Regular-expression fragments, matched case-insensitively against an error's text."""

    quota: tuple[str, ...] = ()  # credit or quota used up (long cooldown)
    rate_window: tuple[str, ...] = ()  # a quota error that is really a short window
    daily: tuple[str, ...] = ()  # ...unless it names a daily quota, which stays a quota
    key: tuple[str, ...] = ()  # the key itself was refused
    request: tuple[str, ...] = ()  # the request's own fault (context too long, filtered)


GENERIC = ErrorPhrases(
    quota=(
        "quota exceeded",
        "credits? (?:are )?exhausted",
        "payment_required",
        "payment required",
        "usage limit",
        "limit_exceeded",
    ),
    rate_window=("per minute", "requests per", "rate limit", "rate_limit"),
    daily=("per day",),
    key=("invalid api key", "unauthorized"),
    request=(
        "context length",
        "too many tokens",
        "content filter",
        "prompt is too long",
        "input too long",
        "text too long",
    ),
)


@dataclass(frozen=True)
class Vocabulary:
    """The compiled patterns one guard classifies with: generic plus its provider's."""

    quota: re.Pattern[str]
    rate_window: re.Pattern[str]
    daily: re.Pattern[str]
    key: re.Pattern[str]
    request: re.Pattern[str]


def _pattern(parts: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in parts), re.IGNORECASE)


@functools.cache
def vocabulary(*phrases: ErrorPhrases) -> Vocabulary:
    """:data:`GENERIC` joined with each of ``phrases`` (compiled once per combination)."""
    every = (GENERIC, *phrases)
    return Vocabulary(
        quota=_pattern(tuple(p for ph in every for p in ph.quota)),
        rate_window=_pattern(tuple(p for ph in every for p in ph.rate_window)),
        daily=_pattern(tuple(p for ph in every for p in ph.daily)),
        key=_pattern(tuple(p for ph in every for p in ph.key)),
        request=_pattern(tuple(p for ph in every for p in ph.request)),
    )
