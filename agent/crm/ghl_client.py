"""Async client for the GHL (LeadConnector) API v2, shaped for a live phone call.

Why it looks like this (see shared/reference/resilience.md, "Recommended design"):

* a caller is waiting on interactive reads, so they get a 700 ms deadline spanning at most two
  attempts; a retry happens only on a timeout, a connect error or 502/503/504, and only when
  at least 200 ms remain (Envoy/gRPC: the deadline includes the retries);
* writes that are not idempotent (notes, appointments) are never retried here: the caller
  checks whether the first attempt landed before trying again;
* a shared :class:`TokenBucket` keeps us under GHL's 100 per 10 s, with a reserve for
  interactive calls, and learns from GHL's rate-limit headers and 429s;
* each service wants its own ``Version`` header (contacts 2021-07-28, calendars 2021-04-15).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self
from zoneinfo import ZoneInfo

import aiohttp
import structlog

from agent.crm.backoff import RetryBudget, full_jitter
from agent.crm.errors import (
    GhlAuthError,
    GhlDeadlineError,
    GhlError,
    GhlNotFoundError,
    GhlRateLimitedError,
    GhlServerError,
    GhlUnavailableError,
    GhlValidationError,
)
from agent.crm.rate_limit import TokenBucket, retry_after_from
from plugins.resilience.breaker import Breaker, BreakerConfig, BreakerRecord
from plugins.resilience.types import Failure, FailureKind

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://services.leadconnectorhq.com"
CONTACTS_VERSION = "2021-07-28"
CALENDARS_VERSION = "2021-04-15"
RETRYABLE_STATUSES = frozenset({502, 503, 504})
# resilience.md: per endpoint group, 30 s window, 5 calls minimum, 50 %, 5 in a row, 5-60 s open.
GHL_BREAKER = BreakerConfig(
    consecutive_failures=5,
    failure_rate_threshold=0.5,
    window_s=30,
    minimum_calls=5,
    base_open_s=5.0,
    max_open_s=60.0,
)


@dataclass(frozen=True)
class CallPolicy:
    """How long a request may take in total and how it may be retried."""

    deadline_s: float
    attempt_timeout_s: float
    max_attempts: int
    interactive: bool
    min_remaining_to_retry_s: float = 0.2
    backoff_base_s: float = 0.025
    backoff_cap_s: float = 0.25


INTERACTIVE_READ = CallPolicy(
    deadline_s=0.7, attempt_timeout_s=0.45, max_attempts=2, interactive=True
)
# A booking: one attempt, 2.5 s (covered by a spoken filler); a lost answer is checked, not retried.
INTERACTIVE_WRITE = CallPolicy(
    deadline_s=2.5, attempt_timeout_s=2.5, max_attempts=1, interactive=True
)
# A check made before re-sending a write: a caller may be waiting, but a little longer.
INTERACTIVE_CHECK = CallPolicy(
    deadline_s=1.5, attempt_timeout_s=0.7, max_attempts=2, interactive=True
)
# Outbox work: the deliverer retries across time (persisted), so one attempt per call here.
BACKGROUND = CallPolicy(deadline_s=15.0, attempt_timeout_s=10.0, max_attempts=1, interactive=False)


@dataclass(frozen=True)
class Contact:
    id: str
    first_name: str | None = None
    last_name: str | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    timezone: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def display_name(self) -> str | None:
        if self.name:
            return self.name
        parts = [p for p in (self.first_name, self.last_name) if p]
        return " ".join(parts) or None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Contact:
        name = data.get("contactName") or data.get("name")
        return cls(
            id=str(data["id"]),
            first_name=data.get("firstName"),
            last_name=data.get("lastName"),
            name=name if isinstance(name, str) else None,
            email=data.get("email"),
            phone=data.get("phone"),
            timezone=data.get("timezone"),
            tags=tuple(str(t) for t in data.get("tags") or ()),
        )


@dataclass(frozen=True)
class Appointment:
    id: str
    calendar_id: str
    contact_id: str
    start_time: datetime
    status: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Appointment:
        return cls(
            id=str(data["id"]),
            calendar_id=str(data.get("calendarId", "")),
            contact_id=str(data.get("contactId", "")),
            start_time=datetime.fromisoformat(str(data["startTime"])),
            status=data.get("appointmentStatus") or data.get("status"),
            raw=dict(data),
        )


def _version_for(path: str) -> str:
    return CALENDARS_VERSION if path.startswith("/calendars") else CONTACTS_VERSION


class GhlClient:
    """One per (token, location). ``bucket`` may be shared by every client of a location."""

    def __init__(
        self,
        *,
        api_key: str,
        location_id: str,
        base_url: str = DEFAULT_BASE_URL,
        bucket: TokenBucket | None = None,
        retry_budget: RetryBudget | None = None,
        session: aiohttp.ClientSession | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("GHL api_key is empty: set GHL_API_KEY to a Private Integration Token")
        if not location_id:
            raise ValueError("GHL location_id is empty: set GHL_LOCATION_ID (the sub-account id)")
        self._api_key = api_key
        self.location_id = location_id
        self.base_url = base_url.rstrip("/")
        self.bucket = bucket or TokenBucket()
        self.retry_budget = retry_budget or RetryBudget()
        self._session = session
        self._own_session = session is None
        self.breaker = breaker or Breaker(GHL_BREAKER)
        self.breakers: dict[str, BreakerRecord] = {}  # endpoint group -> state, in-process

    def __repr__(self) -> str:  # never show the token
        return f"GhlClient(base_url={self.base_url!r}, location_id={self.location_id!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=20, enable_cleanup_closed=True)
            )
            self._own_session = True
        return self._session

    # -- transport -------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        *,
        policy: CallPolicy,
        idempotent: bool,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send one logical request under ``policy``; returns the decoded JSON body."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.deadline_s
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            group = "calendars" if path.startswith("/calendars") else "contacts"
            record = self.breakers.setdefault(group, BreakerRecord())
            admission = self.breaker.admit(record, time.time())
            if not admission.allowed:
                raise GhlUnavailableError(
                    f"GHL {group} API is failing, not sent (circuit {admission.reason})",
                    maybe_applied=False,
                )
            try:
                await self.bucket.acquire(
                    interactive=policy.interactive,
                    max_wait_s=max(0.0, remaining - 0.05),
                )
                timeout = min(policy.attempt_timeout_s, max(0.01, deadline - loop.time()))
                result = await self._attempt(method, path, params, body, timeout)
                self.retry_budget.record_success()
                self.breaker.record_success(record, time.time())
                return result
            except GhlRateLimitedError:
                raise  # feeds the rate limiter, not the breaker
            except (GhlUnavailableError, GhlServerError) as e:
                self.retry_budget.record_failure()
                kind = (
                    FailureKind.SERVER_ERROR
                    if isinstance(e, GhlServerError)
                    else FailureKind.TIMEOUT
                    if "no answer" in str(e)
                    else FailureKind.CONNECTION_ERROR
                )
                self.breaker.record_failure(
                    record, Failure(kind, str(e), status=e.status), time.time()
                )
                remaining = deadline - loop.time()
                retry_ok = (
                    idempotent
                    and attempt < policy.max_attempts
                    and remaining >= policy.min_remaining_to_retry_s
                    and (e.status is None or e.status in RETRYABLE_STATUSES)
                    and self.retry_budget.can_retry()
                )
                if not retry_ok:
                    if remaining <= 0 and isinstance(e, GhlUnavailableError):
                        raise GhlDeadlineError(
                            f"GHL {method} {path}: no answer within {policy.deadline_s:.2f}s",
                            maybe_applied=e.maybe_applied,
                        ) from e
                    raise
                pause = full_jitter(
                    attempt, base_s=policy.backoff_base_s, cap_s=policy.backoff_cap_s
                )
                log.info("ghl retry", method=method, path=path, attempt=attempt, error=str(e))
                await asyncio.sleep(
                    min(pause, max(0.0, remaining - policy.min_remaining_to_retry_s))
                )
            except GhlError:
                # 400/401/404/422: GHL answered, so it is up; the request itself was wrong
                self.breaker.record_success(record, time.time())
                raise

    async def _attempt(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any] | None,
        timeout_s: float,
    ) -> Any:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Version": _version_for(path),
            "Accept": "application/json",
        }
        sent_at = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                async with self._http().request(
                    method, self.base_url + path, params=params, json=body, headers=headers
                ) as resp:
                    text = await resp.text()
                    status = resp.status
                    resp_headers = resp.headers  # case-insensitive
        except TimeoutError as e:
            raise GhlUnavailableError(
                f"GHL {method} {path}: no answer after {timeout_s:.2f}s",
                maybe_applied=method != "GET",
            ) from e
        except aiohttp.ClientConnectorError as e:
            raise GhlUnavailableError(
                f"GHL {method} {path}: cannot connect to {self.base_url} ({e.os_error.strerror or e})",
                maybe_applied=False,
            ) from e
        except aiohttp.ClientError as e:
            raise GhlUnavailableError(
                f"GHL {method} {path}: connection lost before the answer ({type(e).__name__})",
                maybe_applied=method != "GET",
            ) from e
        if status != 429:  # a 429's Retry-After is authoritative (handled in _error_for)
            self.bucket.observe_headers(resp_headers)
        log.debug(
            "ghl response",
            method=method,
            path=path,
            status=status,
            ms=round((time.monotonic() - sent_at) * 1000, 1),
        )
        data = _decode(text)
        if status < 300:
            return data
        raise self._error_for(method, path, status, data, resp_headers)

    def _error_for(
        self, method: str, path: str, status: int, data: Any, headers: Mapping[str, str]
    ) -> GhlError:
        message = _message_of(data)
        where = f"GHL {method} {path}"
        if status in (401, 403):
            return GhlAuthError(
                f"{where}: {status} {message or 'unauthorized'}. The GHL token was rejected: set "
                f"GHL_API_KEY to a valid Private Integration Token (or a fresh OAuth access token; "
                f"they expire after a day) for location {self.location_id} with the contacts and "
                f"calendars scopes.",
                status=status,
            )
        if status == 404:
            return GhlNotFoundError(
                f"{where}: not found ({message or 'no such resource'})", status=404
            )
        if status == 422 or status == 400:
            msgs = _messages_of(data)
            fields = [m.split()[0] for m in msgs if m.split()] if status == 422 else []
            detail = "; ".join(msgs) or "invalid request"
            hint = f" (fields: {', '.join(fields)})" if fields else ""
            return GhlValidationError(
                f"{where}: {status} {detail}{hint}", status=status, fields=fields
            )
        if status == 429:
            wait = retry_after_from(headers, default_s=self.bucket.interval_s)
            self.bucket.block_for(wait)
            return GhlRateLimitedError(
                f"{where}: 429 rate limited, retry in {wait:.2f}s", retry_after_s=wait
            )
        if status >= 500:
            return GhlServerError(f"{where}: {status} {message or 'server error'}", status=status)
        return GhlError(f"{where}: unexpected {status} {message}", status=status)

    # -- contacts --------------------------------------------------------------------------
    async def find_duplicate(
        self,
        *,
        phone: str | None = None,
        email: str | None = None,
        policy: CallPolicy = INTERACTIVE_READ,
    ) -> Contact | None:
        if not phone and not email:
            raise ValueError("find_duplicate needs a phone or an email")
        params = {"locationId": self.location_id}
        if phone:
            params["number"] = phone
        if email:
            params["email"] = email
        data = await self.request(
            "GET", "/contacts/search/duplicate", policy=policy, idempotent=True, params=params
        )
        contact = data.get("contact") if isinstance(data, dict) else None
        return Contact.from_api(contact) if contact else None

    async def get_contact(
        self, contact_id: str, *, policy: CallPolicy = INTERACTIVE_READ
    ) -> Contact:
        data = await self.request("GET", f"/contacts/{contact_id}", policy=policy, idempotent=True)
        return Contact.from_api(data["contact"])

    async def upsert_contact(
        self, fields: Mapping[str, Any], *, policy: CallPolicy = BACKGROUND
    ) -> tuple[Contact, bool]:
        """Create or update by GHL's duplicate rules. Note: a ``tags`` field *replaces* all tags,
        so callers that must keep existing tags leave it out and use :meth:`add_tags`."""
        body = {**fields, "locationId": self.location_id}
        data = await self.request(
            "POST", "/contacts/upsert", policy=policy, idempotent=True, body=body
        )
        return Contact.from_api(data["contact"]), bool(data.get("new"))

    async def add_tags(
        self, contact_id: str, tags: list[str], *, policy: CallPolicy = BACKGROUND
    ) -> list[str]:
        data = await self.request(
            "POST",
            f"/contacts/{contact_id}/tags",
            policy=policy,
            idempotent=True,
            body={"tags": tags},
        )
        return [str(t) for t in data.get("tags", [])]

    async def remove_tags(
        self, contact_id: str, tags: list[str], *, policy: CallPolicy = BACKGROUND
    ) -> list[str]:
        data = await self.request(
            "DELETE",
            f"/contacts/{contact_id}/tags",
            policy=policy,
            idempotent=True,
            body={"tags": tags},
        )
        return [str(t) for t in data.get("tags", [])]

    async def add_note(self, contact_id: str, body: str, *, policy: CallPolicy = BACKGROUND) -> str:
        """Not idempotent: a retry after a lost answer makes a second note. Check first."""
        data = await self.request(
            "POST",
            f"/contacts/{contact_id}/notes",
            policy=policy,
            idempotent=False,
            body={"body": body},
        )
        return str(data["note"]["id"])

    async def list_notes(
        self, contact_id: str, *, policy: CallPolicy = BACKGROUND
    ) -> list[dict[str, Any]]:
        data = await self.request(
            "GET", f"/contacts/{contact_id}/notes", policy=policy, idempotent=True
        )
        return list(data.get("notes", []))

    async def contact_appointments(
        self, contact_id: str, *, policy: CallPolicy = INTERACTIVE_CHECK
    ) -> list[Appointment]:
        data = await self.request(
            "GET", f"/contacts/{contact_id}/appointments", policy=policy, idempotent=True
        )
        return [Appointment.from_api(e) for e in data.get("events", [])]

    # -- calendars -------------------------------------------------------------------------
    async def free_slots(
        self,
        calendar_id: str,
        start: datetime,
        end: datetime,
        timezone: str,
        *,
        policy: CallPolicy = INTERACTIVE_READ,
    ) -> list[datetime]:
        """Free slot start times between ``start`` and ``end`` (at most 31 days apart)."""
        ZoneInfo(timezone)  # raises for an unknown zone before we spend a request
        params = {
            "startDate": str(int(start.timestamp() * 1000)),
            "endDate": str(int(end.timestamp() * 1000)),
            "timezone": timezone,
        }
        data = await self.request(
            "GET",
            f"/calendars/{calendar_id}/free-slots",
            policy=policy,
            idempotent=True,
            params=params,
        )
        slots: list[datetime] = []
        for key, day in (data or {}).items():
            if not isinstance(day, dict) or key == "traceId":
                continue
            for s in day.get("slots", []):
                slots.append(datetime.fromisoformat(str(s)))
        return sorted(slots)

    async def create_appointment(
        self,
        *,
        calendar_id: str,
        contact_id: str,
        start: datetime,
        end: datetime | None = None,
        title: str | None = None,
        assigned_user_id: str | None = None,
        policy: CallPolicy = INTERACTIVE_WRITE,
    ) -> Appointment:
        """Not idempotent: never retried here. After a lost answer, look at
        :meth:`contact_appointments` before sending it again."""
        if start.tzinfo is None:
            raise ValueError("appointment start must carry a time zone offset")
        body: dict[str, Any] = {
            "calendarId": calendar_id,
            "locationId": self.location_id,
            "contactId": contact_id,
            "startTime": start.isoformat(),
        }
        if end is not None:
            body["endTime"] = end.isoformat()
        if title:
            body["title"] = title
        if assigned_user_id:
            body["assignedUserId"] = assigned_user_id
        data = await self.request(
            "POST", "/calendars/events/appointments", policy=policy, idempotent=False, body=body
        )
        return Appointment.from_api(data)


def _decode(text: str) -> Any:
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"message": text[:200]}


def _messages_of(data: Any) -> list[str]:
    if not isinstance(data, dict):
        return []
    msg = data.get("message")
    if isinstance(msg, list):
        return [str(m) for m in msg]
    if isinstance(msg, str):
        return [msg]
    return []


def _message_of(data: Any) -> str:
    return "; ".join(_messages_of(data))
