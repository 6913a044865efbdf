"""Fixtures for the GHL and journal tests: a real simulator on 127.0.0.1, real SQLite files."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.crm.ghl_client import CallPolicy, GhlClient
from agent.crm.ghl_sim import GhlSimulator
from agent.crm.rate_limit import TokenBucket
from agent.journal.deliverer import OutboxDeliverer
from agent.journal.store import JournalStore

KEY = "k" * 16 + "0123456789abcdef"  # 32 characters, obviously fake
OTHER_KEY = "z" * 32
LOCATION = "sim-location"
CALENDAR = "sim-calendar"

# Short timeouts so hangs resolve quickly in tests; same code paths as production.
TEST_BACKGROUND = CallPolicy(
    deadline_s=1.0, attempt_timeout_s=0.5, max_attempts=1, interactive=False
)


@pytest.fixture
async def sim() -> AsyncIterator[GhlSimulator]:
    async with GhlSimulator(location_id=LOCATION) as s:
        yield s


@pytest.fixture
async def client(sim: GhlSimulator) -> AsyncIterator[GhlClient]:
    # GHL's budget, refilled 10x faster so a 429 in one test costs 0.2 s rather than 2 s
    bucket = TokenBucket(capacity=80, interval_s=1.0, interactive_reserve=20)
    async with GhlClient(
        api_key="sim-key", location_id=LOCATION, base_url=sim.base_url, bucket=bucket
    ) as c:
        yield c


@pytest.fixture
def store(tmp_path: Path) -> JournalStore:
    s = JournalStore.in_dir(tmp_path, KEY)
    return s


@pytest.fixture
def deliverer(store: JournalStore, client: GhlClient) -> OutboxDeliverer:
    return OutboxDeliverer(
        store,
        client,
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        poll_interval_s=0.05,
        auth_pause_s=0.2,
        rng=random.Random(7),
        policy=TEST_BACKGROUND,
    )
