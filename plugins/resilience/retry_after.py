"""The one reader of provider-given wait and reset times, validated before anything trusts them.

A provider's ``Retry-After`` (or ``retry-after-ms``, OpenAI's ``x-ratelimit-reset-*``, a
``retryDelay`` in a Gemini body, an account API's reset date) decides how long a provider stays
off. A wrong value must not keep a healthy provider off for years (``Retry-After: 999999999``),
forever (``inf``, ``1e300``) or crash whoever formats it: every value is parsed here, must be
finite and non-negative, and is clamped to :data:`MAX_RETRY_AFTER_S` (a wait) or
:data:`MAX_RESET_AHEAD_S` (a reset date, which may honestly be the end of a month). The breaker
re-checks what reaches it (:func:`bounded_wait`, :func:`bounded_reset_at`), so a hand-built or
stored value is held to the same bounds.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping

#: OpenAI says "try again in 20ms" for token limits: re-probing that often helps nobody.
MIN_RETRY_AFTER_S = 1.0
#: The longest a rate limit's wait is believed. A half-open probe re-checks after it.
MAX_RETRY_AFTER_S = 3600.0
#: The furthest ahead a quota reset date is believed: a monthly quota resets within 31 days.
MAX_RESET_AHEAD_S = 31 * 86400.0

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def bounded_wait(seconds: float | None, *, cap: float = MAX_RETRY_AFTER_S) -> float | None:
    """``seconds`` if it is a usable wait, clamped to ``[0, cap]``; None when not a number."""
    if seconds is None or not isinstance(seconds, int | float) or math.isnan(seconds):
        return None
    return min(max(float(seconds), 0.0), cap)  # inf -> cap, -inf -> 0


def bounded_reset_at(
    epoch_s: float | None, *, now: float, cap: float = MAX_RESET_AHEAD_S
) -> float | None:
    """A reset time no further ahead than ``cap``; None when not a finite date after ``now``."""
    if epoch_s is None or not isinstance(epoch_s, int | float) or not math.isfinite(epoch_s):
        return None
    if epoch_s <= now:
        return None
    return min(float(epoch_s), now + cap)


def parse_duration(value: str) -> float | None:
    """``"20"``, ``"1.5"``, ``"6m0s"``, ``"20ms"``, ``"27s"`` -> seconds (not yet clamped)."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION_PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
            return None
        seconds = sum(float(n) * _SCALE[u] for n, u in parts)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def parse_retry_after(value: str, *, now: float | None = None) -> float | None:
    """One ``Retry-After`` value (delay-seconds or an HTTP date) -> seconds, clamped."""
    seconds = parse_duration(value)
    if seconds is None:
        try:
            when = email.utils.parsedate_to_datetime(value.strip()).timestamp()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
        seconds = when - (time.time() if now is None else now)
    return bounded_wait(seconds)


def retry_after_from_headers(
    headers: Mapping[str, str], *, now: float | None = None
) -> float | None:
    """Seconds to wait, from the headers providers actually send on 429, clamped."""
    h = {k.lower(): v for k, v in headers.items()}
    now = time.time() if now is None else now
    if "retry-after-ms" in h:
        ms = parse_duration(h["retry-after-ms"])
        if ms is not None:
            return bounded_wait(ms / 1000.0)
    if "retry-after" in h:
        seconds = parse_retry_after(h["retry-after"], now=now)
        if seconds is not None:
            return seconds
    waits = [
        s
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if name in h and (s := parse_duration(h[name])) is not None
    ]
    if waits:
        return bounded_wait(max(waits))
    if "x-ratelimit-reset" in h:
        value = parse_duration(h["x-ratelimit-reset"])
        if value is None:
            return None
        # epoch seconds (or ms) vs a relative number of seconds
        if value > 1e12:
            value /= 1000.0
        return bounded_wait(value - now if value > 1e9 else value)
    return None


_BODY_RETRY = [
    re.compile(r'"retryDelay"\s*:\s*"(\d+(?:\.\d+)?)s"'),
    re.compile(r"(?i)retry in (\d+(?:\.\d+)?)\s*(?:s|sec|seconds)\b"),
    re.compile(r"(?i)try again in (\d+(?:\.\d+)?)\s*(ms|s)\b"),
]


def retry_after_from_body(text: str) -> float | None:
    """A wait an error body states in words (Gemini's ``retryDelay``, OpenAI's "try again in")."""
    for pattern in _BODY_RETRY:
        m = pattern.search(text)
        if m:
            seconds = float(m.group(1))
            if m.lastindex and m.lastindex >= 2 and m.group(2) == "ms":
                seconds /= 1000.0
            return bounded_wait(seconds)
    return None
