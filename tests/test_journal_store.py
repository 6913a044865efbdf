"""The journal file: encrypted at rest, durable, and safe against a wrong key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.journal import cli
from agent.journal.crypto import JournalKeyError
from agent.journal.finish import finish_call
from agent.journal.store import JOURNAL_FILENAME, JournalStore, NewOutboxItem

KEY = "k" * 16 + "0123456789abcdef"
OTHER_KEY = "z" * 32
SECRET_TEXT = "my card number is 4111-1111-1111-1111"


def _file_bytes(tmp_path: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(JOURNAL_FILENAME)
    )


def test_records_are_unreadable_without_the_key(tmp_path: Path) -> None:
    store = JournalStore.in_dir(tmp_path, KEY)
    store.begin_call("call-1", {"phone": "+14155550100"})
    store.append("call-1", "message", {"role": "user", "text": SECRET_TEXT})
    store.enqueue("call-1", NewOutboxItem("add_note", {"contact": {}, "body": SECRET_TEXT}))
    raw = _file_bytes(tmp_path)
    assert len(raw) > 0
    for plain in (SECRET_TEXT, "4111", "+14155550100", "4155550100", KEY):
        assert plain.encode() not in raw
    assert [r.data["text"] for r in store.records("call-1")] == [SECRET_TEXT]
    store.close()


def test_wrong_key_is_a_clear_error_and_loses_nothing(tmp_path: Path) -> None:
    store = JournalStore.in_dir(tmp_path, KEY)
    store.begin_call("call-1")
    store.append("call-1", "message", {"role": "user", "text": "hello"})
    store.close()
    before = _file_bytes(tmp_path)
    with pytest.raises(JournalKeyError) as info:
        JournalStore.in_dir(tmp_path, OTHER_KEY)
    msg = str(info.value)
    assert msg.startswith(
        f"ENCRYPTION_KEY does not match the journal at {tmp_path / JOURNAL_FILENAME}"
    )
    assert OTHER_KEY not in msg and KEY not in msg
    assert _file_bytes(tmp_path) == before
    again = JournalStore.in_dir(tmp_path, KEY)
    assert [r.data["text"] for r in again.records("call-1")] == ["hello"]


@pytest.mark.parametrize("bad", [None, "", "short", "x" * 33])
def test_key_must_be_32_characters(tmp_path: Path, bad: str | None) -> None:
    with pytest.raises(JournalKeyError, match="ENCRYPTION_KEY"):
        JournalStore.in_dir(tmp_path, bad)
    assert not (tmp_path / JOURNAL_FILENAME).exists()


def test_two_journals_with_one_key_use_different_salts(tmp_path: Path) -> None:
    a = JournalStore(tmp_path / "a" / JOURNAL_FILENAME, KEY)
    b = JournalStore(tmp_path / "b" / JOURNAL_FILENAME, KEY)
    salt = "SELECT value FROM meta WHERE key='salt'"
    assert a._db.execute(salt).fetchone() != b._db.execute(salt).fetchone()


def test_end_of_call_queues_one_transcript(tmp_path: Path) -> None:
    store = JournalStore.in_dir(tmp_path, KEY)
    store.begin_call("c", {"phone": "+14155550100"})
    store.append("c", "message", {"role": "assistant", "text": "Hi, this is Sam."})
    store.append("c", "message", {"role": "user", "text": "I'd like a demo."})
    store.append(
        "c",
        "provider_switch",
        {"slot": "llm", "from": "openai", "to": "free-llm", "reason": "timeout"},
    )
    assert finish_call(store, "c", reason="completed", usage_summary="llm 120 tokens")
    assert not finish_call(store, "c", reason="again")
    [item] = store.outbox("c")
    body = item.payload["body"]
    assert "Agent: Hi, this is Sam.\nCaller: I'd like a demo." in body
    assert "Usage: llm 120 tokens" in body
    assert item.payload["contact"] == {"phone": "+14155550100"}


def test_cli_lists_without_key_and_shows_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = JournalStore.in_dir(tmp_path, KEY)
    store.begin_call("call-7")
    store.append("call-7", "message", {"role": "user", "text": "Book me for Tuesday"})
    store.append(
        "call-7",
        "tool_call",
        {"name": "save_lead", "arguments": "{}", "output": "ok", "is_error": False},
    )
    finish_call(store, "call-7", reason="completed")
    store.close()
    monkeypatch.delenv("ENCRYPTION_KEY", raising=False)
    assert cli.run(["--data-dir", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    assert "call-7" in out and "pending 1" in out and "Tuesday" not in out
    assert cli.run(["--data-dir", str(tmp_path), "show", "call-7"]) == 2
    assert "ENCRYPTION_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("MY_KEY", OTHER_KEY)
    assert cli.run(["--data-dir", str(tmp_path), "--key-env", "MY_KEY", "show", "call-7"]) == 2
    assert "does not match the journal" in capsys.readouterr().err
    monkeypatch.setenv("ENCRYPTION_KEY", KEY)
    assert cli.run(["--data-dir", str(tmp_path), "show", "call-7"]) == 0
    out = capsys.readouterr().out
    assert "user: Book me for Tuesday" in out and "tool: save_lead" in out
    assert "crm: add_note pending" in out
    assert cli.run(["--data-dir", str(tmp_path / "nowhere"), "list"]) == 1


def test_cli_takes_settings_from_the_main_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = JournalStore.in_dir(tmp_path, KEY)
    store.begin_call("call-8")
    store.append("call-8", "message", {"role": "assistant", "text": "Hello there"})
    store.close()
    monkeypatch.delenv("ENCRYPTION_KEY", raising=False)
    assert cli.run(["show", "call-8"], data_dir=tmp_path, encryption_key=KEY) == 0
    assert "assistant: Hello there" in capsys.readouterr().out
