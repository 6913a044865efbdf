"""GoHighLevel (LeadConnector API v2) simulator: contacts, tags, notes, free slots, appointments.

It answers like GHL does where that is documented (shared/reference/ghl_api.md): the
``Version`` header per service, ``locationId`` where GHL requires it, the duplicate lookup's
``number`` parameter, upsert's "tags overwrite" rule, 201 vs 200 codes, the 401/422 error bodies
and the ``X-RateLimit-*`` headers with a real 100-per-10-s window. Where GHL's behaviour is not
documented (the 404 and 429 bodies, the Version-header error) the simulator picks a NestJS-style
body and says so here.

Faults (``plugins/sim/faults.py``) map to HTTP like this: STATUS -> that status with a GHL body
(429 with rate-limit headers and Retry-After when given); QUOTA -> 429 with the daily counter at
zero; RESET -> connection dropped before anything is done; HANG -> never answers; SLOW_FIRST ->
answers after ``delay_s``; CUT -> **lost answer**: the write is committed, then the connection is
dropped before the response; MALFORMED -> 200 with a body that is not JSON; EMPTY -> 200 ``{}``;
IN_BAND_ERROR -> 200 whose JSON is an error object.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from plugins.sim.faults import Fault, FaultType, SimState
from plugins.sim.http_common import HttpSimulator, run_cli

CONTACTS_VERSION = "2021-07-28"
CALENDARS_VERSION = "2021-04-15"

Result = tuple[int, Any]
Handler = Callable[[web.Request, Any], Awaitable[Result]]


def _err(status: int, message: str | list[str], error: str | None = None) -> Result:
    body: dict[str, Any] = {"statusCode": status, "message": message}
    if error:
        body["error"] = error
    return status, body


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class CalendarConfig:
    timezone: str = "America/New_York"
    open_hour: int = 9
    close_hour: int = 17
    slot_minutes: int = 30
    weekdays_only: bool = True


class GhlSimulator(HttpSimulator):
    name = "ghl"

    def __init__(
        self,
        state: SimState | None = None,
        *,
        api_key: str = "sim-key",
        location_id: str = "sim-location",
        calendars: dict[str, CalendarConfig] | None = None,
        allow_duplicates: bool = False,
        burst_limit: int = 100,
        burst_interval_ms: int = 10_000,
        daily_limit: int = 200_000,
    ) -> None:
        super().__init__(state)
        self.api_key = api_key
        self.location_id = location_id
        self.calendars = calendars if calendars is not None else {"sim-calendar": CalendarConfig()}
        self.allow_duplicates = allow_duplicates
        self.burst_limit = burst_limit
        self.burst_interval_ms = burst_interval_ms
        self.daily_limit = daily_limit
        self.contacts: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, list[dict[str, Any]]] = {}
        self.appointments: list[dict[str, Any]] = []
        self._window: list[float] = []
        self._daily_used = 0
        self._ids = itertools.count(1)

    # -- test/operator helpers ---------------------------------------------------------------
    def add_contact(self, **fields: Any) -> dict[str, Any]:
        contact = self._new_contact(fields)
        return contact

    def notes_for(self, contact_id: str) -> list[dict[str, Any]]:
        return list(self.notes.get(contact_id, []))

    def appointments_for(self, contact_id: str) -> list[dict[str, Any]]:
        return [a for a in self.appointments if a["contactId"] == contact_id]

    def find_by_phone(self, phone: str) -> dict[str, Any] | None:
        return next((c for c in self.contacts.values() if c.get("phone") == phone), None)

    # -- routes ------------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        c, k = CONTACTS_VERSION, CALENDARS_VERSION
        r = app.router
        r.add_get("/contacts/search/duplicate", self._wrap(self._duplicate, c))
        r.add_post("/contacts/upsert", self._wrap(self._upsert, c))
        r.add_post("/contacts/", self._wrap(self._create, c))
        r.add_get("/contacts/{id}", self._wrap(self._get_contact, c))
        r.add_put("/contacts/{id}", self._wrap(self._update, c))
        r.add_post("/contacts/{id}/tags", self._wrap(self._add_tags, c))
        r.add_delete("/contacts/{id}/tags", self._wrap(self._remove_tags, c))
        r.add_post("/contacts/{id}/notes", self._wrap(self._add_note, c))
        r.add_get("/contacts/{id}/notes", self._wrap(self._list_notes, c))
        r.add_get("/contacts/{id}/appointments", self._wrap(self._contact_appointments, c))
        r.add_get("/calendars/{id}/free-slots", self._wrap(self._free_slots, k))
        r.add_post("/calendars/events/appointments", self._wrap(self._create_appointment, k))
        r.add_get("/locations/{id}", self._wrap(self._get_location, c))

    def _rate_headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit-Daily": str(self.daily_limit),
            "X-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self._daily_used)),
            "X-RateLimit-Interval-Milliseconds": str(self.burst_interval_ms),
            "X-RateLimit-Max": str(self.burst_limit),
            "X-RateLimit-Remaining": str(max(0, self.burst_limit - len(self._window))),
        }

    def _count_request(self) -> bool:
        """Slide the burst window; False when this request is over GHL's limit."""
        now = time.monotonic()
        horizon = now - self.burst_interval_ms / 1000.0
        self._window = [t for t in self._window if t > horizon]
        if len(self._window) >= self.burst_limit or self._daily_used >= self.daily_limit:
            return False
        self._window.append(now)
        self._daily_used += 1
        return True

    def _wrap(
        self, handler: Handler, version: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            fault = self.state.plan.take(1.0)
            self.record(request, fault, request.query_string)
            if fault is not None:
                early = await self._fault_before(request, fault)
                if early is not None:
                    return early
            auth = request.headers.get("Authorization", "")
            if auth != f"Bearer {self.api_key}":
                return self._json(
                    *_err(401, "Invalid token: access token is invalid", "Unauthorized")
                )
            if request.headers.get("Version") != version:
                return self._json(
                    *_err(
                        400,
                        f"Version header is missing or not supported for this API: expected {version}",
                    )
                )
            if not self._count_request():
                return self._json(*_err(429, "Too many requests"), headers={"Retry-After": "10"})
            body: Any = None
            if request.can_read_body:
                try:
                    body = await request.json()
                except json.JSONDecodeError:
                    return self._json(*_err(400, "Unexpected token in JSON body"))
            status, payload = await handler(request, body)
            if fault is not None and fault.type is FaultType.CUT:
                self.reset(request)  # committed above: the client never hears about it
                return web.Response(status=500)
            if fault is not None and fault.type is FaultType.MALFORMED:
                return web.Response(
                    status=200, text='{"contact": {"id": ', content_type="application/json"
                )
            if fault is not None and fault.type is FaultType.EMPTY:
                return self._json(200, {})
            if fault is not None and fault.type is FaultType.IN_BAND_ERROR:
                return self._json(
                    200, {"statusCode": 500, "message": fault.message or "Internal error"}
                )
            return self._json(status, payload)

        return route

    async def _fault_before(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        if fault.type is FaultType.RESET:
            self.reset(request)
            return web.Response(status=500)
        if fault.type is FaultType.HANG:
            return await self.hang(request)
        if fault.type is FaultType.SLOW_FIRST:
            await self.park(fault.delay_s)
            return None
        if fault.type is FaultType.STATUS:
            status = fault.status or 500
            headers: dict[str, str] = {}
            if status == 429:
                headers["X-RateLimit-Remaining"] = "0"
                if fault.retry_after_s is not None:
                    headers["Retry-After"] = f"{fault.retry_after_s:g}"
            messages: dict[int, tuple[str | list[str], str | None]] = {
                401: ("Invalid token: access token is invalid", "Unauthorized"),
                403: ("The token is not authorized for this scope.", "Forbidden"),
                404: ("Not found", "Not Found"),
                422: (["email must be an email"], "Unprocessable Entity"),
                429: ("Too many requests", None),
            }
            msg, err = messages.get(status, ("Internal server error", None))
            return self._json(*_err(status, fault.message or msg, err), headers=headers)
        if fault.type is FaultType.QUOTA:
            return self._json(
                *_err(429, fault.message or "Daily request limit reached"),
                headers={"X-RateLimit-Daily-Remaining": "0", "X-RateLimit-Remaining": "0"},
            )
        return None  # CUT / MALFORMED / EMPTY / IN_BAND_ERROR act after the handler

    def _json(
        self, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> web.Response:
        all_headers = self._rate_headers()
        all_headers.update(headers or {})
        return web.json_response(payload, status=status, headers=all_headers)

    # -- contacts ----------------------------------------------------------------------------
    def _new_contact(self, fields: dict[str, Any]) -> dict[str, Any]:
        cid = f"ct_{next(self._ids):05d}{uuid.uuid4().hex[:6]}"
        contact: dict[str, Any] = {
            "id": cid,
            "locationId": self.location_id,
            "tags": [],
            "dateAdded": _now_iso(),
        }
        self._apply(contact, fields)
        self.contacts[cid] = contact
        return contact

    @staticmethod
    def _apply(contact: dict[str, Any], fields: dict[str, Any]) -> None:
        for key, value in fields.items():
            if key in ("locationId", "createNewIfDuplicateAllowed", "id"):
                continue
            if key == "email" and isinstance(value, str):
                value = value.lower()
            if key == "tags":
                value = list(dict.fromkeys(str(t).lower() for t in value or []))
            contact[key] = value
        first, last = contact.get("firstName"), contact.get("lastName")
        if first or last:
            contact["contactName"] = " ".join(p for p in (first, last) if p)
        contact["dateUpdated"] = _now_iso()

    def _match(
        self, email: str | None, phone: str | None
    ) -> tuple[dict[str, Any] | None, str | None]:
        if email:
            for c in self.contacts.values():
                if c.get("email") == email.lower():
                    return c, "email"
        if phone:
            for c in self.contacts.values():
                if c.get("phone") == phone:
                    return c, "phone"
        return None, None

    def _check_location(self, value: Any) -> Result | None:
        if not value:
            return _err(422, ["locationId should not be empty"], "Unprocessable Entity")
        if value != self.location_id:
            return _err(403, "The token does not have access to this location.", "Forbidden")
        return None

    @staticmethod
    def _check_fields(body: dict[str, Any]) -> Result | None:
        problems = []
        email = body.get("email")
        if email is not None and (not isinstance(email, str) or "@" not in email):
            problems.append("email must be an email")
        tags = body.get("tags")
        if tags is not None and not isinstance(tags, list):
            problems.append("tags must be an array")
        if problems:
            return _err(422, problems, "Unprocessable Entity")
        return None

    async def _duplicate(self, request: web.Request, _: Any) -> Result:
        bad = self._check_location(request.query.get("locationId"))
        if bad:
            return bad
        contact, _field = self._match(request.query.get("email"), request.query.get("number"))
        return 200, {"contact": contact, "traceId": uuid.uuid4().hex}

    async def _create(self, _: web.Request, body: Any) -> Result:
        if not isinstance(body, dict):
            return _err(422, ["body must be an object"], "Unprocessable Entity")
        bad = self._check_location(body.get("locationId")) or self._check_fields(body)
        if bad:
            return bad
        existing, matched = self._match(body.get("email"), body.get("phone"))
        if existing and not self.allow_duplicates:
            return 400, {
                "statusCode": 400,
                "message": "This location does not allow duplicated contacts.",
                "meta": {"contactId": existing["id"], "matchingField": matched},
            }
        return 201, {"contact": self._new_contact(body)}

    async def _upsert(self, _: web.Request, body: Any) -> Result:
        if not isinstance(body, dict):
            return _err(422, ["body must be an object"], "Unprocessable Entity")
        bad = self._check_location(body.get("locationId")) or self._check_fields(body)
        if bad:
            return bad
        existing, _field = self._match(body.get("email"), body.get("phone"))
        if existing is None or (self.allow_duplicates and body.get("createNewIfDuplicateAllowed")):
            return 200, {
                "new": True,
                "contact": self._new_contact(body),
                "traceId": uuid.uuid4().hex,
            }
        self._apply(existing, body)  # tags, when given, overwrite (GHL's documented behaviour)
        return 200, {"new": False, "contact": existing, "traceId": uuid.uuid4().hex}

    def _contact_or_404(self, request: web.Request) -> dict[str, Any] | Result:
        contact = self.contacts.get(request.match_info["id"])
        if contact is None:
            return _err(404, "Contact not found", "Not Found")
        return contact

    async def _get_location(self, request: web.Request, _: Any) -> Result:
        """What ``doctor`` reads to check the token against the configured location."""
        location_id = request.match_info["id"]
        if location_id != self.location_id:
            return _err(404, "Location not found", "Not Found")
        return 200, {"location": {"id": location_id, "name": "Simulated Sub-account"}}

    async def _get_contact(self, request: web.Request, _: Any) -> Result:
        found = self._contact_or_404(request)
        if isinstance(found, tuple):
            return found
        return 200, {"contact": found}

    async def _update(self, request: web.Request, body: Any) -> Result:
        found = self._contact_or_404(request)
        if isinstance(found, tuple):
            return found
        if not isinstance(body, dict):
            return _err(422, ["body must be an object"], "Unprocessable Entity")
        bad = self._check_fields(body)
        if bad:
            return bad
        self._apply(found, body)
        return 200, {"succeded": True, "contact": found}

    @staticmethod
    def _tags_of(body: Any) -> list[str] | Result:
        tags = body.get("tags") if isinstance(body, dict) else None
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return _err(422, ["tags must be an array of strings"], "Unprocessable Entity")
        return [t.lower() for t in tags]

    async def _add_tags(self, request: web.Request, body: Any) -> Result:
        found = self._contact_or_404(request)
        if isinstance(found, tuple):
            return found
        tags = self._tags_of(body)
        if isinstance(tags, tuple):
            return tags
        found["tags"] = list(dict.fromkeys([*found["tags"], *tags]))
        return 201, {"tags": found["tags"]}

    async def _remove_tags(self, request: web.Request, body: Any) -> Result:
        found = self._contact_or_404(request)
        if isinstance(found, tuple):
            return found
        tags = self._tags_of(body)
        if isinstance(tags, tuple):
            return tags
        found["tags"] = [t for t in found["tags"] if t not in tags]
        return 200, {"tags": found["tags"]}

    async def _add_note(self, request: web.Request, body: Any) -> Result:
        found = self._contact_or_404(request)
        if isinstance(found, tuple):
            return found
        text = body.get("body") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            return _err(422, ["body should not be empty"], "Unprocessable Entity")
        note = {
            "id": f"nt_{uuid.uuid4().hex[:12]}",
            "body": text,
            "contactId": found["id"],
            "dateAdded": _now_iso(),
        }
        self.notes.setdefault(found["id"], []).append(note)
        return 201, {"note": note}

    async def _list_notes(self, request: web.Request, _: Any) -> Result:
        found = self._contact_or_404(request)
        if isinstance(found, tuple):
            return found
        return 200, {"notes": self.notes_for(found["id"])}

    async def _contact_appointments(self, request: web.Request, _: Any) -> Result:
        found = self._contact_or_404(request)
        if isinstance(found, tuple):
            return found
        return 200, {"events": self.appointments_for(found["id"]), "traceId": uuid.uuid4().hex}

    # -- calendars ---------------------------------------------------------------------------
    def _slot_starts(self, calendar_id: str, start: datetime, end: datetime) -> list[datetime]:
        cfg = self.calendars[calendar_id]
        tz = ZoneInfo(cfg.timezone)
        now = datetime.now(UTC)
        booked = {
            datetime.fromisoformat(a["startTime"]).timestamp()
            for a in self.appointments
            if a["calendarId"] == calendar_id and a["appointmentStatus"] != "cancelled"
        }
        out: list[datetime] = []
        day: date = start.astimezone(tz).date()
        while day <= end.astimezone(tz).date():
            if not (cfg.weekdays_only and day.weekday() >= 5):
                t = datetime(day.year, day.month, day.day, cfg.open_hour, tzinfo=tz)
                close = datetime(day.year, day.month, day.day, cfg.close_hour, tzinfo=tz)
                while t < close:
                    if start <= t <= end and t > now and t.timestamp() not in booked:
                        out.append(t)
                    t += timedelta(minutes=cfg.slot_minutes)
            day += timedelta(days=1)
        return out

    async def _free_slots(self, request: web.Request, _: Any) -> Result:
        calendar_id = request.match_info["id"]
        if calendar_id not in self.calendars:
            return _err(404, "Calendar not found", "Not Found")
        try:
            start_ms = int(request.query["startDate"])
            end_ms = int(request.query["endDate"])
        except (KeyError, ValueError):
            return _err(
                422,
                ["startDate must be a number", "endDate must be a number"],
                "Unprocessable Entity",
            )
        tz_name = request.query.get("timezone") or self.calendars[calendar_id].timezone
        try:
            tz = ZoneInfo(tz_name)
        except (ZoneInfoNotFoundError, ValueError):
            return _err(422, ["timezone must be a valid IANA time zone"], "Unprocessable Entity")
        if end_ms < start_ms or end_ms - start_ms > 31 * 86_400_000:
            return _err(
                422, ["endDate must be after startDate and within 31 days"], "Unprocessable Entity"
            )
        start = datetime.fromtimestamp(start_ms / 1000, UTC)
        end = datetime.fromtimestamp(end_ms / 1000, UTC)
        days: dict[str, Any] = {}
        for slot in self._slot_starts(calendar_id, start, end):
            local = slot.astimezone(tz)
            days.setdefault(local.date().isoformat(), {"slots": []})["slots"].append(
                local.isoformat()
            )
        days["traceId"] = uuid.uuid4().hex
        return 200, days

    async def _create_appointment(self, _: web.Request, body: Any) -> Result:
        if not isinstance(body, dict):
            return _err(422, ["body must be an object"], "Unprocessable Entity")
        missing = [
            f"{f} should not be empty"
            for f in ("calendarId", "contactId", "startTime")
            if not body.get(f)
        ]
        if missing:
            return _err(422, missing, "Unprocessable Entity")
        bad = self._check_location(body.get("locationId"))
        if bad:
            return bad
        calendar_id = str(body["calendarId"])
        if calendar_id not in self.calendars:
            return _err(404, "Calendar not found", "Not Found")
        if body["contactId"] not in self.contacts:
            return _err(400, "Contact not found")
        try:
            start = datetime.fromisoformat(str(body["startTime"]))
            if start.tzinfo is None:
                raise ValueError
        except ValueError:
            return _err(
                422,
                ["startTime must be a valid ISO 8601 date string with offset"],
                "Unprocessable Entity",
            )
        cfg = self.calendars[calendar_id]
        if not body.get("ignoreFreeSlotValidation"):
            free = self._slot_starts(
                calendar_id, start - timedelta(minutes=1), start + timedelta(minutes=1)
            )
            if not any(s.timestamp() == start.timestamp() for s in free):
                return _err(400, "The slot you have selected is no longer available.")
        end = (
            datetime.fromisoformat(str(body["endTime"]))
            if body.get("endTime")
            else start + timedelta(minutes=cfg.slot_minutes)
        )
        event = {
            "id": f"ap_{uuid.uuid4().hex[:12]}",
            "calendarId": calendar_id,
            "locationId": self.location_id,
            "contactId": body["contactId"],
            "startTime": start.isoformat(),
            "endTime": end.isoformat(),
            "title": body.get("title") or "Appointment",
            "appointmentStatus": body.get("appointmentStatus") or "confirmed",
            "assignedUserId": body.get("assignedUserId"),
            "dateAdded": _now_iso(),
        }
        self.appointments.append(event)
        return 200, event


def main(argv: list[str] | None = None) -> int:
    return run_cli(GhlSimulator, argv, "GoHighLevel API v2 simulator (api key: sim-key)")


if __name__ == "__main__":
    raise SystemExit(main())
