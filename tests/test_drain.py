"""Graceful drain of a real worker process registered with the dispatch server.

SIGTERM mid-call: the worker reports itself full and refuses new jobs, the running call goes on
to its end, the call's transcript (in the durable journal) is delivered to the CRM, and the
process exits 0. A second signal exits at once; the journal stays intact and the next worker on
the same data directory delivers what was left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.crm.ghl_sim import GhlSimulator
from agent.drain import JournalFlush
from agent.journal.store import JOURNAL_FILENAME
from agent.settings import load_settings
from plugins.sim.livekit_dispatch import DispatchServer, WorkerConnection
from tests.production_fixtures import (
    API_KEY,
    API_SECRET,
    ENCRYPTION_KEY,
    WorkerProcess,
    start_worker,
)
from tests.production_worker_app import CALLER_PHONE, CALLER_TURNS

pytestmark = pytest.mark.timeout(120)

APP = ("tests/production_worker_app.py", "start")


@pytest.fixture
async def ghl() -> AsyncIterator[GhlSimulator]:
    async with GhlSimulator() as sim:
        yield sim


def _env(ghl: GhlSimulator) -> dict[str, str]:
    return {
        "GHL_API_KEY": "sim-key",
        "GHL_LOCATION_ID": ghl.location_id,
        "GHL_BASE_URL": ghl.base_url,
        "ENCRYPTION_KEY": ENCRYPTION_KEY,
        "DRAIN_TIMEOUT": "90",
        "LOAD_THRESHOLD": "0.99",
    }


def _progress(data_dir: Path, job_id: str) -> list[str]:
    path = data_dir / "calls" / f"{job_id}.log"
    return path.read_text().splitlines() if path.exists() else []


async def _until(predicate: object, timeout: float, what: str, worker: WorkerProcess) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"{what} did not happen in {timeout:g} s; worker log:\n{worker.log()}")
        await asyncio.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of the group remains."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


async def _start_call(
    server: DispatchServer, worker: WorkerProcess, data_dir: Path
) -> tuple[WorkerConnection, str]:
    try:
        registered = await server.wait_for_worker(timeout=90)
        await server.wait_for_status(registered.worker_id, lambda s: s.available, timeout=60)
    except TimeoutError as e:
        pytest.fail(f"{e}; worker log:\n{worker.log()}")
    dispatch = await server.dispatch("drain-call", timeout=30)
    assert dispatch.assigned, dispatch.reason
    await _until(
        lambda: "greeted" in _progress(data_dir, dispatch.job_id),
        60,
        "the call's greeting",
        worker,
    )
    return registered, dispatch.job_id


@pytest.mark.slow
async def test_sigterm_mid_call_finishes_the_call_delivers_the_journal_and_exits_0(
    tmp_path: Path, ghl: GhlSimulator
) -> None:
    contact = ghl.add_contact(phone=CALLER_PHONE, firstName="Pat")
    data_dir = tmp_path / "data"
    async with DispatchServer(API_KEY, API_SECRET) as server:
        worker = start_worker(server.url, data_dir, argv=APP, extra_env=_env(ghl))
        try:
            registered, job_id = await _start_call(server, worker, data_dir)
            assert not any(line.startswith("turn 2") for line in _progress(data_dir, job_id))

            worker.signal(signal.SIGTERM)

            full = await server.wait_for_status(
                registered.worker_id, lambda s: not s.available, timeout=10
            )
            assert full.job_count == 1  # draining, with the call still running
            refused = await server.dispatch("late-call", to=registered.worker_id, timeout=30)
            assert not refused.assigned and refused.reason == "worker refused"

            code = await asyncio.to_thread(worker.wait, 90)
        finally:
            worker.stop()

    assert code == 0, worker.log()
    assert _progress(data_dir, job_id)[-1] == "completed", worker.log()
    notes = ghl.notes_for(contact["id"])
    assert len(notes) == 1, worker.log()
    # the greeting and an answer to every caller turn, the ones after SIGTERM included
    assert notes[0]["body"].count("Agent:") >= 1 + len(CALLER_TURNS), notes[0]["body"]
    assert "journal flushed" in worker.log(tail=200_000)


async def test_second_signal_exits_at_once_and_the_journal_survives(
    tmp_path: Path, ghl: GhlSimulator
) -> None:
    contact = ghl.add_contact(phone=CALLER_PHONE, firstName="Sam")
    data_dir = tmp_path / "data"
    async with DispatchServer(API_KEY, API_SECRET) as server:
        worker = start_worker(server.url, data_dir, argv=APP, extra_env=_env(ghl))
        try:
            _registered, job_id = await _start_call(server, worker, data_dir)
            worker.signal(signal.SIGTERM)
            await asyncio.sleep(0.5)  # let the first signal start the drain
            worker.signal(signal.SIGTERM)
            code = await asyncio.to_thread(worker.wait, 10)
        finally:
            # An orchestrator kills what is left of the container (the job process) too.
            with_group = worker.proc.pid
            worker.stop()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(with_group, signal.SIGKILL)
            await _until(lambda: not _group_alive(with_group), 20, "the job process exit", worker)

    assert code != 0  # forced, not drained
    assert "completed" not in _progress(data_dir, job_id)
    db = sqlite3.connect(data_dir / JOURNAL_FILENAME)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()

    # The next worker on this data directory (its JournalFlush runs a pass at start) closes
    # the cut call and delivers its transcript.
    settings = load_settings(
        data_dir=data_dir,
        ghl_api_key="sim-key",
        ghl_location_id=ghl.location_id,
        ghl_base_url=ghl.base_url,
        encryption_key=ENCRYPTION_KEY,
    )
    successor = JournalFlush(settings)
    await successor.start()
    assert await successor.flush() is True
    [note] = ghl.notes_for(contact["id"])
    assert "Hi, this is Alex." in note["body"]
