"""Helpers for the production tests: run real worker processes against the dispatch server.

A worker is started exactly as in production (``python -m agent start``, or the drain test's
app with the same server options) with ``LIVEKIT_URL`` pointing at a
:class:`~plugins.sim.livekit_dispatch.DispatchServer`, fake credentials and its own data
directory. Its output goes to a log file that a failing test prints.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sim-key"
API_SECRET = "sim-secret-0123456789abcdef0123456789abcdef"
ENCRYPTION_KEY = "0123456789abcdef0123456789abcdef"  # obviously fake, 32 characters

# Every provider key and URL a developer's shell may carry: a test worker runs on local
# providers (or the simulators a test names) only.
_PROVIDER_ENV = (
    "CARTESIA_API_KEY",
    "DEEPGRAM_API_KEY",
    "OPENROUTER_API_KEY",
    "OPENAI_API_KEY",
    "GOOGLE_API_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "ELEVENLABS_API_KEY",
    "GHL_API_KEY",
    "REDIS_URL",
    "METRICS_PORT",
)


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL of the whole process group if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


def worker_env(
    dispatch_url: str, data_dir: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PROVIDER_ENV}
    env.update(
        {
            "LIVEKIT_URL": dispatch_url,
            "LIVEKIT_API_KEY": API_KEY,
            "LIVEKIT_API_SECRET": API_SECRET,
            "ENCRYPTION_KEY": ENCRYPTION_KEY,  # `start` refuses to run without one
            "DATA_DIR": str(data_dir),
            "HEALTH_PORT": "0",
            "LOG_FORMAT": "json",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def start_worker(
    dispatch_url: str,
    data_dir: Path,
    *,
    argv: Sequence[str] = ("-m", "agent", "start"),
    extra_env: Mapping[str, str] | None = None,
    log_name: str = "worker.log",
) -> WorkerProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / log_name
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            env=worker_env(dispatch_url, data_dir, extra_env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: job processes die with it
        )
    return WorkerProcess(proc, log_path)
