"""The worker's load: CPU now, plus the CPU its running calls are about to need.

LiveKit decides whether a worker takes another call from ``load_fnc`` (default: a 2.5 s moving
average of CPU). That average lags what matters here: a call that fell back to the local TTS or
STT costs several times the CPU of a call on cloud providers, but only while it speaks or
listens, so a worker full of such calls can look idle between turns, accept more, and then
every call's replies slow down at once. So the load is the larger of

* the CPU moving average (what LiveKit measures), and
* the *projected* load: the sum over running calls of a per-call weight that depends on which
  provider serves each slot of that call.

Calls run in their own processes, so each call reports its providers in a small JSON file per
job under ``DATA_DIR/load/`` (:class:`JobLoadReporter`, written on start and on every provider
switch, removed at the end); the worker process sums the files of live processes
(:class:`WorkerLoad`). The weights are the fraction of a 2-core worker one call uses, measured by
``python -m bench.capacity`` (see ``bench/results/capacity.md``), not guessed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:  # the tracker pulls in LiveKit; the load report is read without it
    from plugins.observability.switches import SwitchEvent, SwitchTracker

log = structlog.get_logger(__name__)

LOAD_DIR = "load"
SLOTS = ("stt", "llm", "tts")


@dataclass(frozen=True)
class CallWeights:
    """CPU share of one 2-core worker that one call uses, by what serves its slots.

    ``base`` is a call whose slots are all on cloud providers (VAD, turn detection, audio
    plumbing, the session itself); ``extra`` adds what a local provider costs on top, per
    ``slot:provider``. A call on ``free-stt`` and ``local-tts`` weighs
    ``base + extra["stt:free-stt"] + extra["tts:local-tts"]``.
    """

    base: float
    extra: Mapping[str, float]

    def weight(self, providers: Mapping[str, str]) -> float:
        return self.base + sum(
            self.extra.get(f"{slot}:{name}", 0.0) for slot, name in providers.items()
        )


#: The measured weights: written by ``python -m bench.capacity`` (on a quiet machine), read here.
WEIGHTS_FILE = Path(__file__).with_name("measured_weights.json")


def load_weights(path: Path = WEIGHTS_FILE) -> CallWeights:
    """The weights ``bench.capacity`` measured: a call weighs 1/capacity of its configuration,
    so the projected load reaches 1.0 at the measured capacity; the local call's extra is split
    between STT and TTS by the CPU the single-slot runs added. Keys the bench does not measure
    (``stt:free-stt``) keep their last measured value. The file ships with the package; a
    missing or damaged one is a packaging error and says so."""
    try:
        raw = json.loads(path.read_text())
        base = float(raw["base"])
        extra = {str(k): float(v) for k, v in dict(raw["extra"]).items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RuntimeError(
            f"the worker's measured load weights at {path} are unreadable ({e}); restore the "
            "file from the package or re-measure with `python -m bench.capacity`"
        ) from e
    if not 0.0 < base <= 1.0 or any(not 0.0 <= v <= 1.0 for v in extra.values()):
        raise RuntimeError(f"{path}: weights must be fractions of the worker (0..1), got {raw}")
    return CallWeights(base=base, extra=extra)


MEASURED_WEIGHTS = load_weights()


def load_dir(data_dir: Path) -> Path:
    return Path(data_dir) / LOAD_DIR


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the job side ---------------------------------------------------------------------------


class JobLoadReporter:
    """Keeps ``DATA_DIR/load/<job_id>.json`` saying which provider serves each slot of a call.

    Writes are atomic (temporary file + rename), so the worker never reads half a report.
    """

    def __init__(self, data_dir: Path, job_id: str, *, pid: int | None = None) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)
        if not safe:
            raise ValueError("job_id is empty; pass the LiveKit job id of the call")
        self.path = load_dir(data_dir) / f"{safe}.json"
        self.pid = os.getpid() if pid is None else pid
        self.providers: dict[str, str] = {}

    def update(self, providers: Mapping[str, str | None]) -> None:
        changed = False
        for slot, name in providers.items():
            if name and self.providers.get(slot) != name:
                self.providers[slot] = name
                changed = True
        if changed or not self.path.exists():
            self._write()

    def _write(self) -> None:
        """A full or read-only DATA_DIR must not end the call: the report is only a hint for
        the worker's load, written again at the next switch."""
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(
                json.dumps(
                    {"pid": self.pid, "providers": self.providers, "updated_at": time.time()}
                )
            )
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("call load report not written; the call goes on", error=str(e))
            with contextlib.suppress(OSError):
                tmp.unlink()

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def watch(self, tracker: SwitchTracker) -> Callable[[], None]:
        """Follow a call through its switch tracker (the call's one tracker): report the
        provider each slot is on now and after every switch. Returns a function that stops
        watching and removes the report."""

        def on_switch(_event: SwitchEvent) -> None:
            self.update({s: tracker.current(s) for s in SLOTS})

        tracker.subscribe(on_switch)
        self.update({slot: tracker.current(slot) for slot in SLOTS})

        def stop() -> None:
            tracker.unsubscribe(on_switch)
            self.close()

        return stop


# -- the worker side ------------------------------------------------------------------------


def running_calls(data_dir: Path) -> list[dict[str, str]]:
    """The provider maps of calls whose process is alive; stale reports are removed."""
    calls: list[dict[str, str]] = []
    directory = load_dir(data_dir)
    if not directory.is_dir():
        return calls
    for path in directory.glob("*.json"):
        try:
            report = json.loads(path.read_text())
            pid = int(report["pid"])
            providers = {str(k): str(v) for k, v in dict(report["providers"]).items()}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced right now, or not ours
        if not _pid_alive(pid):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        calls.append(providers)
    return calls


def projected_load(data_dir: Path, weights: CallWeights = MEASURED_WEIGHTS) -> float:
    return sum(weights.weight(providers) for providers in running_calls(data_dir))


class CpuAverage:
    """Moving average of whole-machine CPU (0..1), sampled on a daemon thread like LiveKit's
    default load function (5 samples of 0.5 s)."""

    def __init__(self, samples: int = 5, interval_s: float = 0.5) -> None:
        from livekit.agents.utils import MovingAverage
        from livekit.agents.utils.hw import get_cpu_monitor

        self._avg = MovingAverage(samples)
        self._monitor = get_cpu_monitor()
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            sample = self._monitor.cpu_percent(interval=self._interval_s)
            with self._lock:
                self._avg.add_sample(sample)

    def __call__(self) -> float:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-average")
            self._thread.start()
        with self._lock:
            return float(self._avg.get_avg())


class WorkerLoad:
    """``AgentServer(load_fnc=WorkerLoad(data_dir))``: max(CPU average, projected load)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        weights: CallWeights = MEASURED_WEIGHTS,
        cpu: Callable[[], float] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.weights = weights
        self._cpu = cpu
        self.last_cpu = 0.0
        self.last_projected = 0.0

    def __call__(self) -> float:
        if self._cpu is None:
            self._cpu = CpuAverage()
        self.last_cpu = self._cpu()
        self.last_projected = projected_load(self.data_dir, self.weights)
        return min(max(self.last_cpu, self.last_projected), 1.0)
