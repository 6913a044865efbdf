"""Our operational commands. Each lives in its own module; this only routes to it."""

from __future__ import annotations

from agent.settings import Settings


def run(command: str, argv: list[str], settings: Settings) -> int:
    if command == "simulate":
        from agent import simulate

        return simulate.run(argv, settings)
    if command == "status":
        from agent.ops import status

        return status.run(argv, settings)
    if command == "doctor":
        from agent.ops import doctor

        return doctor.run(argv, settings)
    if command == "journal":
        from agent.journal import cli as journal_cli

        return journal_cli.run(
            argv,
            data_dir=settings.data_dir,
            encryption_key=settings.secret("encryption_key"),
            previous_keys=settings.journal_previous_keys(),
        )
    if command == "transcribe":
        from agent import transcribe

        return transcribe.run(argv, settings)
    raise ValueError(f"unknown command {command!r}")
