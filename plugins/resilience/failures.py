"""The errors the resilience layer raises, each carrying what the chain needs to move on.

A guard raises a :class:`GuardError` for what it detects itself (a deadline, an empty or cut
answer, implausible audio), :class:`ProviderUnavailableError` before any network I/O when the
breaker refuses, and re-raises every provider error as a :class:`ClassifiedError` carrying its
:class:`~plugins.resilience.types.Failure`. All are LiveKit ``APIError`` s, so LiveKit's own
``FallbackAdapter`` and ours treat them as provider failures.
"""

from __future__ import annotations

from livekit.agents import APIError

from plugins.resilience.types import BreakerState, Failure, FailureKind


class GuardError(APIError):
    """A failure the guard detected itself (deadline, empty or cut result, in-band error)."""

    kind: FailureKind = FailureKind.UNKNOWN

    def __init__(self, message: str, *, kind: FailureKind | None = None) -> None:
        super().__init__(message, retryable=True)
        if kind is not None:
            self.kind = kind


class DeadlineExceededError(GuardError):
    """First token/audio/result (TIMEOUT) or next chunk (STALL) did not arrive in time."""

    def __init__(self, message: str, *, stalled: bool, deadline_s: float) -> None:
        super().__init__(message, kind=FailureKind.STALL if stalled else FailureKind.TIMEOUT)
        self.deadline_s = deadline_s


class EmptyResultError(GuardError):
    kind = FailureKind.EMPTY_RESULT


class TruncatedError(GuardError):
    kind = FailureKind.TRUNCATED


class ImplausibleAudioError(GuardError):
    """TTS audio that cannot be speech (noise, clipping, bytes read as samples): an error the
    provider sent inside a 200, whatever its status said."""

    kind = FailureKind.IN_BAND_ERROR


class ProviderUnavailableError(APIError):
    """Raised before any network I/O when the health store refuses the attempt.

    Not retryable: the chain should move on to the next provider at once.
    """

    def __init__(self, key: str, reason: str, *, until: float | None = None) -> None:
        super().__init__(f"{key} skipped: {reason}", retryable=False)
        self.key = key
        self.until = until


class ClassifiedError(APIError):
    """What a guard re-raises: the original error, classified, with a scrubbed message.

    ``retryable`` says whether the same provider may answer soon (rate limits, 5xx, resets),
    so callers outside a chain can decide; inside a chain LiveKit's ``FallbackAdapter`` moves
    on to the next provider whatever it says.
    """

    def __init__(self, key: str, failure: Failure, *, breaker: BreakerState | None = None) -> None:
        super().__init__(
            f"{key}: {failure.kind.value}: {failure.message}",
            retryable=failure.kind in _RETRYABLE,
        )
        self.key = key
        self.failure = failure
        self.breaker = breaker  # the provider's breaker after this failure was recorded


_RETRYABLE = frozenset(
    {
        FailureKind.RATE_LIMITED,
        FailureKind.SERVER_ERROR,
        FailureKind.CONNECTION_ERROR,
        FailureKind.TIMEOUT,
        FailureKind.STALL,
        FailureKind.TRUNCATED,
        FailureKind.EMPTY_RESULT,
        FailureKind.IN_BAND_ERROR,
        FailureKind.UNKNOWN,
    }
)
