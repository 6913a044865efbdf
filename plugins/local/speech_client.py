"""A job process's way to the worker's shared local speech service.

When the worker runs the service (:mod:`plugins.local.speech_supervisor`) it exports the socket
path in :data:`SOCKET_ENV`; job processes inherit it, and the local TTS and STT send their work
there instead of loading models themselves. Every failure (no service, refused, killed
mid-request, overloaded, too slow) raises :class:`SpeechServiceUnavailableError` quickly, which the
providers turn into LiveKit ``APIError``: the chain moves to the in-process floor.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from plugins.local.audio import Int16Array, require_mono_int16
from plugins.local.speech_wire import recv_message, send_message

SOCKET_ENV = "LOCAL_SPEECH_SOCKET"
CONNECT_TIMEOUT_S = 0.25


class SpeechServiceUnavailableError(RuntimeError):
    """The shared speech service could not serve this request; use an in-process floor."""


class SpeechClient:
    """Blocking client (call it from a worker thread); one connection per request."""

    def __init__(self, socket_path: str, *, client_id: str | None = None) -> None:
        self.socket_path = socket_path
        # requests are queued fairly per client: one job process is one client
        self.client_id = client_id or f"pid-{os.getpid()}"

    def request(
        self,
        header: dict[str, Any],
        payload: bytes = b"",
        *,
        timeout_s: float,
        on_connect: Callable[[socket.socket], None] | None = None,
    ) -> tuple[dict[str, Any], bytes]:
        """One request. ``on_connect`` receives the socket: shutting it down (from any thread)
        withdraws the request; the service drops it unrun if it has not started it."""
        deadline = time.monotonic() + timeout_s
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if on_connect is not None:
            on_connect(sock)
        try:
            sock.settimeout(min(CONNECT_TIMEOUT_S, timeout_s))
            try:
                sock.connect(self.socket_path)
            except OSError as e:
                raise SpeechServiceUnavailableError(
                    f"local speech service not reachable at {self.socket_path}: {e}"
                ) from e
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                send_message(
                    sock,
                    {**header, "client": self.client_id, "timeout_s": timeout_s},
                    payload,
                )
                reply, data = recv_message(sock)
            except TimeoutError as e:
                raise SpeechServiceUnavailableError(
                    f"local speech service gave no answer within {timeout_s:.1f} s"
                ) from e
            except (ConnectionError, OSError) as e:
                raise SpeechServiceUnavailableError(f"local speech service failed: {e}") from e
        finally:
            sock.close()
        if not reply.get("ok"):
            raise SpeechServiceUnavailableError(
                f"local speech service refused: {reply.get('error', 'no reason given')}"
            )
        return reply, data

    def transcribe(
        self,
        pcm: Int16Array,
        sample_rate: int,
        *,
        timeout_s: float = 10.0,
        on_connect: Callable[[socket.socket], None] | None = None,
    ) -> str:
        require_mono_int16(pcm)
        reply, _ = self.request(
            {"op": "transcribe", "sample_rate": sample_rate},
            pcm.tobytes(),
            timeout_s=timeout_s,
            on_connect=on_connect,
        )
        return str(reply.get("text", ""))

    def synthesize(self, text: str, *, speed: float = 1.0, timeout_s: float = 10.0) -> Int16Array:
        _reply, data = self.request(
            {"op": "synthesize", "text": text, "speed": speed}, timeout_s=timeout_s
        )
        return np.frombuffer(data, dtype=np.int16).copy()

    def ping(self, *, timeout_s: float = 1.0) -> dict[str, Any]:
        """The service's state (pid, loaded models, per-client counts)."""
        reply, _ = self.request({"op": "ping"}, timeout_s=timeout_s)
        return reply


_clients: dict[str, SpeechClient] = {}
_clients_lock = threading.Lock()


def service_client() -> SpeechClient | None:
    """The client for the worker's service, or None when this process should run models itself
    (console, ``transcribe``, benchmarks, tests: no service exported)."""
    path = os.environ.get(SOCKET_ENV, "").strip()
    if not path:
        return None
    with _clients_lock:
        client = _clients.get(path)
        if client is None or client.client_id != f"pid-{os.getpid()}":
            client = _clients[path] = SpeechClient(path)
        return client
