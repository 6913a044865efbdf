"""Fixtures shared by the whole suite.

``redis_url``: a real redis-server for the session, on a free 127.0.0.1 port, working in a
temporary directory with persistence off, stopped when the session ends. Tests that share it
isolate themselves with their own key prefix (see ``redis_prefix``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_REDIS_START_DEADLINE_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a private redis-server started for this test session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH: run `make test`, which installs it "
            "(or `apt-get install redis-server`)",
            pytrace=False,
        )
    workdir = Path(tempfile.mkdtemp(prefix="nsa-redis-"))
    last_error = ""
    for _ in range(3):  # a free port can be taken between probing and binding
        port = _free_port()
        log = workdir / f"redis-{port}.log"
        proc = subprocess.Popen(
            [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(workdir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--protected-mode", "yes",
                "--logfile", str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + _REDIS_START_DEADLINE_S
        while time.monotonic() < deadline and proc.poll() is None and not _ping(port):
            time.sleep(0.02)
        if proc.poll() is None and _ping(port):
            break
        proc.kill()
        proc.wait()
        last_error = log.read_text(errors="replace")[-500:] if log.exists() else ""
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.fail(f"redis-server did not start on 127.0.0.1: {last_error}", pytrace=False)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, so tests can share the session's redis-server."""
    return f"test:{uuid.uuid4().hex[:12]}:"
