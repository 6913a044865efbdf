"""A new user's first minute: ``python -m agent console --text`` with an empty environment.

No ``.env``, no key of any kind, and another process already holding port 8081 (a second
console, or a worker, on the same machine). Driven through tmux as a person would drive it,
the test reads every line the user sees:

* the console starts anyway (it binds no health port) and says it created a local key file,
  owner-only, so the leads of this call are kept;
* the agent's greeting is on the screen before the user types;
* no warning about settings the user never set, no interruption-detector error, no traceback;
* Ctrl-C ends it with exit 0 and no ``RuntimeWarning``;
* the transcript is in the journal, readable afterwards with no ENCRYPTION_KEY set.
"""

from __future__ import annotations

import os
import shlex
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.journal.crypto import KEY_FILE_NAME
from tests.test_console import ROOT, _tmux, _wait_for


@pytest.fixture
def port_8081_taken() -> Iterator[None]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("", 8081))
    except OSError:
        pass  # already held by someone else on this machine: the situation under test
    else:
        sock.listen()
    yield
    sock.close()


@pytest.mark.timeout(300)
def test_first_minute_of_the_text_console(tmp_path: Path, port_8081_taken: None) -> None:
    session = f"first-minute-{uuid.uuid4().hex[:8]}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "TERM": "xterm",
    }
    env_words = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = (
        f"cd {shlex.quote(str(tmp_path))} && env -i {env_words} "
        f"{shlex.quote(sys.executable)} -m agent console --text; echo CONSOLE-EXIT=$?; sleep 600"
    )
    _tmux("new-session", "-d", "-s", session, "-x", "200", "-y", "50", command)
    try:
        text = _wait_for(session, "Hi, this is Alex", 150)  # the greeting, before any input
        assert "created the key file data/encryption.key" in text
        _tmux("send-keys", "-t", session, "How much does it cost?", "Enter")
        _wait_for(session, "forty nine dollars a month", 60)
        _tmux("send-keys", "-t", session, "C-c")
        text = _wait_for(session, "CONSOLE-EXIT=", 60)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=30)

    assert "CONSOLE-EXIT=0" in text, text[-3000:]
    for noise in (
        "Traceback",
        "RuntimeWarning",
        "LIVEKIT_INFERENCE_URL",
        "AdaptiveInterruptionDetector",
        "address already in use",
        "loop thread sampled",  # a stack dump under an "event loop blocked" line
    ):
        assert noise not in text, f"{noise!r} on the console:\n{text[-4000:]}"

    key_file = tmp_path / "data" / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
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
    assert shown.returncode == 0, shown.stderr
    assert "how much does it cost" in shown.stdout.lower()
    assert "forty nine dollars" in shown.stdout
