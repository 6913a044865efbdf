"""The worker's shared local speech service: each local model loaded once per machine.

LiveKit runs every call in its own process; a model loaded by each of them costs its weights N
times, and a provider outage that moves N calls to the local voice at once would load N copies
exactly when the machine is busiest. Here one process per worker holds Whisper (local-stt) and
hibari (local-tts); job processes send it audio or text over a Unix socket
(:mod:`plugins.local.speech_wire`) and carry no weights themselves.

Fairness: each model has one inference thread fed by a :class:`FairQueue` that takes requests
round-robin across job processes (clients), so one call's burst of sentences cannot starve
another call's turn; a client with too many requests waiting is refused at once (its chain
falls back) rather than queued past any useful deadline, and a request whose caller has given up
is dropped unrun. The service exits when its parent (the worker) dies; the worker's
:mod:`plugins.local.speech_supervisor` restarts it if it dies first.

Run: ``python -m plugins.local.speech_service --socket PATH [--models stt,tts] ...``; it prints
``ready`` once the models are loaded and the socket is listening.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import structlog

from plugins.local.speech_wire import recv_message, send_message

log = structlog.get_logger(__name__)

T = TypeVar("T")
MAX_PENDING_PER_CLIENT = 8
#: How often a waiting request checks that its caller is still there.
WITHDRAW_POLL_S = 0.05
MODELS = ("stt", "tts")


class FairQueue(Generic[T]):
    """Round-robin across clients: the next item comes from the client after the last served.

    Thread-safe. ``put`` refuses (returns False) when the client already has ``max_pending``
    items waiting, so an overloaded caller learns it at once.
    """

    def __init__(self, *, max_pending: int = MAX_PENDING_PER_CLIENT) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._max_pending = max_pending
        self._queues: dict[str, collections.deque[T]] = {}
        self._order: collections.deque[str] = collections.deque()  # clients with work, in turn
        self._cond = threading.Condition()
        self._closed = False

    def put(self, client: str, item: T) -> bool:
        with self._cond:
            queue = self._queues.setdefault(client, collections.deque())
            if len(queue) >= self._max_pending:
                return False
            if not queue:
                self._order.append(client)
            queue.append(item)
            self._cond.notify()
            return True

    def get(self, timeout_s: float | None = None) -> T | None:
        """The next item in turn, or None on timeout or after ``close``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._order or self._closed, timeout_s):
                return None
            if not self._order:
                return None
            client = self._order.popleft()
            queue = self._queues[client]
            item = queue.popleft()
            if queue:
                self._order.append(client)  # back of the line
            else:
                del self._queues[client]
            return item

    def depth(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class Job:
    op: str
    header: dict[str, Any]
    payload: bytes
    client: str
    expires_at: float
    done: threading.Event = field(default_factory=threading.Event)
    withdrawn: bool = False  # the caller hung up before it ran: drop it unrun
    reply: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""


class SpeechService:
    """The models and their inference threads; transport-independent (see :func:`serve`)."""

    def __init__(self, models: tuple[str, ...], whisper: Any = None) -> None:
        unknown = set(models) - set(MODELS)
        if unknown or not models:
            raise ValueError(f"models must be some of {', '.join(MODELS)}; got {models}")
        self.models = models
        self.started_at = time.time()
        self._runners: dict[str, Callable[[Job], None]] = {}
        self._queues: dict[str, FairQueue[Job]] = {}
        self.served: collections.Counter[str] = collections.Counter()  # per client
        self.running: collections.Counter[str] = collections.Counter()  # per op, now
        self.refused = 0
        self.expired = 0
        self.withdrawn = 0
        if "stt" in models:
            from plugins.local.whisper_stt import WhisperEngine, WhisperOptions

            engine = WhisperEngine.shared(whisper or WhisperOptions())
            self.stt_model = engine.model_name

            def transcribe(job: Job) -> None:
                pcm = np.frombuffer(job.payload, dtype=np.int16)
                job.reply["text"] = engine.transcribe(pcm, int(job.header["sample_rate"]))

            self._runners["transcribe"] = transcribe
            self._queues["transcribe"] = FairQueue()
        if "tts" in models:
            from plugins.local.hibari_tts import HibariEngine

            voice = HibariEngine.shared()

            def synthesize(job: Job) -> None:
                text = str(job.header["text"])
                job.data = voice.synthesize(
                    text, speed=float(job.header.get("speed", 1.0))
                ).tobytes()
                job.reply["sample_rate"] = voice.sample_rate

            self._runners["synthesize"] = synthesize
            self._queues["synthesize"] = FairQueue()
        for op, queue in self._queues.items():
            threading.Thread(
                target=self._work, args=(op, queue), name=f"speech-{op}", daemon=True
            ).start()

    def handle(
        self,
        header: dict[str, Any],
        payload: bytes,
        peer_gone: Callable[[], bool] = lambda: False,
    ) -> tuple[dict[str, Any], bytes]:
        """Serve one request; ``peer_gone`` says whether its caller has hung up meanwhile."""
        op = str(header.get("op", ""))
        if op == "ping":
            return self.state(), b""
        queue = self._queues.get(op)
        if queue is None:
            return {"ok": False, "error": f"this service does not run {op!r}"}, b""
        timeout_s = float(header.get("timeout_s", 10.0))
        job = Job(
            op=op,
            header=header,
            payload=payload,
            client=str(header.get("client", "anonymous")),
            expires_at=time.monotonic() + timeout_s,
        )
        if not queue.put(job.client, job):
            self.refused += 1
            return {"ok": False, "error": f"busy: {MAX_PENDING_PER_CLIENT} requests waiting"}, b""
        waited_until = time.monotonic() + timeout_s
        while not job.done.wait(min(WITHDRAW_POLL_S, max(waited_until - time.monotonic(), 0))):
            if time.monotonic() >= waited_until:
                return {"ok": False, "error": f"not served within {timeout_s:.1f} s"}, b""
            if peer_gone():
                job.withdrawn = True  # if it is still queued, the worker drops it
                return {"ok": False, "error": "withdrawn by the caller"}, b""
        return job.reply, job.data

    def _work(self, op: str, queue: FairQueue[Job]) -> None:
        run = self._runners[op]
        while (job := queue.get()) is not None:
            if time.monotonic() > job.expires_at:
                self.expired += 1  # its caller has already fallen back
                continue
            if job.withdrawn:
                self.withdrawn += 1  # its caller no longer wants it
                continue
            self.running[op] += 1
            try:
                run(job)
                job.reply["ok"] = True
                self.served[job.client] += 1
            except Exception as e:
                log.exception("speech_service.request_failed", op=op)
                job.reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            finally:
                self.running[op] -= 1
            job.done.set()

    def state(self) -> dict[str, Any]:
        return {
            "ok": True,
            "pid": os.getpid(),
            "models": list(self.models),
            "served": dict(self.served),
            "queued": {op: q.depth() for op, q in self._queues.items()},
            "running": {op: self.running[op] for op in self._queues},
            "refused": self.refused,
            "expired": self.expired,
            "withdrawn": self.withdrawn,
            "uptime_s": round(time.time() - self.started_at, 3),
        }


def serve(service: SpeechService, socket_path: str) -> socketserver.UnixStreamServer:
    """Listen on ``socket_path`` (replacing a stale socket); one thread per connection."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            try:
                header, payload = recv_message(sock)
                reply, data = service.handle(header, payload, lambda: _hung_up(sock))
                send_message(sock, reply, data)
            except (ConnectionError, OSError):
                pass  # the caller went away; it has fallen back already

    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    Path(socket_path).parent.mkdir(parents=True, exist_ok=True)
    server = socketserver.ThreadingUnixStreamServer(socket_path, Handler)
    server.daemon_threads = True
    os.chmod(socket_path, 0o600)
    return server


def _hung_up(sock: socket.socket) -> bool:
    """Whether the caller closed its end (it sends nothing after its one request)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _exit_with_parent(parent: int) -> None:
    """The worker is gone (we were re-parented): nobody will use or stop us."""
    while os.getppid() == parent:
        time.sleep(1.0)
    log.warning("speech_service.parent_gone", parent=parent)
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    from plugins.local.whisper_stt import WhisperOptions

    # The terminal's Ctrl-C reaches the whole process group; the worker decides when this
    # service ends (its supervisor terminates it), so a console's Ctrl-C is not ours to act on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    parser = argparse.ArgumentParser(description="The worker's shared local speech service.")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--models", default="stt,tts", help="comma list of: stt, tts")
    parser.add_argument("--stt-model", default=WhisperOptions.model)
    parser.add_argument("--stt-beam-size", type=int, default=WhisperOptions.beam_size)
    parser.add_argument("--stt-threads", type=int, default=WhisperOptions.threads)
    parser.add_argument("--stt-prompt", default=WhisperOptions.prompt)
    parser.add_argument("--stt-window-s", type=int, default=WhisperOptions.window_s)
    parser.add_argument("--stt-compute-type", default=WhisperOptions.compute_type)
    args = parser.parse_args(argv)
    # stdout carries the one "ready" line for the supervisor; logs go to stderr
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    whisper = WhisperOptions(
        model=args.stt_model,
        beam_size=args.stt_beam_size,
        threads=args.stt_threads,
        prompt=args.stt_prompt,
        window_s=args.stt_window_s,
        compute_type=args.stt_compute_type,
    )
    started = time.perf_counter()
    service = SpeechService(models, whisper)
    server = serve(service, args.socket)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    log.info(
        "speech_service.ready",
        socket=args.socket,
        models=list(models),
        seconds=round(time.perf_counter() - started, 3),
    )
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
