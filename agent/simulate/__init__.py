"""``python -m agent simulate``: a whole sales call against provider simulators, with faults.

No key, no network and no LiveKit server are needed: every cloud provider is its real plugin
pointed at an in-process simulator, and the caller is synthesized speech on a virtual phone
line. Exit codes: 0 every turn answered and the expected switches seen; 1 a turn got no
spoken answer; 2 bad arguments; 3 answered, but an expected switch or recovery was missing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from pathlib import Path
from typing import TextIO

from agent.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent simulate",
        description="Run a whole sales call against provider simulators with injected faults.",
    )
    parser.add_argument("--scenario", "-s", help="which scenario to run (see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--save-audio", type=Path, metavar="DIR", help="write the call as WAV")
    parser.add_argument("--json", action="store_true", help="print one JSON report at the end")
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="also show the agent's logs (on stderr)"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="play the call this many times faster than real time (1-4; default 1)",
    )
    parser.add_argument(
        "--turns",
        type=int,
        metavar="N",
        help="play only the caller's first N lines (default: the scenario's whole call)",
    )
    return parser


def show_health_log(out: TextIO, *, verbose: bool) -> logging.Handler:
    """Print the health logger's lines, as they are, among the call's live lines."""
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    health = logging.getLogger("health")
    health.addHandler(handler)
    health.setLevel(logging.INFO)
    health.propagate = verbose  # with --verbose the full records also go to stderr
    return handler


def run(argv: list[str], settings: Settings) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)

    from agent.simulate.report import LiveWriter, as_json, list_scenarios, write_summary
    from agent.simulate.scenarios import get_scenario

    if args.list:
        list_scenarios(sys.stdout)
        return 0
    if not args.scenario:
        sys.stderr.write("simulate: name a scenario with --scenario NAME (--list shows them)\n")
        return 2
    try:
        scenario = get_scenario(args.scenario)
    except ValueError as e:
        sys.stderr.write(f"simulate: {e}\n")
        return 2
    if not 1.0 <= args.speed <= 4.0:
        sys.stderr.write(f"simulate: --speed must be between 1 and 4, got {args.speed}\n")
        return 2

    if args.turns is not None:
        if not 1 <= args.turns <= len(scenario.caller):
            sys.stderr.write(
                f"simulate: --turns must be between 1 and {len(scenario.caller)} "
                f"(the caller's lines in {scenario.name}), got {args.turns}\n"
            )
            return 2
        scenario = dataclasses.replace(scenario, caller=scenario.caller[: args.turns])

    from agent.logs import install_handler
    from agent.simulate.runner import run_scenario

    # the live transcript shows the call and the health log's lines (the seed's story); the
    # rest of the logs that explain them are opt-in
    install_handler(fmt="console", level="INFO" if args.verbose else "CRITICAL")
    listener = None if args.json else LiveWriter(sys.stdout)
    if not args.json:
        show_health_log(sys.stdout, verbose=args.verbose)
    report = asyncio.run(
        run_scenario(
            scenario, settings, listener=listener, speed=args.speed, save_audio=args.save_audio
        )
    )
    if args.json:
        sys.stdout.write(as_json(report) + "\n")
    else:
        write_summary(report, sys.stdout)
    return report.exit_code
