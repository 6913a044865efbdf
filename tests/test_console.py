"""``python -m agent console --text`` on an empty environment: the free LLM answers a typed
message. Driven through tmux, as a person at a terminal would drive it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY = "0123456789abcdef0123456789abcdef"


def _tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], check=True, capture_output=True, text=True, timeout=30
    ).stdout


def _wait_for(session: str, needle: str, timeout_s: float) -> str:
    """The terminal's screen and scroll-back once ``needle`` is on it."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = _tmux("capture-pane", "-p", "-J", "-S", "-2000", "-t", session)
        if needle in text:
            return text
        time.sleep(0.2)  # polling another process's screen; the deadline bounds it
    raise AssertionError(f"{needle!r} not seen within {timeout_s}s; last output:\n{text[-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_console_text_answers_with_no_keys(tmp_path: Path) -> None:
    session = f"console-{uuid.uuid4().hex[:8]}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DATA_DIR": str(tmp_path / "data"),
        "TERM": "xterm",
        "ENCRYPTION_KEY": KEY,
    }
    env_words = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = (
        f"cd {shlex.quote(str(tmp_path))} && env -i {env_words} "
        f"{shlex.quote(sys.executable)} -m agent console --text; sleep 600"
    )
    _tmux("new-session", "-d", "-s", session, "-x", "200", "-y", "50", command)
    try:
        _wait_for(session, "Type to talk to your agent", 120)
        text = _wait_for(session, "chains built", 30)
        assert "llm:free-llm" in text  # with no keys the LLM chain is the free LLM alone
        _tmux("send-keys", "-t", session, "Hi, how much does it cost?", "Enter")
        text = _wait_for(session, "forty nine dollars a month", 60)
        assert "Traceback" not in text
        # The call was journaled as it happened: the transcript is readable with the key.
        journal = subprocess.run(
            [sys.executable, "-m", "agent", "journal", "list"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert journal.returncode == 0, journal.stderr
        call_id = next(w for w in journal.stdout.split() if w.startswith("mock-job-"))
        shown = subprocess.run(
            [sys.executable, "-m", "agent", "journal", "show", call_id],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "how much does it cost" in shown.stdout.lower(), shown.stdout + shown.stderr
        assert "forty nine dollars" in shown.stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=30)
