"""A local dispatch server that speaks LiveKit's agent protocol, for workers to register with.

No LiveKit server can be installed here (none is published on PyPI, npm or Debian), yet the
worker's registration, load reports, job acceptance and refusal must be exercised by the real
``AgentServer``. This server implements the server side of the worker WebSocket exactly as
``livekit.agents.worker`` uses it: ``GET /agent`` with ``Authorization: Bearer <JWT>`` (HS256
with the API key/secret and the ``agent`` video grant), binary protobuf frames of
``livekit.protocol.agent.WorkerMessage`` from the worker and ``ServerMessage`` to it:

* ``register`` -> ``RegisterWorkerResponse`` (must be the first reply);
* ``update_worker`` (status, load, job count every 2.5 s) is recorded per worker;
* ``dispatch()`` sends an ``AvailabilityRequest``; an ``AvailabilityResponse`` with
  ``available=True`` is followed by a ``JobAssignment`` carrying a room token, like LiveKit;
* ``update_job`` (running/success/failed) is recorded per job; ``terminate()`` sends
  ``JobTermination``; ``ping`` is answered with ``pong``.

It hosts no rooms: a job's room connection (``/rtc``) is recorded and refused, so a dispatched
job gets as far as joining its room and no further. Like LiveKit, :meth:`DispatchServer.dispatch`
only offers a job to a worker whose last status was ``WS_AVAILABLE``; ``to=`` offers it to a
named worker regardless, to see the worker's own answer.

``python -m plugins.sim.livekit_dispatch --port 7880`` serves until Ctrl-C; ``POST
/_dispatch/jobs`` ``{"room": "...", "agent_name": "..."}`` dispatches a job and ``GET
/_dispatch/workers`` lists workers with their last reported load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from livekit import api
from livekit.protocol import agent, models

log = structlog.get_logger(__name__)

AVAILABILITY_TIMEOUT_S = 10.0


class DispatchError(RuntimeError):
    """A dispatch could not be made (no such worker, the worker went away, no answer)."""


@dataclass(frozen=True)
class StatusReport:
    """One ``UpdateWorkerStatus`` as the worker sent it."""

    at: float
    available: bool
    load: float
    job_count: int


@dataclass
class WorkerConnection:
    worker_id: str
    agent_name: str
    version: str
    job_type: str
    ws: web.WebSocketResponse
    statuses: list[StatusReport] = field(default_factory=list)
    pings: int = 0
    migrated_jobs: list[str] = field(default_factory=list)
    connected: bool = True

    @property
    def last_status(self) -> StatusReport | None:
        return self.statuses[-1] if self.statuses else None

    @property
    def accepts_jobs(self) -> bool:
        status = self.last_status
        return self.connected and (status is None or status.available)


@dataclass
class Dispatch:
    """What happened to one job offered to the pool."""

    job_id: str
    room: str
    worker_id: str | None = None
    available: bool = False
    terminate: bool = False
    participant_identity: str = ""
    assigned: bool = False
    reason: str = ""  # why it was not assigned, when it was not
    statuses: list[str] = field(default_factory=list)  # UpdateJobStatus values, in order


@dataclass(frozen=True)
class RoomAttempt:
    """A request a job made to join its room (this server hosts none)."""

    at: float
    path: str
    identity: str | None


def _status_name(status: int) -> str:
    return str(agent.JobStatus.Name(status))


class DispatchServer:
    """The server side of LiveKit's agent worker protocol, on 127.0.0.1."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        if not api_key or not api_secret:
            raise ValueError("DispatchServer needs an API key and secret (fake ones will do)")
        self._api_key = api_key
        self._api_secret = api_secret
        self._verifier = api.TokenVerifier(api_key, api_secret)
        self.workers: dict[str, WorkerConnection] = {}
        self.dispatches: dict[str, Dispatch] = {}
        self.room_attempts: list[RoomAttempt] = []
        self.rejected_auth = 0
        self._answers: dict[str, asyncio.Future[agent.AvailabilityResponse]] = {}
        self._changed = asyncio.Condition()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._host = "127.0.0.1"

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> DispatchServer:
        app = web.Application()
        app.router.add_get("/agent", self._agent_ws)
        app.router.add_get("/_dispatch/workers", self._list_workers)
        app.router.add_post("/_dispatch/jobs", self._create_job)
        app.router.add_route("*", "/{tail:.*}", self._no_rooms)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        self._host = host
        log.info("dispatch server listening", url=self.url)
        return self

    @property
    def url(self) -> str:
        """The value for ``LIVEKIT_URL``."""
        if not self._port:
            raise RuntimeError("DispatchServer.url is known only after start()")
        return f"ws://{self._host}:{self._port}"

    @property
    def base_url(self) -> str:
        return self.url

    async def aclose(self) -> None:
        for worker in list(self.workers.values()):
            with contextlib.suppress(Exception):
                await worker.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DispatchServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- waiting -------------------------------------------------------------------------------
    async def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every message); return it."""

        async def _wait() -> Any:
            async with self._changed:
                while not (result := predicate()):
                    await self._changed.wait()
                return result

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"dispatch server: {what} did not happen in {timeout:g} s") from None

    async def wait_for_worker(self, timeout: float = 60.0) -> WorkerConnection:
        worker: WorkerConnection = await self.wait_for(
            lambda: next((w for w in self.workers.values() if w.connected), None),
            timeout,
            "a worker registering",
        )
        return worker

    async def wait_for_status(
        self,
        worker_id: str,
        predicate: Callable[[StatusReport], bool],
        timeout: float = 30.0,
        what: str = "a matching status report",
    ) -> StatusReport:
        """The first status report received from now on that satisfies ``predicate``."""
        seen = len(self.workers[worker_id].statuses)

        def match() -> StatusReport | None:
            for status in self.workers[worker_id].statuses[seen:]:
                if predicate(status):
                    return status
            return None

        report: StatusReport = await self.wait_for(match, timeout, what)
        return report

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- dispatch ------------------------------------------------------------------------------
    async def dispatch(
        self,
        room: str,
        *,
        agent_name: str | None = None,
        to: str | None = None,
        timeout: float = AVAILABILITY_TIMEOUT_S,
    ) -> Dispatch:
        """Offer a job for ``room`` to an available worker (or to worker ``to``) and assign it
        if the worker accepts."""
        job_id = f"AJ_sim{next(self._ids):04d}"
        record = Dispatch(job_id=job_id, room=room)
        self.dispatches[job_id] = record
        if to is not None:
            if to not in self.workers:
                raise DispatchError(f"no worker {to!r} is registered; known: {list(self.workers)}")
            worker: WorkerConnection | None = self.workers[to]
        else:
            candidates = [
                w
                for w in self.workers.values()
                if w.accepts_jobs and (agent_name is None or w.agent_name == agent_name)
            ]
            worker = min(
                candidates, key=lambda w: w.last_status.load if w.last_status else 0.0, default=None
            )
        if worker is None:
            record.reason = "no available worker"
            return record
        record.worker_id = worker.worker_id
        job = agent.Job(
            id=job_id,
            dispatch_id=f"AD_sim{job_id[-4:]}",
            type=agent.JobType.JT_ROOM,
            room=models.Room(sid=f"RM_{room}", name=room),
            agent_name=worker.agent_name,
        )
        answer: asyncio.Future[agent.AvailabilityResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self._answers[job_id] = answer
        await worker.ws.send_bytes(
            agent.ServerMessage(availability=agent.AvailabilityRequest(job=job)).SerializeToString()
        )
        try:
            response = await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            record.reason = f"no availability answer in {timeout:g} s"
            return record
        finally:
            self._answers.pop(job_id, None)
        record.available = response.available
        record.terminate = response.terminate
        record.participant_identity = response.participant_identity
        if not response.available:
            record.reason = "worker refused"
            return record
        token = (
            api.AccessToken(self._api_key, self._api_secret)
            .with_identity(response.participant_identity or f"agent-{job_id}")
            .with_kind("agent")
            .with_grants(api.VideoGrants(room_join=True, room=room, agent=True))
            .to_jwt()
        )
        await worker.ws.send_bytes(
            agent.ServerMessage(
                assignment=agent.JobAssignment(job=job, url=self.url, token=token)
            ).SerializeToString()
        )
        record.assigned = True
        await self._notify()
        return record

    async def terminate(self, job_id: str) -> None:
        record = self.dispatches.get(job_id)
        if record is None or record.worker_id is None:
            raise DispatchError(f"job {job_id!r} was never assigned to a worker")
        worker = self.workers[record.worker_id]
        await worker.ws.send_bytes(
            agent.ServerMessage(termination=agent.JobTermination(job_id=job_id)).SerializeToString()
        )

    # -- the worker WebSocket ------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        try:
            claims = self._verifier.verify(token)
        except Exception:
            return False
        return bool(claims.video and claims.video.agent)

    async def _agent_ws(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            self.rejected_auth += 1
            log.warning("worker rejected: bad or missing token")
            return web.Response(status=401, text="invalid authorization token")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        worker: WorkerConnection | None = None
        try:
            async for frame in ws:
                if frame.type != WSMsgType.BINARY:
                    continue
                msg = agent.WorkerMessage()
                msg.ParseFromString(frame.data)
                which = msg.WhichOneof("message")
                if worker is None:
                    if which != "register":
                        await ws.close(message=b"expected register as the first message")
                        break
                    worker = await self._register(ws, msg.register)
                else:
                    await self._handle(worker, msg, which)
                await self._notify()
        finally:
            if worker is not None:
                worker.connected = False
                for job_id, fut in list(self._answers.items()):
                    if self.dispatches[job_id].worker_id == worker.worker_id and not fut.done():
                        fut.set_exception(DispatchError("the worker disconnected"))
                log.info("worker disconnected", worker_id=worker.worker_id)
                await self._notify()
        return ws

    async def _register(
        self, ws: web.WebSocketResponse, req: agent.RegisterWorkerRequest
    ) -> WorkerConnection:
        worker_id = f"AW_sim{next(self._ids):04d}"
        worker = WorkerConnection(
            worker_id=worker_id,
            agent_name=req.agent_name,
            version=req.version,
            job_type=agent.JobType.Name(req.type),
            ws=ws,
        )
        self.workers[worker_id] = worker
        response = agent.RegisterWorkerResponse(
            worker_id=worker_id,
            server_info=models.ServerInfo(
                edition=models.ServerInfo.Edition.Standard,
                version="sim-dispatch",
                protocol=16,
                region="local",
                node_id="sim-node",
            ),
        )
        await ws.send_bytes(agent.ServerMessage(register=response).SerializeToString())
        log.info("worker registered", worker_id=worker_id, agent_name=req.agent_name)
        return worker

    async def _handle(
        self, worker: WorkerConnection, msg: agent.WorkerMessage, which: str | None
    ) -> None:
        if which == "update_worker":
            update = msg.update_worker
            worker.statuses.append(
                StatusReport(
                    at=time.time(),
                    available=update.status == agent.WorkerStatus.WS_AVAILABLE,
                    load=update.load,
                    job_count=update.job_count,
                )
            )
        elif which == "availability":
            fut = self._answers.get(msg.availability.job_id)
            if fut is not None and not fut.done():
                fut.set_result(msg.availability)
        elif which == "update_job":
            record = self.dispatches.get(msg.update_job.job_id)
            if record is not None:
                record.statuses.append(_status_name(msg.update_job.status))
        elif which == "ping":
            worker.pings += 1
            pong = agent.WorkerPong(
                last_timestamp=msg.ping.timestamp, timestamp=int(time.time() * 1000)
            )
            await worker.ws.send_bytes(agent.ServerMessage(pong=pong).SerializeToString())
        elif which == "migrate_job":
            worker.migrated_jobs.extend(msg.migrate_job.job_ids)

    # -- everything else: rooms (refused) and the control routes -------------------------------
    async def _no_rooms(self, request: web.Request) -> web.Response:
        identity = None
        token = request.query.get("access_token")
        if token:
            with contextlib.suppress(Exception):
                identity = self._verifier.verify(token).identity
        self.room_attempts.append(RoomAttempt(time.time(), request.path, identity))
        await self._notify()
        return web.Response(status=404, text="this dispatch server hosts no rooms")

    async def _list_workers(self, _: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "worker_id": w.worker_id,
                    "agent_name": w.agent_name,
                    "connected": w.connected,
                    "available": w.last_status.available if w.last_status else None,
                    "load": w.last_status.load if w.last_status else None,
                    "job_count": w.last_status.job_count if w.last_status else None,
                }
                for w in self.workers.values()
            ]
        )

    async def _create_job(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            room = str(body["room"])
        except Exception:
            return web.json_response(
                {"error": 'send JSON {"room": "<name>", "agent_name": "<optional>"}'}, status=400
            )
        record = await self.dispatch(room, agent_name=body.get("agent_name"))
        return web.json_response(
            {
                "job_id": record.job_id,
                "worker_id": record.worker_id,
                "assigned": record.assigned,
                "reason": record.reason,
            }
        )


async def _serve(port: int, api_key: str, api_secret: str) -> None:
    server = await DispatchServer(api_key, api_secret).start(port=port)
    try:
        print(f"dispatch server on {server.url} (Ctrl-C to stop)")
        await asyncio.Event().wait()
    finally:
        await server.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=7880)
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--api-secret", default="sim-secret-0123456789abcdef0123456789")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.api_key, args.api_secret))


if __name__ == "__main__":
    main()
