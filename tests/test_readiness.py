"""`python -m agent start` configured by a `.env` file only, against the dispatch server.

The worker's environment carries no LiveKit variable: URL, key, secret, journal key and ports
are in `.env`, as the README tells a new user to write them. The test follows one worker
through its life and reads its health port the way Kubernetes would:

* before LiveKit is reachable: live (``/`` 200) but not ready (``/ready`` 503);
* once registered with the dispatch server: ready;
* after SIGTERM, while a call is still running: not ready again ("draining"), still live;
* when the call ends: the process exits 0, a clean shutdown.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from plugins.sim.livekit_dispatch import DispatchServer
from tests.production_fixtures import API_KEY, API_SECRET, ENCRYPTION_KEY, REPO, WorkerProcess

pytestmark = pytest.mark.timeout(240)
AGENT_NAME = "never-silent-sales"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return 0, ""


async def _until(
    http: aiohttp.ClientSession,
    url: str,
    status: int,
    worker: WorkerProcess,
    *,
    timeout: float,
    what: str,
) -> str:
    """Poll ``url`` until it answers ``status``; the body it answered with."""
    deadline = time.monotonic() + timeout
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            pytest.fail(f"worker exited ({worker.proc.returncode}) before {what}:\n{worker.log()}")
        last = await _get(http, url)
        if last[0] == status:
            return last[1]
        await asyncio.sleep(0.2)  # polling another process's HTTP server; the deadline bounds it
    pytest.fail(f"{what}: {url} still answers {last} after {timeout}s; log:\n{worker.log()}")


def _start_with_dotenv(tmp: Path, livekit_port: int, health_port: int) -> WorkerProcess:
    (tmp / ".env").write_text(
        f"LIVEKIT_URL=ws://127.0.0.1:{livekit_port}\n"
        f"LIVEKIT_API_KEY={API_KEY}\n"
        f"LIVEKIT_API_SECRET={API_SECRET}\n"
        f"ENCRYPTION_KEY={ENCRYPTION_KEY}\n"
        f"DATA_DIR={tmp / 'data'}\n"
        f"HEALTH_PORT={health_port}\n"
        "LOG_FORMAT=json\n"
        "DRAIN_TIMEOUT=120\n"
        "LOAD_THRESHOLD=1\n"  # a busy test machine must not read as a full worker
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp),
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp / "worker.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "start"],
            cwd=tmp,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(proc, log_path)


async def test_dotenv_worker_registers_and_is_ready_only_while_it_can_take_calls(
    tmp_path: Path,
) -> None:
    livekit_port, health_port = _free_port(), _free_port()
    worker = _start_with_dotenv(tmp_path, livekit_port, health_port)
    live, ready = f"http://127.0.0.1:{health_port}/", f"http://127.0.0.1:{health_port}/ready"
    server: DispatchServer | None = None
    try:
        async with aiohttp.ClientSession() as http:
            # LiveKit is not reachable yet: the worker is alive, and says it is not ready.
            await _until(http, live, 200, worker, timeout=90, what="the worker being live")
            status, body = await _get(http, ready)
            assert (status, body) == (503, "not registered with LiveKit yet")

            server = await DispatchServer(API_KEY, API_SECRET).start(port=livekit_port)
            try:
                registered = await server.wait_for_worker(timeout=60)
            except TimeoutError:
                pytest.fail(f"worker never registered; its log:\n{worker.log()}")
            assert registered.agent_name == AGENT_NAME
            body = await _until(http, ready, 200, worker, timeout=30, what="readiness")
            assert body == f"registered as {registered.worker_id}"

            # A call is running when the worker is told to stop.
            await server.wait_for_status(
                registered.worker_id, lambda s: s.available, timeout=60, what="availability"
            )
            dispatch = await server.dispatch("readiness-call", agent_name=AGENT_NAME, timeout=30)
            assert dispatch.assigned, dispatch.reason
            await server.wait_for(
                lambda: "JS_RUNNING" in dispatch.statuses, timeout=60, what="the call running"
            )
            worker.signal(signal.SIGTERM)
            body = await _until(http, ready, 503, worker, timeout=30, what="not ready on drain")
            assert body.startswith("draining")
            assert (await _get(http, live))[0] == 200  # liveness is unchanged: do not restart
            assert worker.proc.poll() is None  # the running call holds the drain open

            await server.terminate(dispatch.job_id)
            assert await asyncio.to_thread(worker.wait, 90) == 0, worker.log()
    finally:
        worker.stop()
        if server is not None:
            await server.aclose()
    # The call itself fails to join its room (the dispatch server hosts none); the worker not.
    log = worker.log(tail=1_000_000)
    assert '"worker failed"' not in log and '"worker stopped"' not in log


async def test_the_health_endpoint_closes_once_when_two_closes_overlap() -> None:
    """A worker that could not register closes itself while the CLI closes it too: the second
    close must not fail on what the first one is already cleaning up (it logged a traceback
    after the one-line error)."""
    from agent.readiness import HealthEndpoint

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    endpoint = HealthEndpoint(sock)
    await endpoint.start()
    port = endpoint.port
    await asyncio.gather(endpoint.aclose(), endpoint.aclose())
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
