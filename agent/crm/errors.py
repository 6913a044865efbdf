"""Typed GHL errors, so callers decide by kind (retry, re-check, give up) rather than by text.

Messages never contain the token; they say what went wrong and what to do about it.
"""

from __future__ import annotations


class GhlError(Exception):
    """Base class. ``maybe_applied`` is True when the request may have reached GHL and been
    applied even though no answer arrived (a timeout, a reset, a 5xx): a non-idempotent write
    must then be checked before it is sent again."""

    retryable: bool = False
    maybe_applied: bool = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GhlAuthError(GhlError):
    """401/403: the token is wrong, expired or lacks a scope. Retrying will not help."""


class GhlValidationError(GhlError):
    """422 (or a 400 that names the request): GHL refused the request body or query."""

    def __init__(self, message: str, *, status: int | None = None, fields: list[str] | None = None):
        super().__init__(message, status=status)
        self.fields = fields or []


class GhlNotFoundError(GhlError):
    """404: the contact, calendar or appointment does not exist (or is in another location)."""


class GhlRateLimitedError(GhlError):
    """429, or our own bucket has no token before the deadline. Never applied by GHL."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None, status: int | None = 429):
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


class GhlServerError(GhlError):
    """5xx: GHL failed. The write may or may not have been applied."""

    retryable = True
    maybe_applied = True


class GhlUnavailableError(GhlError):
    """No answer: timeout, reset or refused connection.

    ``maybe_applied`` is False only when the request provably never left (connection refused).
    """

    retryable = True

    def __init__(self, message: str, *, maybe_applied: bool) -> None:
        super().__init__(message, status=None)
        self.maybe_applied = maybe_applied


class GhlDeadlineError(GhlUnavailableError):
    """The caller's overall deadline ran out across attempts."""
