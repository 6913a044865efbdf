"""``python -m agent COMMAND``: LiveKit's commands plus the ones a production agent needs.

``dev``, ``start``, ``console`` and ``download-files`` keep LiveKit's meaning (its CLI runs
them). ``simulate``, ``status``, ``doctor`` and ``journal`` are ours. Settings are validated
before anything starts, so a bad value stops the process with one clear line.
"""

from __future__ import annotations

import os
import sys

from agent.settings import SettingsError, load_settings

OUR_COMMANDS = ("simulate", "status", "doctor", "journal")
USAGE = """usage: python -m agent COMMAND [options]

LiveKit worker commands:
  console [--text]   talk to the agent in this terminal (no LiveKit server needed)
  dev                run a worker against LIVEKIT_URL with hot reload
  start              run a production worker against LIVEKIT_URL
  download-files     fetch the model files the plugins need (run at image build)

Operations:
  simulate           run a whole sales call against provider simulators with injected faults
  status             show provider health from the shared health store
  doctor             check settings, keys and quotas of every configured provider
  journal            list calls and their CRM delivery state; show a decrypted transcript
"""


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

        return commands.run(command, args[1:], settings)

    if command == "console" and "--text" not in args:
        from agent.console_check import audio_console_problem

        problem = audio_console_problem()
        if problem:
            sys.stderr.write(f"{problem}\n")
            return 1

    from livekit.agents import cli

    from agent.logs import configure_structlog
    from agent.worker import create_server

    configure_structlog()  # LiveKit's CLI installs the handler (JSON in start, readable in dev)
    os.environ.setdefault("LIVEKIT_LOG_LEVEL", settings.log_level)
    sys.argv = [sys.argv[0], *args]
    cli.run_app(create_server(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
