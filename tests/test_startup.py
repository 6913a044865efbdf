"""A worker that cannot start says why in one line and exits non-zero, never with a traceback.

Each case runs the real ``python -m agent start`` (or ``dev``) in a fresh directory whose
``.env`` holds the settings, with an environment that carries none of them, and asserts the
exit code and the whole of what the user sees.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.journal.crypto import KEY_FILE_NAME, ensure_key_file, read_key_file
from agent.journal.store import JOURNAL_FILENAME, JournalStore
from agent.settings import SettingsError, load_settings
from tests.production_fixtures import API_KEY, API_SECRET, ENCRYPTION_KEY, REPO

pytestmark = pytest.mark.timeout(120)

# Root ignores file permissions; without these two capabilities it meets them like any user.
_AS_A_USER = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if os.geteuid() == 0 and shutil.which("setpriv")
    else []
)


def _base_env(tmp: Path) -> dict[str, str]:
    """What a shell gives a process: no setting of ours, no LiveKit variable."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp),
        "PYTHONPATH": str(REPO),
        "LANG": "C.UTF-8",
    }


def _dotenv(tmp: Path, **values: str) -> None:
    (tmp / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def _good(tmp: Path) -> dict[str, str]:
    return {
        "LIVEKIT_URL": "ws://127.0.0.1:9",  # never reached: every case fails before
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
        "ENCRYPTION_KEY": ENCRYPTION_KEY,
        "DATA_DIR": str(tmp / "data"),
        "HEALTH_PORT": "0",
    }


def _run(tmp: Path, command: str = "start", *, as_user: bool = False) -> tuple[int, str]:
    result = subprocess.run(
        [*(_AS_A_USER if as_user else []), sys.executable, "-m", "agent", command],
        cwd=tmp,
        env=_base_env(tmp),
        capture_output=True,
        text=True,
        timeout=90,
    )
    return result.returncode, result.stdout + result.stderr


def _assert_one_line(code: int, output: str, *expected: str) -> str:
    lines = output.strip().splitlines()
    assert code != 0, output
    assert len(lines) == 1, output
    assert "Traceback" not in output
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def free_port() -> Iterator[socket.socket]:
    """A port some other process holds (listening), as a second worker on the machine would."""
    sock = socket.socket()
    sock.bind(("", 0))
    sock.listen()
    yield sock
    sock.close()


@pytest.mark.parametrize("command", ["start", "dev"])
def test_no_livekit_url(tmp_path: Path, command: str) -> None:
    settings = _good(tmp_path)
    del settings["LIVEKIT_URL"]
    _dotenv(tmp_path, **settings)
    line = _assert_one_line(*_run(tmp_path, command), "LIVEKIT_URL is not set", "wss://")
    assert line.startswith(f"Cannot start `{command}`:")
    assert "python -m agent console" in line


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        (("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"), "LIVEKIT_API_KEY and LIVEKIT_API_SECRET are"),
        (("LIVEKIT_API_SECRET",), "LIVEKIT_API_SECRET is not set"),
    ],
)
def test_no_livekit_key_or_secret(tmp_path: Path, missing: tuple[str, ...], named: str) -> None:
    settings = _good(tmp_path)
    for name in missing:
        del settings[name]
    _dotenv(tmp_path, **settings)
    line = _assert_one_line(*_run(tmp_path), named)
    assert API_SECRET not in line and API_KEY not in line


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("livekit.example.com", "must start with wss://"),
        ("wss://", "names no host"),
        ("wss://host.example:port", "is not a valid URL"),
    ],
)
def test_malformed_livekit_url(tmp_path: Path, url: str, why: str) -> None:
    _dotenv(tmp_path, **{**_good(tmp_path), "LIVEKIT_URL": url})
    _assert_one_line(*_run(tmp_path), "Invalid setting LIVEKIT_URL:", why, "wss://")


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    _dotenv(tmp_path, **_good(tmp_path))
    _assert_one_line(*_run(tmp_path), f"DATA_DIR {tmp_path / 'data'} is a file", "set DATA_DIR")


@pytest.mark.skipif(os.geteuid() == 0 and not _AS_A_USER, reason="root ignores permissions")
@pytest.mark.parametrize(("mode", "why"), [(0o555, "is not writable"), (0o333, "is not readable")])
def test_data_dir_without_access(tmp_path: Path, mode: int, why: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(mode)
    try:
        _dotenv(tmp_path, **_good(tmp_path))
        line = _assert_one_line(
            *_run(tmp_path, as_user=True), f"DATA_DIR {data} {why}", "Permission denied"
        )
        assert "chmod u+rwx" in line and "set DATA_DIR" in line
    finally:
        data.chmod(stat.S_IRWXU)


def test_damaged_journal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / JOURNAL_FILENAME).write_bytes(b"this is not an SQLite database " * 100)
    _dotenv(tmp_path, **_good(tmp_path))
    _assert_one_line(
        *_run(tmp_path), f"the journal {data / JOURNAL_FILENAME} cannot be opened", "move it away"
    )


