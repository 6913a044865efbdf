"""Run one of LiveKit's worker commands (``console``, ``dev``, ``start``) on our settings.

LiveKit's CLI reads the LiveKit URL, key and secret from ``os.environ`` only, reports a worker
that cannot start with a traceback, and exits 0 either way. Here the validated settings (the
environment *and* ``.env``, exactly as ``doctor`` reads them) are checked first
(:mod:`agent.startup`) and handed to LiveKit's ``AgentServer`` through its constructor; the CLI
still parses its own options, so ``--url`` and friends keep working. The exit code tells a
supervisor the truth: 0 for a clean shutdown, 1 when the worker could not start or stopped on
a failure.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from agent.console_check import audio_console_problem
from agent.logs import configure_structlog, quiet_livekit_noise
from agent.readiness import HealthEndpoint
from agent.settings import Settings, SettingsError, load_settings
from agent.startup import StartupError, WorkerCommand, preflight

if TYPE_CHECKING:  # LiveKit takes seconds to import: a worker that cannot start says so first
    from agent.drain import DrainingServer


class ServerFactory(Protocol):
    def __call__(
        self, settings: Settings, *, health: HealthEndpoint | None, metrics: bool
    ) -> DrainingServer: ...


def _fail(line: str) -> int:
    sys.stderr.write(f"{line}\n")
    return 1


# LiveKit's own options for the connection: they override the settings, as in LiveKit's CLI.
_LIVEKIT_FLAGS = {"--url": "livekit_url", "--api-key": "livekit_api_key",
                  "--api-secret": "livekit_api_secret"}  # fmt: skip


def livekit_flags(argv: Sequence[str]) -> dict[str, str]:
    """``--url X`` / ``--url=X`` (and the key and secret) as settings overrides."""
    found: dict[str, str] = {}
    for i, word in enumerate(argv):
        flag, eq, value = word.partition("=")
        if flag in _LIVEKIT_FLAGS:
            if eq:
                found[_LIVEKIT_FLAGS[flag]] = value
            elif i + 1 < len(argv):
                found[_LIVEKIT_FLAGS[flag]] = argv[i + 1]
    return found


def _livekit_argv(command: str, argv: Sequence[str]) -> list[str]:
    args = [command, *argv]
    if command == "dev" and not {"--reload", "--no-reload"} & set(argv):
        # LiveKit 1.8 removed in-process reload and warns on every `dev` that asks for it (its
        # default); our `dev` is a development-mode worker, without reload, and says so.
        args.append("--no-reload")
    return args


def run_worker_command(
    command: WorkerCommand,
    argv: Sequence[str],
    settings: Settings,
    make_server: ServerFactory,
) -> int:
    if command == "console" and "--text" not in argv:
        problem = audio_console_problem()
        if problem:
            return _fail(problem)
    configure_structlog()  # LiveKit's CLI installs the handler (JSON in start, readable in dev)
    if overrides := livekit_flags(argv):
        try:
            settings = load_settings(**overrides)
        except SettingsError as e:
            sys.stderr.write(f"{e}\n")
            return 2
    try:
        ready = preflight(settings, command)
    except StartupError as e:
        return _fail(f"Cannot start `{command}`: {e}")
    for note in ready.notes:
        sys.stderr.write(f"{note}\n")

    from livekit.agents import cli

    health = HealthEndpoint(ready.health_socket) if ready.health_socket else None
    server = make_server(ready.settings, health=health, metrics=command != "console")
    if command == "console":
        quiet_livekit_noise(console=True)
        # The console's loop shares one process with the terminal UI and the local models: a
        # stall under LiveKit's 100 ms production threshold is nothing the user can act on.
        os.environ.setdefault("LIVEKIT_AGENTS_LOOP_BLOCK_WARN_MS", "500")
        # LiveKit's console schedules AgentServer.aclose() a second time after the worker thread
        # has closed its loop; that coroutine is dropped unawaited. The first call did the work.
        warnings.filterwarnings(
            "ignore", message=r"coroutine '.*aclose' was never awaited", category=RuntimeWarning
        )
    sys.argv = [sys.argv[0], *_livekit_argv(command, argv)]
    code: int = 0
    try:
        cli.run_app(server)
    except SystemExit as e:  # typer ends every command with sys.exit
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        if ready.health_socket is not None:
            ready.health_socket.close()
    if server.failure is not None:
        return _fail(f"`{command}` stopped: {server.failure}")
    return code
