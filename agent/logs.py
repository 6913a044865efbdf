"""One logging pipeline for our structlog events and LiveKit's stdlib logging.

Our code logs through structlog; every event is handed to stdlib logging as a message plus
``extra`` fields. Under LiveKit's CLI (``console``, ``dev``, ``start``) LiveKit owns the
handler: JSON lines in production, readable lines in dev, and job processes forward their
records to it. Our own commands (``simulate``, ``status``...) install a handler of the same
two kinds. Either way one event reads the same as LiveKit's own lines beside it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "json", "console"]
_HANDLER_NAME = "never-silent"


class LiveKitNoise(logging.Filter):
    """Two of LiveKit's lines that tell a new user nothing they can act on.

    * ``LIVEKIT_INFERENCE_URL is set but ... missing``: ``AgentSession`` builds its default
      cloud turn detector even when the session is given its own (``agent.worker`` gives the
      local one when there are no LiveKit credentials); the warning is about a detector that is
      thrown away, and names a variable the user never set. Kept when the user did set it.
    * ``event loop blocked``: in ``dev`` and ``console`` (readable logs) the line stays and the
      sampled stack, a dozen frames printed under it, goes; JSON logs keep it for operators.
    * ``no warmed process available`` in the console, which starts its one call the moment the
      worker starts, before any process could be warm: a warning on every console start.
    """

    def __init__(self, *, console: bool = False) -> None:
        super().__init__()
        self.console = console

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if self.console and message.startswith("no warmed process available"):
            return False
        if message.startswith("LIVEKIT_INFERENCE_URL is set but"):
            return "LIVEKIT_INFERENCE_URL" in os.environ
        if message.startswith("event loop blocked") and os.environ.get("LIVEKIT_DEV_MODE"):
            record.__dict__.pop("stack", None)
        return True


def quiet_livekit_noise(*, console: bool = False) -> None:
    livekit = logging.getLogger("livekit.agents")
    for old in [f for f in livekit.filters if isinstance(f, LiveKitNoise)]:
        if old.console or not console:
            return
        livekit.removeFilter(old)
    livekit.addFilter(LiveKitNoise(console=console))


def configure_structlog() -> None:
    """Route structlog to stdlib logging; idempotent, safe in every job process."""
    quiet_livekit_noise()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.render_to_log_kwargs,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def install_handler(*, fmt: LogFormat = "auto", level: str = "INFO") -> None:
    """A stderr handler for commands that do not run under LiveKit's CLI."""
    configure_structlog()
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.ExtraAdder(),
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != _HANDLER_NAME]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("asyncio", "aiohttp.access", "httpx", "httpcore", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
