"""One line per distinct warning per attempt: a provider sending garbage must not flood the log.

LiveKit's plugins log through the standard library, once per event: a Deepgram socket that
sends a hundred unparsable frames logs a hundred identical "failed to process deepgram
message" tracebacks, burying the one line that matters. While a guarded attempt runs
(:func:`attempt_scope`, entered by ``Guard.attempt``), a filter on the plugins' loggers lets the
first record of each distinct warning through and counts the rest; when the attempt ends one
summary line says how many were held back. The plugins' own tasks run in copies of the
attempt's context, so their records are counted against it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections import Counter
from collections.abc import Iterator

import structlog

log = structlog.get_logger(__name__)

#: The loggers whose repeated warnings are held back (LiveKit's and its plugins').
LOGGERS = (
    "livekit.agents",
    "livekit.plugins.cartesia",
    "livekit.plugins.deepgram",
    "livekit.plugins.elevenlabs",
    "livekit.plugins.google",
    "livekit.plugins.openai",
)

_Key = tuple[str, int, str]
_SCOPE: contextvars.ContextVar[Counter[_Key] | None] = contextvars.ContextVar(
    "repeat_limit_scope", default=None
)


class RepeatFilter(logging.Filter):
    """Drops a warning already seen in the current attempt (counted for the summary)."""

    def filter(self, record: logging.LogRecord) -> bool:
        seen = _SCOPE.get()
        if seen is None or record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        seen[key] += 1
        return seen[key] == 1


_FILTER = RepeatFilter()


def install() -> None:
    """Attach the filter to :data:`LOGGERS` (idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


@contextlib.contextmanager
def attempt_scope(provider: str) -> Iterator[None]:
    """Within this block each distinct plugin warning is logged once; the repeats are counted."""
    install()
    seen: Counter[_Key] = Counter()
    token = _SCOPE.set(seen)
    try:
        yield
    finally:
        _SCOPE.reset(token)
        repeats = {f"{name}: {msg}"[:120]: n - 1 for (name, _, msg), n in seen.items() if n > 1}
        if repeats:
            log.warning(
                "repeated provider warnings held back during one attempt",
                provider=provider,
                held_back=sum(repeats.values()),
                warnings=repeats,
            )
