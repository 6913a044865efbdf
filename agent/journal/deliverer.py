"""Sends the outbox to GHL until GHL accepts each item, exactly once.

* Retries use full jitter (``U(0, min(cap, base*2^n))``, tenacity's ``wait_random_exponential``)
  and never come sooner than a 429's Retry-After; there is no attempt limit for failures that
  can heal (429, 5xx, timeouts, resets) because the journal is the only copy of the write.
* Delivery is recorded in the same SQLite file, atomically, the moment GHL answers.
* Idempotent writes (upsert, tags) are simply sent again. Notes and appointments are not
  idempotent: before one is sent the item is durably flagged ``maybe_sent``; an item carrying
  that flag (a lost answer, a 5xx, or a crash mid-request) is first looked up in GHL (the note's
  reference line, the appointment's calendar and start) and only sent if it is not there.
* A lease in the journal keeps two processes from sending the same item at once.
* Calls whose owner is gone (lease expired, or process dead) are closed here and their
  transcripts queued (crash recovery), whatever host they ran on; calls spooled because their
  journal was unwritable are imported first.
* Nothing blocks the outbox: a damaged item is quarantined by the store, a malformed one here,
  a call that cannot be finished is logged and retried next pass, and every other item is sent.
  A journal that fails as a whole is logged once per fault (and when it recovers) and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from agent.crm.backoff import full_jitter
from agent.crm.errors import (
    GhlAuthError,
    GhlError,
    GhlNotFoundError,
    GhlRateLimitedError,
    GhlValidationError,
)
from agent.crm.ghl_client import BACKGROUND, CallPolicy, GhlClient
from agent.crm.validation import split_name
from agent.journal import outbox, spool
from agent.journal.call_journal import JOURNAL_FAULTS
from agent.journal.finish import RECOVERED_REASON, finish_call
from agent.journal.metrics import FAULTS
from agent.journal.store import JournalStore, OutboxItem

log = structlog.get_logger(__name__)


class PermanentDeliveryError(Exception):
    """The item can never be delivered as it is (no contact to attach it to...)."""


@dataclass
class PassReport:
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    waiting: int = 0  # pending but not yet due (or blocked behind an earlier item)
    recovered_calls: int = 0
    imported_spools: int = 0
    quarantined: int = 0
    next_due_at: float | None = None


class OutboxDeliverer:
    def __init__(
        self,
        store: JournalStore,
        client: GhlClient,
        *,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        lease_s: float = 60.0,
        poll_interval_s: float = 2.0,
        auth_pause_s: float = 60.0,
        rng: random.Random | None = None,
        policy: CallPolicy = BACKGROUND,
        spool_dirs: list[Path] | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.client = client
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.auth_pause_s = auth_pause_s
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._paused_until = 0.0
        self._pass_lock = asyncio.Lock()
        self.idle = asyncio.Event()
        self.spool_dirs = (
            spool_dirs if spool_dirs is not None else spool.spool_dirs(store.path.parent)
        )
        self._fault: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="ghl-outbox-deliverer")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """New work was queued: deliver now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                report = await self.deliver_once()
            except JOURNAL_FAULTS as e:
                self._journal_failed(e)
                report = PassReport()
            except Exception:
                log.exception("outbox pass failed; retrying")
                report = PassReport()
            else:
                self._journal_recovered()
            now = time.time()
            delay = self.poll_interval_s
            if report.next_due_at is not None:
                delay = min(delay, max(0.0, report.next_due_at - now))
            if self._paused_until > now:
                delay = max(delay, self._paused_until - now)
            if report.waiting == 0 and report.next_due_at is None:
                self.idle.set()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def drain(self, timeout_s: float) -> bool:
        """Deliver until nothing is pending or ``timeout_s`` passes; True when all done."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.deliver_once()
                pending = self.store.pending()
            except JOURNAL_FAULTS as e:  # e.g. the disk is full: keep trying until the deadline
                self._journal_failed(e)
                if deadline - time.monotonic() <= 0:
                    return False
                await asyncio.sleep(self.poll_interval_s)
                continue
            self._journal_recovered()
            if not pending:
                return True
            now = time.time()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            next_due = min(p.next_attempt_at for p in pending)
            await asyncio.sleep(min(left, max(0.01, next_due - now), self.poll_interval_s))

    # -- one pass --------------------------------------------------------------------------
    async def deliver_once(self) -> PassReport:
        async with self._pass_lock:
            return await self._pass()

    def _journal_failed(self, error: BaseException) -> None:
        FAULTS.labels(operation="deliver").inc()
        reason = f"{type(error).__name__}: {error}"
        if self._fault is None:
            log.error(
                "JOURNAL FAULT: the outbox cannot be read or updated; delivery resumes when "
                "the journal works again",
                path=str(self.store.path),
                error=reason,
            )
        self._fault = reason

    def _journal_recovered(self) -> None:
        if self._fault is not None:
            log.warning("journal works again: delivery resumed", after=self._fault)
            self._fault = None

    async def _pass(self) -> PassReport:
        report = PassReport()
        report.imported_spools = spool.import_all(self.store, self.spool_dirs, self.store.read_keys)
        for call_id in self.store.abandoned_calls():
            try:
                if finish_call(self.store, call_id, reason=RECOVERED_REASON):
                    report.recovered_calls += 1
            except JOURNAL_FAULTS:
                raise
            except Exception:  # one call's bug must not stop the others' delivery
                log.exception("could not finish an abandoned call; next pass", call_id=call_id)
        blocked: set[str] = set()
        for item in self.store.pending():
            problem = outbox.malformed(item.op, item.payload)
            if problem is not None:
                self.store.quarantine_item(item, problem)
                report.quarantined += 1
                continue
            now = time.time()
            key = item.call_id or item.uid
            if key in blocked or item.next_attempt_at > now or self._paused_until > now:
                report.waiting += 1
                blocked.add(key)
                due = max(item.next_attempt_at, self._paused_until)
                report.next_due_at = (
                    due if report.next_due_at is None else min(report.next_due_at, due)
                )
                continue
            if not self.store.claim(item.id, self.lease_s):
                report.waiting += 1
                blocked.add(key)
                continue
            outcome = await self._attempt(item)
            if outcome == "delivered":
                report.delivered += 1
            elif outcome == "failed":
                report.failed += 1
            else:
                report.retried += 1
                blocked.add(key)
                nxt = self._next_attempt_of(item.id)
                report.next_due_at = (
                    nxt if report.next_due_at is None else min(report.next_due_at, nxt)
                )
                if outcome == "stop":
                    break
        return report

    def _next_attempt_of(self, item_id: int) -> float:
        for p in self.store.pending():
            if p.id == item_id:
                return p.next_attempt_at
        return time.time()

    async def _attempt(self, item: OutboxItem) -> str:
        log_ctx = {
            "item": item.id,
            "op": item.op,
            "call_id": item.call_id,
            "attempt": item.attempts + 1,
        }
        maybe_sent = item.maybe_sent
        try:
            result, maybe_sent = await self._send(item)
        except GhlRateLimitedError as e:
            wait = max(e.retry_after_s or 0.0, self._jitter(item.attempts + 1))
            self.store.mark_retry(
                item.id, str(e), time.time() + wait, maybe_sent=maybe_sent or item.maybe_sent
            )
            log.warning("outbox item rate limited", wait_s=round(wait, 3), **log_ctx)
            return "stop"  # everything else would hit the same limit
        except GhlAuthError as e:
            self._paused_until = time.time() + self.auth_pause_s
            # the pause lives in memory: a restart with a corrected token delivers at once
            self.store.mark_retry(item.id, str(e), time.time(), maybe_sent=item.maybe_sent)
            log.error(
                "outbox paused: GHL rejected the token", pause_s=self.auth_pause_s, error=str(e)
            )
            return "stop"
        except (GhlValidationError, PermanentDeliveryError) as e:
            self.store.mark_failed(item.id, str(e))
            log.error("outbox item refused by GHL; giving up on it", error=str(e), **log_ctx)
            self._after_failure(item, str(e))
            return "failed"
        except GhlNotFoundError as e:
            self.store.mark_failed(item.id, str(e))
            log.error("outbox item's contact or calendar is gone", error=str(e), **log_ctx)
            return "failed"
        except GhlError as e:
            wait = self._jitter(item.attempts + 1)
            sent = item.maybe_sent or maybe_sent or e.maybe_applied
            self.store.mark_retry(item.id, str(e), time.time() + wait, maybe_sent=sent)
            log.info("outbox item will be retried", wait_s=round(wait, 3), error=str(e), **log_ctx)
            return "retry"
        except _MaybeSent as wrapped:
            e2 = wrapped.error
            wait = self._jitter(item.attempts + 1)
            if isinstance(e2, GhlRateLimitedError):
                wait = max(wait, e2.retry_after_s or 0.0)
            self.store.mark_retry(item.id, str(e2), time.time() + wait, maybe_sent=True)
            log.info(
                "outbox write may have landed; will check before retrying", error=str(e2), **log_ctx
            )
            return "retry"
        except Exception as e:  # a bug must not lose the item: keep it and back off
            wait = self._jitter(item.attempts + 1)
            self.store.mark_retry(
                item.id, f"{type(e).__name__}: {e}", time.time() + wait, maybe_sent=True
            )
            log.exception("outbox item crashed the deliverer; will retry", **log_ctx)
            return "retry"
        self.store.mark_delivered(item.id, result)
        log.info("outbox item delivered", result=result, **log_ctx)
        return "delivered"

    def _jitter(self, attempt: int) -> float:
        return full_jitter(
            attempt, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s, rng=self._rng
        )

    def _after_failure(self, item: OutboxItem, error: str) -> None:
        """A refused booking becomes a note, so a person can call the lead back."""
        if item.op != outbox.BOOK_APPOINTMENT:
            return
        p = item.payload
        body = (
            f"The caller asked to book {p.get('start')} on calendar {p.get('calendar_id')}, "
            f"but GHL refused the booking ({error}). Please call them back to confirm a time."
        )
        self.store.enqueue(item.call_id, outbox.add_note(dict(p.get("contact") or {}), body))

    # -- sending ---------------------------------------------------------------------------
    async def _send(self, item: OutboxItem) -> tuple[str | None, bool]:
        p = item.payload
        if item.op == outbox.UPSERT_CONTACT:
            contact, _new = await self.client.upsert_contact(p["fields"], policy=self.policy)
            if p.get("tags"):
                await self.client.add_tags(contact.id, list(p["tags"]), policy=self.policy)
            if item.call_id:
                self.store.update_call_info(item.call_id, contact_id=contact.id)
            return contact.id, False
        if item.op == outbox.ADD_TAGS:
            cid = await self._resolve(item)
            await self.client.add_tags(cid, list(p["tags"]), policy=self.policy)
            return cid, False
        if item.op == outbox.ADD_NOTE:
            cid = await self._resolve(item)
            marker = outbox.note_marker(item.uid)
            if item.maybe_sent:
                for note in await self.client.list_notes(cid, policy=self.policy):
                    if marker in str(note.get("body", "")):
                        log.info("note was already delivered (lost answer)", item=item.id)
                        return str(note.get("id")), True
            self.store.mark_maybe_sent(item.id, True)
            try:
                note_id = await self.client.add_note(
                    cid, outbox.with_marker(str(p["body"]), item.uid), policy=self.policy
                )
            except GhlError as e:
                if e.maybe_applied:
                    raise _MaybeSent(e) from e
                raise
            return note_id, True
        if item.op == outbox.BOOK_APPOINTMENT:
            cid = await self._resolve(item)
            start = datetime.fromisoformat(str(p["start"]))
            if item.maybe_sent:
                existing = await self._find_appointment(cid, str(p["calendar_id"]), start)
                if existing is not None:
                    return existing, True
            self.store.mark_maybe_sent(item.id, True)
            try:
                appt = await self.client.create_appointment(
                    calendar_id=str(p["calendar_id"]),
                    contact_id=cid,
                    start=start,
                    title=p.get("title"),
                    policy=self.policy,
                )
            except GhlError as e:
                if e.maybe_applied:
                    raise _MaybeSent(e) from e
                raise
            return appt.id, True
        raise PermanentDeliveryError(f"unknown outbox operation {item.op!r}")

    async def _find_appointment(
        self, contact_id: str, calendar_id: str, start: datetime
    ) -> str | None:
        for appt in await self.client.contact_appointments(contact_id, policy=self.policy):
            if appt.calendar_id == calendar_id and appt.start_time == start:
                return appt.id
        return None

    async def _resolve(self, item: OutboxItem) -> str:
        ref: dict[str, Any] = dict(item.payload.get("contact") or {})
        if ref.get("contact_id"):
            return str(ref["contact_id"])
        info = self.store.call_info(item.call_id) if item.call_id else {}
        if info.get("contact_id"):
            return str(info["contact_id"])
        phone = ref.get("phone") or info.get("phone")
        email = ref.get("email") or info.get("email")
        if not phone and not email:
            raise PermanentDeliveryError(
                "no contact to attach this to: the call has no contact id, phone or email"
            )
        fields: dict[str, Any] = {"phone": phone, "email": email, "source": "voice agent"}
        fields.update(split_name(ref.get("name") or info.get("name")))
        contact, _new = await self.client.upsert_contact(
            {k: v for k, v in fields.items() if v}, policy=self.policy
        )
        if item.call_id:
            self.store.update_call_info(item.call_id, contact_id=contact.id)
        return contact.id


class _MaybeSent(Exception):  # noqa: N818 - internal signal, not an error type
    """A non-idempotent write failed in a way that may have applied it."""

    def __init__(self, error: GhlError) -> None:
        super().__init__(str(error))
        self.error = error
