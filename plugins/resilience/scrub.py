"""The one scrubber: anything key-like out of a text before it reaches a log, a store or a metric.

Provider errors echo what they were sent (an ``Authorization`` header, a URL with ``?key=``), so
every message the resilience layer keeps passes through :func:`scrub` once when it is made
(``classify``) and again where it is stored (the health store), in case a caller built a
:class:`~plugins.resilience.types.Failure` by hand. Ordinary error wording stays readable:
only values after a credential-like name, bearer tokens and key-shaped strings are replaced.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
MAX_MESSAGE_CHARS = 300

_SECRET_PATTERNS = [
    re.compile(r"(?i)\b(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)(api[_-]?key|x-api-key|xi-api-key|key|token|secret|password|authorization)"
        r"(\"?\s*[:=]\s*\"?)[^\s\"'&,}]+"
    ),
    re.compile(r"\b(sk|pk|rk|sess|sk-or-v1|sk-proj)-[A-Za-z0-9_-]{6,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"),
    re.compile(r"\b[A-Fa-f0-9]{32,}\b"),
    re.compile(r"\b[A-Za-z0-9_-]{40,}\b"),
]


def scrub(text: str, secrets: Iterable[str | None] = (), *, limit: int = MAX_MESSAGE_CHARS) -> str:
    """One line of at most ``limit`` characters, with every given secret and key-like value gone."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    # the patterns need only what can survive the cut; a 10 MB body costs no more than a line
    text = text[: limit * 4]
    for pattern in _SECRET_PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        else:
            text = pattern.sub(REDACTED, text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