def test_journal_written_with_another_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    JournalStore.in_dir(data, "a" * 32).close()
    _dotenv(tmp_path, **_good(tmp_path))
    line = _assert_one_line(*_run(tmp_path), "ENCRYPTION_KEY does not match the journal")
    assert ENCRYPTION_KEY not in line


@pytest.mark.parametrize("setting", ["HEALTH_PORT", "METRICS_PORT"])
def test_port_in_use(tmp_path: Path, free_port: socket.socket, setting: str) -> None:
    port = free_port.getsockname()[1]
    _dotenv(tmp_path, **{**_good(tmp_path), setting: str(port)})
    _assert_one_line(
        *_run(tmp_path),
        f"{setting} {port} is already in use",
        f"set {setting} to a free port",
    )


def test_start_refuses_to_run_without_a_key(tmp_path: Path) -> None:
    settings = _good(tmp_path)
    del settings["ENCRYPTION_KEY"]
    _dotenv(tmp_path, **settings)
    line = _assert_one_line(*_run(tmp_path), "ENCRYPTION_KEY is not set", "lead")
    assert "secrets.token_hex(16)" in line
    assert not (tmp_path / "data" / KEY_FILE_NAME).exists()  # start never invents a key


def test_start_uses_the_key_file_dev_created(tmp_path: Path) -> None:
    """A key file made by `dev` on this data directory serves `start` too (the journal it
    wrote stays readable): a journal under another key is refused for the key file's key, not
    for a missing key. A key file others can read is refused."""
    data = tmp_path / "data"
    _key, created = ensure_key_file(data)
    assert created
    settings = _good(tmp_path)
    del settings["ENCRYPTION_KEY"]
    JournalStore.in_dir(data, "b" * 32).close()  # a journal under another key: start checks it
    _dotenv(tmp_path, **settings)
    _assert_one_line(*_run(tmp_path), "ENCRYPTION_KEY does not match the journal")
    (data / KEY_FILE_NAME).chmod(0o644)
    _assert_one_line(*_run(tmp_path), "is readable by other users", "chmod 600")


def test_key_file_is_owner_only_and_stable(tmp_path: Path) -> None:
    key, created = ensure_key_file(tmp_path / "d")
    assert created and len(key) == 32
    path = tmp_path / "d" / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_key_file(tmp_path / "d") == (key, False)
    assert read_key_file(tmp_path / "d") == key
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [KEY_FILE_NAME]


# -- settings a new user types --------------------------------------------------------------


@pytest.fixture
def no_settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("LOG_LEVEL", "HEDGE_REQUESTS", "PREFER_CHEAPEST", "LOG_FORMAT", "LIVEKIT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("value", "level", "livekit"),
    [("debug", "DEBUG", "DEBUG"), ("Info", "INFO", "INFO"), (" warn", "WARNING", "WARN"),
     ("warning", "WARNING", "WARN"), ("ERROR", "ERROR", "ERROR")],
)  # fmt: skip
def test_log_level_in_any_case(
    no_settings_env: None, monkeypatch: pytest.MonkeyPatch, value: str, level: str, livekit: str
) -> None:
    monkeypatch.setenv("LOG_LEVEL", value)
    settings = load_settings()
    assert settings.log_level == level
    assert settings.livekit_log_level == livekit


def test_bad_log_level_names_the_choices(
    no_settings_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "loud")
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert str(e.value).startswith("Invalid setting LOG_LEVEL: is not allowed")
    assert "'info'" in str(e.value) and "(got 'LOUD')" in str(e.value)


