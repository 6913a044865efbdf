"""`python -m agent start` against a dispatch server speaking LiveKit's agent protocol.

One real worker process serves the module: it registers, reports its load, answers availability
requests, launches the accepted job in a job process (which gets as far as joining its room: the
dispatch server hosts none), and refuses jobs once its load reaches ``LOAD_THRESHOLD``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from livekit import api
from livekit.protocol import agent

from agent.load import MEASURED_WEIGHTS, load_dir
from plugins.sim.livekit_dispatch import DispatchServer
from tests.production_fixtures import API_KEY, API_SECRET, WorkerProcess, start_worker

THRESHOLD = 0.9
HEAVY_CALL = {"stt": "free-stt", "llm": "free-llm", "tts": "local-tts"}

pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[DispatchServer, WorkerProcess, Path]]:
    data_dir = tmp_path_factory.mktemp("dispatch") / "data"
    server = await DispatchServer(API_KEY, API_SECRET).start()
    worker = start_worker(server.url, data_dir, extra_env={"LOAD_THRESHOLD": str(THRESHOLD)})
    try:
        try:
            await server.wait_for_worker(timeout=90)
        except TimeoutError:
            pytest.fail(f"worker never registered; its log:\n{worker.log()}")
        yield server, worker, data_dir
    finally:
        # End the calls still trying to join their rooms (JobTermination), then drain and stop.
        for dispatch in server.dispatches.values():
            if dispatch.assigned and worker.proc.poll() is None:
                await server.terminate(dispatch.job_id)
        worker.stop()
        await server.aclose()


async def _wait_available(server: DispatchServer, worker_id: str) -> None:
    # Job processes prewarm models right after start; the CPU average can be high meanwhile.
    await server.wait_for_status(
        worker_id, lambda s: s.available, timeout=60, what="an available status"
    )


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_worker_registers_and_reports_load(
    pool: tuple[DispatchServer, WorkerProcess, Path],
) -> None:
    server, _worker, _ = pool
    [registered] = server.workers.values()
    assert registered.agent_name == "never-silent-sales"
    assert registered.version == "1.8.9"
    assert registered.job_type == "JT_ROOM"
    first = await server.wait_for_status(registered.worker_id, lambda s: True, timeout=10)
    second = await server.wait_for_status(registered.worker_id, lambda s: True, timeout=10)
    assert second.at > first.at  # periodic reports, not one
    for report in (first, second):
        assert 0.0 <= report.load <= 1.0


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_worker_accepts_a_job_and_launches_it(
    pool: tuple[DispatchServer, WorkerProcess, Path],
) -> None:
    server, worker, _ = pool
    [registered] = server.workers.values()
    await _wait_available(server, registered.worker_id)

    dispatch = await server.dispatch("sales-call-1", agent_name="never-silent-sales", timeout=30)

    assert dispatch.worker_id == registered.worker_id
    assert dispatch.available and dispatch.assigned, dispatch.reason
    assert dispatch.participant_identity
    # The job process received the assignment's token and tried to join its room with it.
    await server.wait_for(
        lambda: any(a.path.startswith("/rtc") for a in server.room_attempts),
        timeout=60,
        what="the job joining its room",
    )
    await server.wait_for(
        lambda: "JS_RUNNING" in dispatch.statuses, timeout=30, what="the job reporting running"
    )
    assert worker.proc.poll() is None


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_worker_refuses_jobs_at_the_load_threshold(
    pool: tuple[DispatchServer, WorkerProcess, Path],
) -> None:
    server, _worker, data_dir = pool
    [registered] = server.workers.values()
    await _wait_available(server, registered.worker_id)

    # Running calls that fell back to the local providers, as their job processes report them.
    reports = load_dir(data_dir)
    reports.mkdir(parents=True, exist_ok=True)
    calls = math.ceil(THRESHOLD / MEASURED_WEIGHTS.weight(HEAVY_CALL)) + 1
    paths = []
    for n in range(calls):
        path = reports / f"AJ_fake{n}.json"
        path.write_text(json.dumps({"pid": os.getpid(), "providers": HEAVY_CALL}))
        paths.append(path)
    try:
        full = await server.wait_for_status(
            registered.worker_id, lambda s: not s.available, timeout=20, what="a full status"
        )
        assert full.load >= THRESHOLD

        refused = await server.dispatch("sales-call-2", to=registered.worker_id, timeout=30)
        assert not refused.available and not refused.assigned
        assert refused.reason == "worker refused"

        not_offered = await server.dispatch("sales-call-3")
        assert not_offered.worker_id is None
        assert not_offered.reason == "no available worker"
    finally:
        for path in paths:
            path.unlink(missing_ok=True)

    await _wait_available(server, registered.worker_id)
    accepted = await server.dispatch("sales-call-4", timeout=30)
    assert accepted.assigned, accepted.reason


async def test_dispatch_server_rejects_a_bad_token() -> None:
    async with DispatchServer(API_KEY, API_SECRET) as server:
        wrong = api.AccessToken(API_KEY, "not-the-secret-at-all-0123456789").with_grants(
            api.VideoGrants(agent=True)
        )
        no_agent_grant = (
            api.AccessToken(API_KEY, API_SECRET)
            .with_identity("x")
            .with_grants(api.VideoGrants(room_join=True, room="x"))
        )
        async with aiohttp.ClientSession() as http:
            for token in (wrong.to_jwt(), no_agent_grant.to_jwt(), ""):
                with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                    await http.ws_connect(
                        f"{server.url}/agent", headers={"Authorization": f"Bearer {token}"}
                    )
                assert e.value.status == 401
            good = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(agent=True))
            async with http.ws_connect(
                f"{server.url}/agent", headers={"Authorization": f"Bearer {good.to_jwt()}"}
            ) as ws:
                register = agent.WorkerMessage()
                register.register.agent_name = "probe"
                await ws.send_bytes(register.SerializeToString())
                reply = agent.ServerMessage()
                reply.ParseFromString(await ws.receive_bytes(timeout=5))
                assert reply.WhichOneof("message") == "register"
                assert reply.register.worker_id in server.workers
        assert server.rejected_auth == 3
