"""The GHL client against the simulator: headers, duplicate semantics, errors, deadlines, limits."""

from __future__ import annotations

import time

import pytest

from agent.crm.errors import (
    GhlAuthError,
    GhlDeadlineError,
    GhlNotFoundError,
    GhlRateLimitedError,
    GhlServerError,
    GhlUnavailableError,
    GhlValidationError,
)
from agent.crm.ghl_client import GhlClient
from agent.crm.ghl_sim import GhlSimulator
from agent.crm.rate_limit import TokenBucket
from plugins.sim.faults import Fault, FaultType

pytest_plugins = ["ghl_fixtures"]
LOCATION = "sim-location"


async def test_duplicate_lookup_by_phone_and_email(sim: GhlSimulator, client: GhlClient) -> None:
    c = sim.add_contact(
        firstName="Ada", lastName="Lovelace", phone="+14155550100", email="ada@example.com"
    )
    by_phone = await client.find_duplicate(phone="+14155550100")
    by_email = await client.find_duplicate(email="ADA@example.com")
    assert by_phone is not None and by_phone.id == c["id"]
    assert by_email is not None and by_email.id == c["id"]
    assert by_phone.display_name == "Ada Lovelace"
    assert await client.find_duplicate(phone="+14155550199") is None
    # the phone went out as GHL's `number` parameter, URL-encoded
    details = [
        a.detail for a in sim.state.log.items() if a.route == "GET /contacts/search/duplicate"
    ]
    assert "number=%2B14155550100" in details[0] and f"locationId={LOCATION}" in details[0]


async def test_upsert_matches_existing_and_add_tags_keeps_old_ones(
    sim: GhlSimulator, client: GhlClient
) -> None:
    c = sim.add_contact(phone="+14155550100", tags=["vip"])
    contact, new = await client.upsert_contact({"phone": "+14155550100", "firstName": "Ada"})
    assert not new and contact.id == c["id"] and contact.tags == ("vip",)
    tags = await client.add_tags(contact.id, ["lead"])
    assert set(tags) == {"vip", "lead"}
    fresh, new2 = await client.upsert_contact({"email": "new@example.com"})
    assert new2 and fresh.id != c["id"]


async def test_calendar_calls_send_the_calendars_version(
    sim: GhlSimulator, client: GhlClient
) -> None:
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC)
    slots = await client.free_slots(
        "sim-calendar", start, start + timedelta(days=7), "America/Chicago"
    )
    assert slots, "the simulator only answers a calendars request sent with Version 2021-04-15"
    assert all(s.utcoffset() is not None for s in slots)


async def test_401_is_a_clear_auth_error_without_the_token(sim: GhlSimulator) -> None:
    async with GhlClient(
        api_key="wrong-token-123", location_id=LOCATION, base_url=sim.base_url
    ) as c:
        with pytest.raises(GhlAuthError) as info:
            await c.find_duplicate(phone="+14155550100")
    msg = str(info.value)
    assert "GHL_API_KEY" in msg and "401" in msg
    assert "wrong-token-123" not in msg and "wrong-token-123" not in repr(c)


async def test_422_names_the_field(sim: GhlSimulator, client: GhlClient) -> None:
    with pytest.raises(GhlValidationError) as info:
        await client.upsert_contact({"email": "not-an-email"})
    assert info.value.fields == ["email"]
    assert "email must be an email" in str(info.value)


async def test_404_for_unknown_contact(client: GhlClient) -> None:
    with pytest.raises(GhlNotFoundError):
        await client.get_contact("ct_missing")


async def test_interactive_read_retries_a_503_within_its_deadline(
    sim: GhlSimulator, client: GhlClient
) -> None:
    sim.state.plan.once(Fault(FaultType.STATUS, status=503))
    assert await client.find_duplicate(phone="+14155550100") is None
    assert sim.state.log.count("GET /contacts/search/duplicate") == 2


async def test_interactive_read_gives_up_at_the_deadline(
    sim: GhlSimulator, client: GhlClient
) -> None:
    sim.state.plan.always(Fault(FaultType.HANG))
    t0 = time.monotonic()
    with pytest.raises(GhlDeadlineError):
        await client.find_duplicate(phone="+14155550100")
    elapsed = time.monotonic() - t0
    assert elapsed < 1.5, f"deadline of 0.7 s not enforced across attempts ({elapsed:.2f}s)"
    assert sim.state.log.count("GET /contacts/search/duplicate") <= 2


