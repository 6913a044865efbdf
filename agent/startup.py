"""What a worker checks before it hands over to LiveKit: every reason it could not serve a call.

LiveKit's CLI reports a missing URL or an occupied port as a traceback from deep inside
``AgentServer.run()`` and then exits 0, which a supervisor reads as "stopped on purpose". So
``dev``, ``start`` and ``console`` check here first, from the same validated settings that
``doctor`` reads, and a problem becomes :class:`StartupError`: one line that names the setting
and the fix, and a non-zero exit.

The checks, in the order a new user meets them: the LiveKit triple (not for ``console``, which
runs without a server), ``DATA_DIR`` readable and writable, the journal key (``start`` refuses
to run without one, ``console``/``dev`` create a local key file so no lead is lost), the journal
opening with that key, and the health and metrics ports free (``console`` binds neither).
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from agent.journal.crypto import JournalKeyError, ensure_key_file, key_file, read_key_file
from agent.settings import Settings

WorkerCommand = Literal["console", "dev", "start"]
KEY_HINT = "python -c 'import secrets; print(secrets.token_hex(16))'"


class StartupError(Exception):
    """The worker cannot start; ``str(e)`` is one line, safe to print (it holds no secret)."""


@dataclass
class Ready:
    """What the checks produced: the settings to run with and what to tell the user."""

    settings: Settings
    notes: list[str] = field(default_factory=list)
    health_socket: socket.socket | None = None


def check_livekit(settings: Settings) -> None:
    if not settings.livekit_url:
        raise StartupError(
            "LIVEKIT_URL is not set: set it (e.g. wss://your-project.livekit.cloud, or "
            "ws://127.0.0.1:7880 for a local server) in .env or the environment, or run "
            "`python -m agent console` to talk to the agent without LiveKit"
        )
    missing = [
        name.upper()
        for name in ("livekit_api_key", "livekit_api_secret")
        if not settings.secret(name)
    ]
    if missing:
        raise StartupError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: copy "
            "the API key and secret of your LiveKit project (Settings > Keys) into .env or "
            "the environment"
        )


def check_data_dir(data_dir: Path) -> None:
    """DATA_DIR exists (created if missing), is a directory, and can be written and listed."""
    fix = "or set DATA_DIR to a directory this user owns"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StartupError(
            f"DATA_DIR {data_dir} is a file, not a directory; move the file away, {fix}"
        ) from None
    except OSError as e:
        raise StartupError(
            f"DATA_DIR {data_dir} cannot be created ({e.strerror}); create it, {fix}"
        ) from None
    if not data_dir.is_dir():
        raise StartupError(
            f"DATA_DIR {data_dir} is a file, not a directory; move the file away, {fix}"
        )
    try:
        os.listdir(data_dir)
    except OSError as e:
        raise StartupError(
            f"DATA_DIR {data_dir} is not readable ({e.strerror}); give this user read access "
            f"(chmod u+rwx {data_dir}), {fix}"
        ) from None
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".write-check-") as probe:
            probe.write(b"ok")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        raise StartupError(
            f"DATA_DIR {data_dir} is not writable ({e.strerror}); give this user write access "
            f"(chmod u+rwx {data_dir}), {fix}"
        ) from None


def resolve_key(settings: Settings, command: WorkerCommand) -> tuple[Settings, str | None]:
    """The settings with the journal key they will run with, and a note when one was created.

    ENCRYPTION_KEY wins; else the key file in DATA_DIR; else ``console``/``dev`` create that
    file and ``start`` refuses: a production worker without a key would lose every lead.
    """
    if settings.secret("encryption_key"):
        return settings, None
    try:
        if command == "start":
            key, created = read_key_file(settings.data_dir), False
        else:
            key, created = ensure_key_file(settings.data_dir)
    except JournalKeyError as e:
        raise StartupError(str(e)) from None
    except OSError as e:
        raise StartupError(
            f"cannot create the key file {key_file(settings.data_dir)} ({e.strerror}); set "
            f"ENCRYPTION_KEY instead (generate one with {KEY_HINT})"
        ) from None
    if key is None:
        raise StartupError(
            "ENCRYPTION_KEY is not set, and without it every lead and transcript would be lost: "
            f"set it to 32 characters (generate one with {KEY_HINT}) in .env or the "
            "environment (console and dev create a local key file instead)"
        )
    # Job processes read their settings again: the key reaches them through the environment.
    os.environ["ENCRYPTION_KEY"] = key
    with_key = settings.model_copy(update={"encryption_key": SecretStr(key)})
    if not created:
        return with_key, None
    return with_key, (
        f"ENCRYPTION_KEY is not set: created the key file {key_file(settings.data_dir)} "
        "(owner-only) to encrypt this machine's journal of leads and transcripts; set "
        "ENCRYPTION_KEY to its contents in production"
    )


def with_key_file(settings: Settings) -> Settings:
    """For the operational commands (``journal``, ``doctor``...): the key file of DATA_DIR
    stands in for an unset ENCRYPTION_KEY, so the journal ``console`` wrote can be read back.
    A broken key file is left for ``doctor`` to report."""
    if settings.secret("encryption_key"):
        return settings
    try:
        key = read_key_file(settings.data_dir)
    except JournalKeyError:
        return settings
    if key is None:
        return settings
    return settings.model_copy(update={"encryption_key": SecretStr(key)})


def check_journal(settings: Settings) -> None:
    """The journal opens with this key: a wrong key or a damaged file is found now, not in a
    call."""
    from agent.journal.store import JOURNAL_FILENAME, JournalStore

    path = Path(settings.data_dir) / JOURNAL_FILENAME
    try:
        JournalStore(
            path, settings.secret("encryption_key"), previous_keys=settings.journal_previous_keys()
        ).close()  # a journal under ENCRYPTION_KEY_PREVIOUS is re-encrypted here
    except JournalKeyError as e:
        raise StartupError(str(e)) from None
    except (sqlite3.Error, OSError) as e:
        raise StartupError(
            f"the journal {path} cannot be opened ({e}); restore it from a backup, or move it "
            "away to start a new journal (its undelivered leads stay in the moved file)"
        ) from None


def _port_problem(name: str, port: int, e: OSError) -> StartupError:
    if e.errno == errno.EADDRINUSE:
        return StartupError(
            f"{name} {port} is already in use (another worker on this machine?); stop that "
            f"process or set {name} to a free port"
        )
    return StartupError(
        f"{name} {port} cannot be opened ({e.strerror}); set {name} to another port"
    )


def bind_port(name: str, port: int) -> socket.socket:
    """A listening socket on ``port`` (all interfaces), bound now so no other process can take
    it between this check and the server that serves it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("", port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise _port_problem(name, port, e) from None
    sock.setblocking(False)
    return sock


def check_port_free(name: str, port: int) -> None:
    """``port`` can be bound now (LiveKit binds it itself, later, and reports failure with a
    traceback)."""
    bind_port(name, port).close()


def preflight(settings: Settings, command: WorkerCommand) -> Ready:
    """Every start-up check for ``command``; raises :class:`StartupError` at the first
    problem."""
    if command != "console":
        check_livekit(settings)
    data_dir = Path(settings.data_dir)
    check_data_dir(data_dir)
    health_socket = None
    if command != "console":  # the console binds no port: a second one on the machine runs
        if settings.metrics_port is not None:
            check_port_free("METRICS_PORT", settings.metrics_port)
        health_socket = bind_port("HEALTH_PORT", settings.health_port)
    try:
        settings, note = resolve_key(settings, command)
        check_journal(settings)
    except StartupError:
        if health_socket is not None:
            health_socket.close()
        raise
    return Ready(settings, [note] if note else [], health_socket)