@pytest.mark.parametrize("var", ["HEDGE_REQUESTS", "PREFER_CHEAPEST"])
def test_bad_boolean_says_true_or_false(
    no_settings_env: None, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    monkeypatch.setenv(var, "maybe")
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert (
        str(e.value)
        == f"Invalid setting {var}: is not a boolean: write true or false (got 'maybe')"
    )
    monkeypatch.setenv(var, "TRUE")
    assert getattr(load_settings(), var.lower()) is True


# -- doctor judges the worker's start-up as `start` does -------------------------------------


def _doctor(tmp: Path, *, as_user: bool = False) -> tuple[int, dict[str, str]]:
    result = subprocess.run(
        [*(_AS_A_USER if as_user else []), sys.executable, "-m", "agent", "doctor"],
        cwd=tmp, env=_base_env(tmp), capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    lines = {
        line.split()[1]: line for line in result.stdout.splitlines() if line[:3] in ("ok ", "BAD")
    }
    return result.returncode, lines


def test_doctor_reports_what_start_would_refuse(tmp_path: Path) -> None:
    _dotenv(tmp_path, DATA_DIR=str(tmp_path / "data"))  # nothing else: a fresh clone
    code, lines = _doctor(tmp_path)
    assert code == 1
    assert lines["livekit"].startswith("BAD") and "LIVEKIT_URL is not set" in lines["livekit"]
    assert lines["journal"].startswith("BAD") and "ENCRYPTION_KEY is not set" in lines["journal"]
    assert lines["data_dir"].startswith("ok ")


def test_doctor_accepts_the_key_file_and_names_it(tmp_path: Path) -> None:
    ensure_key_file(tmp_path / "data")
    settings = _good(tmp_path)
    del settings["ENCRYPTION_KEY"]
    _dotenv(tmp_path, **settings)
    code, lines = _doctor(tmp_path)
    assert lines["journal"].startswith("ok ") and KEY_FILE_NAME in lines["journal"]
    assert lines["livekit"].startswith("ok ") and API_KEY not in lines["livekit"]
    assert lines["data_dir"].startswith("ok ")
    assert code == 0, lines  # every provider without a key is skipped, not a problem


@pytest.mark.skipif(os.geteuid() == 0 and not _AS_A_USER, reason="root ignores permissions")
def test_doctor_reports_an_unwritable_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    try:
        _dotenv(tmp_path, **_good(tmp_path))
        code, lines = _doctor(tmp_path, as_user=True)
    finally:
        data.chmod(stat.S_IRWXU)
    assert code == 1
    assert lines["data_dir"].startswith("BAD") and "is not writable" in lines["data_dir"]


# -- a worker that stops on a failure after start-up -----------------------------------------


async def _no_call(_ctx: object) -> None:
    raise AssertionError("no call is dispatched in this test")


async def test_a_failure_inside_run_is_kept_as_one_line_not_raised(tmp_path: Path) -> None:
    """LiveKit's CLI logs run()'s exception with a traceback and exits 0; the server keeps it
    as one line so `python -m agent start` can exit 1 (agent.launch)."""
    from agent.drain import DrainingServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    server = DrainingServer(
        ws_url=f"ws://127.0.0.1:{closed_port}",
        api_key=API_KEY,
        api_secret=API_SECRET,
        max_retry=0,  # give up at the first refused connection
        port=0,
    )
    server.rtc_session(_no_call, agent_name="startup-test")
    try:
        await server.run(devmode=True)
    finally:
        await server.aclose()
    assert server.failure == "RuntimeError: failed to connect to livekit after 0 attempts"


async def test_a_worker_that_cannot_register_stops_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiveKit retries an unreachable server for ever (its backoff reaches minutes); the
    register deadline turns that into the one line `python -m agent start` exits 1 with."""
    from agent.drain import DrainingServer
    from agent.settings import Settings

    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    url = f"ws://127.0.0.1:{closed_port}"
    settings = Settings(livekit_url=url, livekit_register_timeout=1.0, data_dir=tmp_path / "d")
    server = DrainingServer(
        settings=settings, ws_url=url, api_key=API_KEY, api_secret=API_SECRET, port=0
    )
    server.rtc_session(_no_call, agent_name="startup-test")
    try:
        await asyncio.wait_for(server.run(devmode=True), 30)
    finally:
        await server.aclose()
    assert server.failure is not None
    assert server.failure.startswith(f"not registered with LiveKit at {url} within 1 s"), (
        server.failure
    )
    assert "LIVEKIT_REGISTER_TIMEOUT" in server.failure


def test_livekits_own_url_option_counts_as_the_setting(tmp_path: Path) -> None:
    """`start --url ...` (LiveKit's CLI option) stands in for LIVEKIT_URL, validated the same."""
    settings = _good(tmp_path)
    for name in ("LIVEKIT_URL", "LIVEKIT_API_SECRET"):
        del settings[name]
    _dotenv(tmp_path, **settings)
    code, out = _run_args(tmp_path, "start", "--url", "ws://127.0.0.1:9")
    _assert_one_line(code, out, "LIVEKIT_API_SECRET is not set")  # past the URL check
    code, out = _run_args(tmp_path, "start", "--url=wss://")
    _assert_one_line(code, out, "Invalid setting LIVEKIT_URL: names no host")


def _run_args(tmp: Path, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=tmp, env=_base_env(tmp), capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr
