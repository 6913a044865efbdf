"""The worker's health port: LiveKit's liveness answer at ``/``, and readiness at ``/ready``.

LiveKit's ``AgentServer`` answers ``GET /`` with 200 as soon as its HTTP server is up, long
before the worker has registered with LiveKit, and it keeps answering 200 while it drains. That
is the right *liveness* signal (restart me only if I am wedged) but the wrong *readiness* one:
a load balancer or a rolling update must not count a worker that LiveKit cannot dispatch to.

LiveKit's health routes are fixed when its server starts, so the port an operator configures
(``HEALTH_PORT``) is served here instead, from a socket bound before LiveKit starts (a port in
use is then a one-line start-up error, not a traceback). LiveKit's own server runs on a free
port chosen by the OS, and this endpoint forwards ``/`` and ``/worker`` to it, so liveness is
exactly LiveKit's answer. ``/ready`` is 200 only while the worker is registered (LiveKit's
public ``worker_registered`` event), not draining (``AgentServer.draining``) and live.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp import web

if TYPE_CHECKING:
    from livekit.agents import AgentServer

log = structlog.get_logger(__name__)
_FORWARD_TIMEOUT_S = 2.0
_LOOPBACK = ("127.0.0.1", "[::1]")


class HealthEndpoint:
    """Serves the health port for one ``AgentServer``; start it on ``worker_started``."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._server: AgentServer | None = None
        self._registered_id: str | None = None
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def attach(self, server: AgentServer) -> None:
        self._server = server
        server.on("worker_registered", self._on_registered)

    def _on_registered(self, worker_id: str, _server_info: object) -> None:
        self._registered_id = worker_id

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) from LiveKit's public state; liveness is checked by the caller."""
        server = self._server
        if server is None or self._registered_id is None:
            return False, "not registered with LiveKit yet"
        if server.draining:
            return False, "draining: finishing running calls, taking no new ones"
        return True, f"registered as {self._registered_id}"

    async def start(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.get("/", self._forward),
                web.get("/worker", self._forward),
                web.get("/ready", self._ready),
            ]
        )
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_FORWARD_TIMEOUT_S))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()
        log.info("health endpoint listening", port=self.port, liveness="/", readiness="/ready")

    async def aclose(self) -> None:
        """Idempotent, also when two closes overlap (the register deadline's and the CLI's):
        each resource is taken before it is awaited, so only one close cleans it up."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        http, self._http = self._http, None
        if http is not None:
            await http.close()
        self._sock.close()

    async def _livekit(self, path: str) -> tuple[int, str, str]:
        """LiveKit's own answer for ``path`` (status, body, content type)."""
        assert self._server is not None and self._http is not None
        port = self._server.worker_info.http_port
        if not port:
            return 503, "worker not started", "text/plain"
        error: Exception | None = None
        # LiveKit listens on every interface with port 0: the port it reports may be the IPv4
        # or the IPv6 socket's.
        for host in _LOOPBACK:
            try:
                async with self._http.get(f"http://{host}:{port}{path}") as resp:
                    return resp.status, await resp.text(), resp.content_type
            except (aiohttp.ClientError, TimeoutError) as e:
                error = e
        return 503, f"worker health server not answering ({type(error).__name__})", "text/plain"

    async def _forward(self, request: web.Request) -> web.Response:
        status, body, content_type = await self._livekit(request.path)
        return web.Response(status=status, text=body, content_type=content_type)

    async def _ready(self, _request: web.Request) -> web.Response:
        ready, why = self.readiness()
        if ready:
            status, body, _ = await self._livekit("/")
            if status != 200:
                ready, why = False, f"not live: {body}"
        return web.Response(status=200 if ready else 503, text=why)
