"""Graceful drain: LiveKit's own, plus delivering the journal before the process exits.

In ``start`` mode LiveKit already drains on SIGTERM/SIGINT (``cli._run_worker``): the worker
reports ``WS_FULL`` with ``draining``, refuses new jobs, waits for running jobs up to
``drain_timeout``, then closes its process pool; a second signal exits at once (``os._exit``).
What LiveKit cannot know is that our calls leave work behind: each call's transcript note (and
any CRM write) sits in the durable journal until the deliverer sends it. So this module adds

* :class:`JournalFlush`: the worker process's deliverer. One pass at start (it also closes the
  calls of job processes that died, so their transcripts are queued) and a loop while the worker
  runs; after the last call has ended, a final drain bounded by ``flush_timeout_s``.
* :class:`DrainingServer`: an ``AgentServer`` whose ``aclose()`` (called by LiveKit after its
  drain, i.e. after every job process is gone) runs that final flush. It also serves the health
  port (:mod:`agent.readiness`: ``/ready`` turns 503 as soon as the drain starts, so no new
  call is routed here) and remembers why ``run()`` failed, because LiveKit's CLI logs such a
  failure and still exits 0: :mod:`agent.launch` turns it into a non-zero exit.

The journal is SQLite with one fsync'd transaction per record, so the forced exit of a second
signal can cut delivery short but cannot corrupt it: what was not delivered is delivered by the
next worker that starts on the same data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from livekit.agents import AgentServer

from agent.load import WorkerLoad
from agent.readiness import HealthEndpoint
from agent.settings import Settings
from plugins.local.speech_supervisor import SpeechServiceSupervisor

log = structlog.get_logger(__name__)

FLUSH_TIMEOUT_S = 20.0
# Wait this long for the shared speech models before taking calls; later, calls start on the
# in-process floors and move up once the guards see the service answer.
SPEECH_READY_TIMEOUT_S = 15.0


class JournalFlush:
    """Delivers the journal's outbox from the worker process: at start, while running, at end."""

    def __init__(self, settings: Settings, *, flush_timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        self._settings = settings
        self.flush_timeout_s = flush_timeout_s
        self._deliverer: Any = None
        self._client: Any = None
        self._store: Any = None
        self.flushed: bool | None = None  # the final drain's result, once it ran

    @property
    def configured(self) -> bool:
        s = self._settings
        return bool(s.secret("ghl_api_key") and s.ghl_location_id and s.secret("encryption_key"))

    async def start(self) -> None:
        if not self.configured:
            s = self._settings
            missing = [
                name.upper()
                for name, value in (
                    ("ghl_api_key", s.secret("ghl_api_key")),
                    ("ghl_location_id", s.ghl_location_id),
                    ("encryption_key", s.secret("encryption_key")),
                )
                if not value
            ]
            log.info(
                "journal delivery to the CRM off: transcripts and leads stay in the journal "
                f"until {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} set",
                missing=missing,
            )
            return
        from agent.crm.ghl_client import GhlClient
        from agent.journal.deliverer import OutboxDeliverer
        from agent.journal.store import JournalStore

        s = self._settings
        Path(s.data_dir).mkdir(parents=True, exist_ok=True)
        self._store = JournalStore.in_dir(
            s.data_dir, s.secret("encryption_key"), previous_keys=s.journal_previous_keys()
        )
        self._client = GhlClient(
            api_key=s.secret("ghl_api_key") or "",
            location_id=s.ghl_location_id or "",
            base_url=str(s.ghl_base_url).rstrip("/"),
        )
        self._deliverer = OutboxDeliverer(self._store, self._client)
        try:
            report = await self._deliverer.deliver_once()
            log.info(
                "journal delivery started",
                delivered=report.delivered,
                recovered_calls=report.recovered_calls,
                imported_spools=report.imported_spools,
                waiting=report.waiting,
            )
        except Exception:  # the loop below logs the fault once and retries
            log.exception("first journal delivery pass failed; delivery keeps retrying")
        self._deliverer.start()

    async def flush(self) -> bool | None:
        """The final drain; True when nothing is left to deliver, None when delivery is off."""
        if self._deliverer is None:
            return None
        await self._deliverer.aclose()
        try:
            self.flushed = await self._deliverer.drain(self.flush_timeout_s)
        except Exception:
            log.exception("journal flush failed; undelivered items stay in the journal")
            self.flushed = False
        try:
            pending: int | None = len(self._store.pending())
        except Exception:
            pending = None
        log.info("journal flushed" if self.flushed else "journal left pending", pending=pending)
        with contextlib.suppress(Exception):
            await self._client.aclose()
        with contextlib.suppress(Exception):
            self._store.close()
        self._deliverer = None
        return self.flushed


class DrainingServer(AgentServer):
    """An ``AgentServer`` that flushes the journal after LiveKit's drain has let calls end.

    It also runs what belongs to the machine rather than to a call: the background reader of
    each provider's remaining credit (one per worker, not one per call).
    """

    def __init__(
        self,
        *,
        journal: JournalFlush | None = None,
        settings: Settings | None = None,
        health: HealthEndpoint | None = None,
        speech: SpeechServiceSupervisor | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.speech = speech
        self.journal = journal
        self.health = health
        self.failure: str | None = None  # why run() stopped, when it did not stop cleanly
        self._settings = settings
        self._journal_start: asyncio.Task[None] | None = None
        self._health_start: asyncio.Task[None] | None = None
        self._register_deadline: asyncio.Task[None] | None = None
        self._credit: Any = None
        if journal is not None:
            self.on("worker_started", self._start_journal)
        if settings is not None:
            self.on("worker_started", self._start_credit_watch)
        if health is not None:
            health.attach(self)
            self.on("worker_started", self._start_health)

    async def run(self, *, devmode: bool = False, unregistered: bool = False) -> None:
        """LiveKit's ``run()``; a failure is logged as one line and kept in :attr:`failure`.

        The shared local speech service starts first: its socket path must be in the
        environment before LiveKit forks job processes, and its models loaded before a call
        arrives (as LiveKit initialises its own inference process before taking jobs).
        """
        if self.speech is not None:
            self.speech.start()
            if not await asyncio.to_thread(self.speech.wait_ready, SPEECH_READY_TIMEOUT_S):
                log.error(
                    "local speech service not ready; calls use the in-process floors until it is",
                    waited_s=SPEECH_READY_TIMEOUT_S,
                )
        if not unregistered and self._settings is not None:
            self.on("worker_started", self._start_register_deadline)
        try:
            await super().run(devmode=devmode, unregistered=unregistered)
        except Exception as e:
            first_line = (str(e).strip().splitlines() or [""])[0]
            self.failure = f"{type(e).__name__}: {first_line}"
            log.error("worker stopped", reason=self.failure)

    def _start_register_deadline(self) -> None:
        assert self._settings is not None
        self._register_deadline = asyncio.get_running_loop().create_task(
            self._stop_unless_registered(self._settings.livekit_register_timeout),
            name="livekit-register-deadline",
        )

    async def _stop_unless_registered(self, timeout_s: float) -> None:
        """LiveKit retries an unreachable server for ever; an operator needs a crash they see."""
        registered = asyncio.Event()
        self.on("worker_registered", lambda *_: registered.set())
        try:
            await asyncio.wait_for(registered.wait(), timeout_s)
        except TimeoutError:
            url = self._settings.livekit_url if self._settings is not None else None
            self.failure = (
                f"not registered with LiveKit at {url} within {timeout_s:g} s: check that "
                "LIVEKIT_URL is reachable from here and that LIVEKIT_API_KEY and "
                "LIVEKIT_API_SECRET are right (LIVEKIT_REGISTER_TIMEOUT sets this limit)"
            )
            log.error("worker stopped", reason=self.failure)
            await self.aclose()

    def _start_health(self) -> None:
        assert self.health is not None
        self._health_start = asyncio.get_running_loop().create_task(
            self.health.start(), name="health-endpoint-start"
        )

    def _start_credit_watch(self) -> None:
        from agent.call import call_specs, open_health_store
        from plugins.observability.credit_watch import CreditWatcher

        assert self._settings is not None
        specs = call_specs(self._settings)
        self._credit = CreditWatcher(specs, open_health_store(self._settings))
        self._credit.start()

    def _start_journal(self) -> None:
        assert self.journal is not None
        self._journal_start = asyncio.get_running_loop().create_task(
            self.journal.start(), name="journal-delivery-start"
        )

    async def aclose(self) -> None:
        await super().aclose()  # every job process has exited: their calls are journaled
        if self.speech is not None:
            await asyncio.to_thread(self.speech.stop)
        if self._credit is not None:
            await self._credit.aclose()
        if self.health is not None:
            if self._health_start is not None:
                with contextlib.suppress(Exception):
                    await self._health_start
            await self.health.aclose()
        if self.journal is None:
            return
        if self._journal_start is not None:
            with contextlib.suppress(Exception):
                await self._journal_start
        await self.journal.flush()


def production_server(
    settings: Settings,
    *,
    setup_fnc: Callable[..., Any],
    health: HealthEndpoint | None = None,
    metrics: bool = True,
    journal: JournalFlush | None = None,
    extra_options: Mapping[str, Any] | None = None,
    speech: SpeechServiceSupervisor | None = None,
) -> DrainingServer:
    """The worker's ``AgentServer`` with the production options, all from ``settings``: the
    LiveKit URL, key and secret, log level, our load function and threshold, the drain timeout,
    metrics, the health endpoint, the journal flush and the shared local speech service its
    chains need (``speech``; by default the one the settings call for).

    ``health`` serves HEALTH_PORT (see :mod:`agent.readiness`); LiveKit's own health server
    then listens on a port the OS picks. ``metrics=False`` (the console) binds no metrics port.
    ``extra_options`` are further ``AgentServer`` options (a benchmark on a loaded machine
    gives job processes longer to prewarm).
    """
    if speech is None:
        from agent.local_speech import speech_service_for

        speech = speech_service_for(settings)
    options: dict[str, Any] = {
        "ws_url": settings.livekit_url,
        "api_key": settings.secret("livekit_api_key"),
        "api_secret": settings.secret("livekit_api_secret"),
        "log_level": settings.livekit_log_level,
        "setup_fnc": setup_fnc,
        "load_fnc": WorkerLoad(settings.data_dir),
        "load_threshold": settings.load_threshold,
        "drain_timeout": settings.drain_timeout,
        "port": 0,
    }
    if metrics and settings.metrics_port is not None:
        # Every job process writes its series there; the worker's /metrics aggregates them.
        options["prometheus_port"] = settings.metrics_port
        options["prometheus_multiproc_dir"] = str(Path(settings.data_dir) / "prometheus")
    options.update(extra_options or {})
    return DrainingServer(
        journal=journal or JournalFlush(settings),
        settings=settings,
        health=health,
        speech=speech,
        **options,
    )
