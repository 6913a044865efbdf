"""The aiohttp server every simulator runs on.

A simulator is a real local server so the real LiveKit plugins talk to it over real sockets.
This base owns the boring part (bind to 127.0.0.1 port 0, the ``/_sim`` control routes,
shutting down without leaking handlers parked in a hang or a stall, the command line) so that
each provider module only describes its protocol in :meth:`HttpSimulator.add_routes`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import structlog
from aiohttp import web

from plugins.sim.faults import Fault, SimState, add_control_routes

log = structlog.get_logger(__name__)


class SimulatorNotStartedError(RuntimeError):
    """Raised when a simulator's address is read before ``start()``."""


class HttpSimulator:
    """Base class: subclasses set ``name`` and implement :meth:`add_routes`.

    ``base_url`` is ``http://host:port`` plus :attr:`base_path` (for example ``/v1`` for an
    OpenAI-compatible API), i.e. exactly what the plugin's ``base_url`` option wants.
    """

    name: str = "sim"
    base_path: str = ""

    def __init__(self, state: SimState | None = None) -> None:
        self.state = state or SimState()
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._closing = asyncio.Event()

    # -- to implement --------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        if self._runner is not None:
            raise RuntimeError(f"{self.name} simulator already started on {self.origin}")
        self._closing = asyncio.Event()
        app = web.Application()
        add_control_routes(app, self.state)
        self.add_routes(app)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._port = int(runner.addresses[0][1])
        self._host = host
        self._runner = runner
        log.debug("simulator started", simulator=self.name, url=self.base_url)
        return self

    async def aclose(self) -> None:
        """Stop serving; handlers parked in a hang or stall are released first."""
        self._closing.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- addresses -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise SimulatorNotStartedError(f"{self.name} simulator: call start() first")
        return self._port

    @property
    def origin(self) -> str:
        """``http://host:port`` with no path."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + self.base_path

    # -- helpers for protocol handlers ---------------------------------------------------
    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    async def park(self, seconds: float | None = None) -> None:
        """Wait ``seconds`` (forever if None) or until shutdown, whichever comes first.

        Hangs and stalls wait here, so ``aclose()`` never waits on them.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)

    def record(
        self,
        request: web.Request,
        fault: Fault | None,
        detail: str = "",
        *,
        status: int = 0,
        key: str = "",
        client_id: str = "",
    ) -> None:
        self.state.log.record(
            f"{request.method} {request.path}",
            fault,
            detail,
            status=status,
            key=key,
            client_id=client_id,
        )

    @staticmethod
    def reset(request: web.Request) -> None:
        """Drop the connection at once (the client sees a reset / server disconnect)."""
        transport = request.transport
        if transport is not None:
            transport.abort()

    async def hang(self, request: web.Request) -> web.StreamResponse:
        """Accept the request and never answer; released (connection dropped) on shutdown."""
        await self.park()
        self.reset(request)
        return web.Response(status=503)


def run_cli(
    factory: Callable[[], HttpSimulator],
    argv: Sequence[str] | None = None,
    description: str | None = None,
) -> int:
    """``python -m plugins.sim.<name>_sim --port N``: serve until Ctrl-C."""
    sim = factory()
    parser = argparse.ArgumentParser(description=description or f"{sim.name} simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)

    async def serve() -> None:
        await sim.start(args.host, args.port)
        print(
            f"{sim.name} simulator listening on {sim.base_url} "
            f"(faults: {sim.origin}/_sim/faults, attempts: {sim.origin}/_sim/attempts)",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await sim.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


# -- bad output any provider can send ------------------------------------------------------

#: Size of the body :data:`~plugins.sim.faults.FaultType.HUGE_ERROR` sends.
HUGE_ERROR_BYTES = 10 * 1024 * 1024

_HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
    "<h1>Bad Gateway</h1><p>The upstream server returned an invalid response.</p>"
    "<hr><address>nginx</address></body></html>\n"
)


def huge_error_response(status: int, message: str = "upstream failure") -> web.Response:
    """An error status whose JSON body is 10 MB: the provider's message, then a vast dump."""
    head = '{"error": {"message": ' + json.dumps(message) + ', "detail": "'
    filler = "x" * (HUGE_ERROR_BYTES - len(head) - 4)
    return web.Response(
        body=(head + filler + '"}}').encode(), status=status, content_type="application/json"
    )


def html_response(status: int = 200, repeat: int = 40) -> web.Response:
    """An HTML page where audio or JSON was expected (a proxy, a captive portal, a CDN)."""
    return web.Response(text=_HTML_PAGE * repeat, status=status, content_type="text/html")


def garbage_bytes(size: int) -> bytes:
    """Random bytes: as 16-bit PCM they are full-scale noise."""
    return os.urandom(size)