async def test_non_idempotent_write_is_not_retried(sim: GhlSimulator, client: GhlClient) -> None:
    from datetime import UTC, datetime, timedelta

    c = sim.add_contact(phone="+14155550100")
    slots = await client.free_slots(
        "sim-calendar", datetime.now(UTC), datetime.now(UTC) + timedelta(days=7), "UTC"
    )
    sim.state.plan.once(Fault(FaultType.STATUS, status=503))
    with pytest.raises(GhlServerError) as info:
        await client.create_appointment(
            calendar_id="sim-calendar", contact_id=c["id"], start=slots[0]
        )
    assert info.value.maybe_applied
    assert sim.state.log.count("POST /calendars/events/appointments") == 1


async def test_429_blocks_the_bucket_for_retry_after(sim: GhlSimulator, client: GhlClient) -> None:
    sim.state.plan.once(Fault(FaultType.STATUS, status=429, retry_after_s=3))
    with pytest.raises(GhlRateLimitedError) as info:
        await client.find_duplicate(phone="+14155550100")
    assert info.value.retry_after_s == pytest.approx(3.0)
    # an interactive call now fails at once instead of hammering GHL during the pause
    with pytest.raises(GhlRateLimitedError):
        await client.find_duplicate(phone="+14155550100")
    assert sim.state.log.count("GET /contacts/search/duplicate") == 1


async def test_simulator_enforces_the_burst_window_with_headers(sim: GhlSimulator) -> None:
    sim.burst_limit = 3
    bucket = TokenBucket(capacity=80, interval_s=10, interactive_reserve=20)
    async with GhlClient(
        api_key="sim-key", location_id=LOCATION, base_url=sim.base_url, bucket=bucket
    ) as c:
        for _ in range(3):
            await c.find_duplicate(phone="+14155550100")
        # GHL said 0 remaining: our bucket now waits for GHL's interval rather than sending
        with pytest.raises(GhlRateLimitedError):
            await c.find_duplicate(phone="+14155550100")
    assert sim.state.log.count("GET /contacts/search/duplicate") == 3


def test_bucket_keeps_a_reserve_for_interactive_calls() -> None:
    now = [0.0]
    b = TokenBucket(capacity=10, interval_s=10, interactive_reserve=3, clock=lambda: now[0])
    background = 0
    while b.try_take(interactive=False):
        background += 1
    assert background == 7
    assert b.try_take(interactive=True)
    assert b.wait_time(interactive=False) > 0
    now[0] += 10
    assert b.try_take(interactive=False)


def test_bucket_follows_server_remaining_and_interval() -> None:
    now = [0.0]
    b = TokenBucket(capacity=80, interval_s=10, interactive_reserve=20, clock=lambda: now[0])
    b.observe_headers({"X-RateLimit-Remaining": "50", "X-RateLimit-Max": "100"})
    assert b.tokens() == pytest.approx(40)
    b.observe_headers(
        {
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Max": "100",
            "X-RateLimit-Interval-Milliseconds": "4000",
        }
    )
    assert b.wait_time(interactive=True) == pytest.approx(4.0)


async def test_breaker_opens_per_endpoint_group(sim: GhlSimulator, client: GhlClient) -> None:
    sim.state.plan.always(Fault(FaultType.STATUS, status=500))
    for _ in range(5):
        with pytest.raises(GhlServerError):
            await client.get_contact("ct_1")
    sent = sim.state.log.count()
    with pytest.raises(GhlUnavailableError, match="circuit") as info:
        await client.find_duplicate(phone="+14155550100")
    assert not info.value.maybe_applied
    assert sim.state.log.count() == sent  # failed fast, nothing sent
    # the calendars group is unaffected
    from datetime import UTC, datetime, timedelta

    sim.state.plan.clear()
    now = datetime.now(UTC)
    assert await client.free_slots("sim-calendar", now, now + timedelta(days=3), "UTC") is not None
