"""``python -m agent COMMAND``: LiveKit's commands plus the ones a production agent needs.

``dev``, ``start``, ``console`` and ``download-files`` keep LiveKit's meaning (its CLI runs
them). ``simulate``, ``status``, ``doctor`` and ``journal`` are ours. Settings are validated
before anything starts, so a bad value stops the process with one clear line.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, cast

from agent.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from agent.drain import DrainingServer
    from agent.readiness import HealthEndpoint

OUR_COMMANDS = ("simulate", "status", "doctor", "journal", "transcribe")
USAGE = """usage: python -m agent COMMAND [options]

LiveKit worker commands:
  console [--text]   talk to the agent in this terminal (no LiveKit server needed)
  dev                run a worker against LIVEKIT_URL in development mode (readable debug
                     logs, no drain on exit; no reload: restart it, or use `lk agent dev`)
  start              run a production worker against LIVEKIT_URL (JSON logs, drains on
                     SIGTERM, /ready on HEALTH_PORT)
  download-files     fetch the model files the plugins need (run at image build)

Operations:
  simulate           run a whole sales call against provider simulators with injected faults
  status             show provider health from the shared health store
  doctor             check settings, keys and quotas of every configured provider
  journal            list calls and their CRM delivery state; show a decrypted transcript
  transcribe         print FILE<TAB>transcript per WAV file through a real STT provider
"""


def _server(settings: Settings, *, health: HealthEndpoint | None, metrics: bool) -> DrainingServer:
    from agent.worker import create_server  # imports LiveKit: only once the checks passed

    return create_server(settings, health=health, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    command = args[0]
    try:
        settings = load_settings()
    except SettingsError as e:
        sys.stderr.write(f"{e}\n")
        return 2

    if command in OUR_COMMANDS:
        from agent import commands
        from agent.startup import with_key_file

        # The journal written by console/dev is read back with the key file they created.
        return commands.run(
            command, args[1:], with_key_file(settings) if command == "journal" else settings
        )

    if command in ("console", "dev", "start"):
        from agent.launch import run_worker_command
        from agent.startup import WorkerCommand

        return run_worker_command(cast(WorkerCommand, command), args[1:], settings, _server)

    from livekit.agents import cli  # download-files, and LiveKit's own errors for the rest

    from agent.worker import create_server

    sys.argv = [sys.argv[0], *args]
    cli.run_app(create_server(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
