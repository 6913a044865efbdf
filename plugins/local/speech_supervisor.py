"""Starts the shared local speech service beside the worker and keeps it running.

The worker process owns one :class:`SpeechServiceSupervisor`: it launches
``python -m plugins.local.speech_service``, exports the socket path to job processes
(:data:`plugins.local.speech_client.SOCKET_ENV`) and, when the service dies (a crash, the OOM
killer, a SIGKILL), logs it loudly and starts a new one with a capped backoff. While it is down
the calls' local TTS and STT requests fail fast and their chains fall to the in-process floors
(eSpeak, PocketSphinx); the guards' probes bring the shared models back once it is up again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from plugins.local.speech_client import SOCKET_ENV, SpeechClient, SpeechServiceUnavailableError
from plugins.local.whisper_stt import WhisperOptions

log = structlog.get_logger(__name__)

_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux
_REPO_ROOT = Path(__file__).resolve().parents[2]


def socket_path_for(data_dir: Path) -> str:
    """``DATA_DIR/speech.sock``, or a short path in the temp dir when that would be too long."""
    path = str((Path(data_dir) / "speech.sock").resolve())
    if len(path) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"speech-{digest}.sock")


class SpeechServiceSupervisor:
    """One service process at a time; restarted after ``backoff_s`` (doubling up to 10 s)."""

    def __init__(
        self,
        socket_path: str,
        *,
        models: Sequence[str] = ("stt", "tts"),
        whisper: WhisperOptions | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.socket_path = socket_path
        self.models = tuple(models)
        self.whisper = whisper or WhisperOptions()
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._ready_timeout_s = ready_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._ready = threading.Condition()
        self._up = False
        self.generation = 0  # how many times a service became ready (1 = the first start)
        self._thread: threading.Thread | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "plugins.local.speech_service",
            "--socket", self.socket_path,
            "--models", ",".join(self.models),
            "--stt-model", self.whisper.model,
            "--stt-beam-size", str(self.whisper.beam_size),
            "--stt-threads", str(self.whisper.threads),
            "--stt-window-s", str(self.whisper.window_s),
            "--stt-compute-type", self.whisper.compute_type,
            f"--stt-prompt={self.whisper.prompt}",  # "=": a prompt may start with "-"
        ]  # fmt: skip

    def start(self) -> None:
        """Export the socket path and start supervising (returns at once; see ``wait_ready``)."""
        if self._thread is not None:
            return
        os.environ[SOCKET_ENV] = self.socket_path
        self._thread = threading.Thread(
            target=self._supervise, name="speech-supervisor", daemon=True
        )
        self._thread.start()

    def wait_ready(self, timeout_s: float | None = None, *, newer_than: int = 0) -> bool:
        """Whether a service is up that started after generation ``newer_than``."""
        with self._ready:
            return self._ready.wait_for(
                lambda: self._up and self.generation > newer_than, timeout_s
            )

    def _set_up(self, up: bool) -> None:
        with self._ready:
            self._up = up
            if up:
                self.generation += 1
            self._ready.notify_all()

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        return subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            cwd=str(_REPO_ROOT),
            env=env,
        )

    def _supervise(self) -> None:
        backoff = self._backoff_s
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = self._proc = self._spawn()
            if self._await_ready(proc):
                self._set_up(True)
                log.info("speech_service.up", pid=proc.pid, restarts=self.restarts)
                backoff = self._backoff_s
            rc = proc.wait()
            self._set_up(False)
            if self._stopping.is_set():
                break
            self.restarts += 1
            if time.monotonic() - started > 60:
                backoff = self._backoff_s  # it ran well for a while: not a crash loop
            log.error(
                "speech_service.died",
                returncode=rc,
                restart_in_s=backoff,
                restarts=self.restarts,
                meanwhile="local TTS/STT fall to the in-process floors (eSpeak, PocketSphinx)",
            )
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, self._max_backoff_s)

    def _await_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        assert proc.stdout is not None
        while (line := proc.stdout.readline()).strip() != b"ready":
            if not line:
                return False  # EOF: it died while loading
        # drain anything else it prints so a full pipe never blocks it
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        client = SpeechClient(self.socket_path, client_id="supervisor")
        deadline = time.monotonic() + self._ready_timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(SpeechServiceUnavailableError):
                client.ping(timeout_s=1.0)
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if os.environ.get(SOCKET_ENV) == self.socket_path:
            del os.environ[SOCKET_ENV]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
