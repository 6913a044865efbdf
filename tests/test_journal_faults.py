"""Journal faults through real components: the call goes on, every journaled item reaches GHL
once, and what cannot be read is quarantined rather than blocking everyone else.

Real SQLite files damaged on disk, a real tmpfs remounted read-only or filled to the last byte
(when the tests run as root and may mount; skipped with the reason otherwise), real processes
SIGKILLed in another hostname and pid namespace, and the GHL simulator on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from agent.crm.ghl_client import GhlClient
from agent.crm.ghl_sim import GhlSimulator
from agent.journal import cli, outbox
from agent.journal.call_journal import CallJournal
from agent.journal.crypto import JournalKeyError
from agent.journal.deliverer import OutboxDeliverer
from agent.journal.recorder import CallRecorder
from agent.journal.spool import SPOOL_SUFFIX
from agent.journal.store import JOURNAL_FILENAME, JournalStore
from agent.responder.lead import Lead
from tests.ghl_fixtures import KEY, OTHER_KEY, TEST_BACKGROUND

pytest_plugins = ["ghl_fixtures"]
REPO = Path(__file__).resolve().parent.parent
PHONE = "+14155550100"


def _deliverer(store: JournalStore, client: GhlClient, spool_dirs: list[Path]) -> OutboxDeliverer:
    return OutboxDeliverer(
        store,
        client,
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        poll_interval_s=0.05,
        policy=TEST_BACKGROUND,
        spool_dirs=spool_dirs,
    )


def _notes(sim: GhlSimulator, phone: str = PHONE) -> list[str]:
    contact = sim.find_by_phone(phone)
    assert contact is not None, f"no contact {phone} in GHL"
    return [n["body"] for n in sim.notes_for(contact["id"])]


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _journal(tmp: Path, call_id: str, spool_dirs: list[Path], key: str = KEY) -> CallJournal:
    return CallJournal(
        call_id,
        lambda: JournalStore.in_dir(tmp, key),
        key=key,
        spool_dirs=spool_dirs,
        retry_s=0.05,
    )


def _say(rec: CallRecorder, lines: list[tuple[str, str]]) -> None:
    for role, text in lines:
        rec.record_message(role, text)


def _transcript_lines(note: str) -> list[str]:
    return [ln for ln in note.splitlines() if ln.startswith(("Caller: ", "Agent: "))]


# -- damaged records -------------------------------------------------------------------------
def _flip_blob(path: Path, blob: bytes) -> None:
    """Damage one byte of ``blob`` where it lies in the file, as a bad sector would."""
    data = bytearray(path.read_bytes())
    at = data.find(blob)
    assert at >= 0, "ciphertext not found in the file"
    data[at + len(blob) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


async def test_damaged_record_and_item_are_quarantined_and_the_rest_delivered(
    tmp_path: Path, sim: GhlSimulator, client: GhlClient, capsys: pytest.CaptureFixture[str]
) -> None:
    store = JournalStore.in_dir(tmp_path, KEY)
    lines = [("assistant", "Hi, this is Sam."), ("user", "I want a demo."), ("user", "Thanks!")]
    for n in range(3):
        phone = f"+1415555010{n}"
        rec = CallRecorder(store, f"call-{n}", caller_phone=phone)
        _say(rec, lines)
        rec.journal.enqueue(
            f"call-{n}", outbox.add_note(outbox.contact_ref(phone=phone), f"Lead note {n}")
        )
    db = sqlite3.connect(tmp_path / JOURNAL_FILENAME)
    [(record_blob,)] = db.execute(
        "SELECT payload FROM records WHERE call_id='call-1' ORDER BY seq LIMIT 1 OFFSET 1"
    ).fetchall()
    [(item_blob,)] = db.execute("SELECT payload FROM outbox WHERE call_id='call-2'").fetchall()
    db.close()
    store.close()  # checkpoints the WAL into the main file
    before = _metric("journal_quarantined_total", what="record")
    _flip_blob(tmp_path / JOURNAL_FILENAME, bytes(record_blob))
    _flip_blob(tmp_path / JOURNAL_FILENAME, bytes(item_blob))

    store = JournalStore.in_dir(tmp_path, KEY)
    # their process is gone: the deliverer's recovery queues their transcripts
    store._db.execute("UPDATE calls SET lease_until=0, owner='gone'")
    deliverer = _deliverer(store, client, [tmp_path / "spool"])
    assert await deliverer.drain(15)

    assert _notes(sim, "+14155550100")[0] == "Lead note 0\n\n" + outbox.note_marker(
        store.outbox("call-0")[0].uid
    )
    assert len(_notes(sim, "+14155550100")) == 2  # its note and its transcript
    assert len(_notes(sim, "+14155550102")) == 1  # the damaged note is set aside
    [tx1] = [n for n in _notes(sim, "+14155550101") if n.startswith("Call transcript")]
    assert _transcript_lines(tx1) == ["Agent: Hi, this is Sam.", "Caller: Thanks!"]
    assert {(q.what, q.call_id) for q in store.quarantined()} == {
        ("record", "call-1"),
        ("outbox", "call-2"),
    }
    assert _metric("journal_quarantined_total", what="record") == before + 1
    # a second pass sends nothing again
    report = await deliverer.deliver_once()
    assert (report.delivered, report.recovered_calls) == (0, 0)
    store.close()
    assert cli.run(["--data-dir", str(tmp_path), "quarantine"]) == 0
    out = capsys.readouterr().out
    assert "record  call call-1" in out and "outbox  call call-2" in out
    assert cli.run(["--data-dir", str(tmp_path), "list"]) == 0
    assert "2 damaged item(s) quarantined" in capsys.readouterr().out


async def test_damaged_file_mid_call_spools_and_a_fresh_journal_delivers_once(
    tmp_path: Path, sim: GhlSimulator, client: GhlClient
) -> None:
    data = tmp_path / "data"
    spools = [data / "spool", tmp_path / "tmp-spool"]
    journal = _journal(data, "call-d", spools)
    rec = CallRecorder(journal, "call-d", caller_phone=PHONE)
    _say(rec, [("assistant", "Hello!"), ("user", "Hi, call me back.")])
    assert journal.healthy and journal.held == 0
    assert journal._store is not None
    journal._store.close()
    for p in data.iterdir():  # the file is overwritten by garbage (a bad copy, a disk fault)
        if p.name.startswith(JOURNAL_FILENAME):
            p.write_bytes(os.urandom(8192))
    journal._store = None
    _say(rec, [("assistant", "Sure, what number?"), ("user", "This one.")])
    assert not journal.healthy and journal.held == 2
    rec.finish(reason="completed")  # never raises
    assert journal.spooled_to is not None and journal.spooled_to.parent == data / "spool"
    assert SPOOL_SUFFIX in journal.spooled_to.name

    # the operator moves the damaged file aside; the worker starts a fresh journal
    for p in list(data.iterdir()):
        if p.name.startswith(JOURNAL_FILENAME):
            p.rename(tmp_path / f"damaged-{p.name}")
    store = JournalStore.in_dir(data, KEY)
    sim.add_contact(phone=PHONE)
    deliverer = _deliverer(store, client, spools)
    assert await deliverer.drain(15)
    [note] = _notes(sim)
    # what was said before the damage was in the damaged file; what came after was held
    assert _transcript_lines(note) == ["Agent: Sure, what number?", "Caller: This one."]
    assert not list((data / "spool").glob(f"*{SPOOL_SUFFIX}"))
    assert (await deliverer.deliver_once()).imported_spools == 0
    assert len(_notes(sim)) == 1


# -- read-only and full filesystems ----------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (needs root and permission to mount)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs for a real full/read-only filesystem")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True)


def _fill(mnt: Path) -> Path:
    """Take every free block, as a runaway log file would."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


async def test_read_only_journal_holds_writes_until_it_is_writable_again(
    small_fs: Path, tmp_path: Path, sim: GhlSimulator, client: GhlClient
) -> None:
    spools = [small_fs / "spool", tmp_path / "tmp-spool"]
    JournalStore.in_dir(small_fs, KEY).close()
    _remount(small_fs, "ro")
    faults = _metric("journal_faults_total", operation="open")
    journal = _journal(small_fs, "call-ro", spools)
    rec = CallRecorder(journal, "call-ro", caller_phone=PHONE)  # the call starts regardless
    _say(rec, [("assistant", "Hello!"), ("user", "Book me in.")])
    assert not journal.healthy and journal.held == 3
    assert _metric("journal_faults_total", operation="open") > faults
    _remount(small_fs, "rw")
    _say(rec, [("assistant", "Done.")])
    await asyncio.sleep(0.06)
    _say(rec, [("user", "Bye.")])
    assert journal.healthy and journal.held == 0
    rec.finish(reason="completed")
    assert journal.spooled_to is None
    store = JournalStore.in_dir(small_fs, KEY)
    assert await _deliverer(store, client, spools).drain(15)
    [note] = _notes(sim)
    assert _transcript_lines(note) == [
        "Agent: Hello!",
        "Caller: Book me in.",
        "Agent: Done.",
        "Caller: Bye.",
    ]
    store.close()


@pytest.mark.parametrize("frees_before_the_end", [True, False], ids=["frees-mid-call", "stays"])
async def test_full_disk_mid_call_loses_no_line_and_finish_never_raises(
    frees_before_the_end: bool,
    small_fs: Path,
    tmp_path: Path,
    sim: GhlSimulator,
    client: GhlClient,
) -> None:
    spools = [small_fs / "spool", tmp_path / "other-fs-spool"]
    journal = _journal(small_fs, "call-full", spools)
    rec = CallRecorder(journal, "call-full", caller_phone=PHONE)
    said = [("assistant", "Hello, this is Sam."), ("user", "Hi there.")]
    _say(rec, said)
    filler = _fill(small_fs)
    more = [(("user", "assistant")[i % 2], f"Line {i} " + "x" * 300) for i in range(12)]
    _say(rec, more)
    rec.journal.enqueue(
        "call-full", outbox.add_note(outbox.contact_ref(phone=PHONE), "Wants the pro plan")
    )
    assert not journal.healthy and journal.held >= 1
    if frees_before_the_end:
        filler.unlink()
        await asyncio.sleep(0.06)
    rec.finish(reason="completed")  # never raises, full disk or not
    if frees_before_the_end:
        assert journal.spooled_to is None
    else:
        assert journal.spooled_to is not None
        assert journal.spooled_to.parent == tmp_path / "other-fs-spool"  # the full one refused
        filler.unlink()
    store = JournalStore.in_dir(small_fs, KEY)
    deliverer = _deliverer(store, client, spools)
    assert await deliverer.drain(15)
    notes = _notes(sim)
    [transcript] = [n for n in notes if n.startswith("Call transcript")]
    assert _transcript_lines(transcript) == [
        f"{'Agent' if r == 'assistant' else 'Caller'}: {t}" for r, t in said + more
    ]
    assert sum(n.startswith("Wants the pro plan") for n in notes) == 1
    assert len(notes) == 2
    assert (await deliverer.deliver_once()).delivered == 0
    store.close()


# -- keys ------------------------------------------------------------------------------------
async def test_wrong_key_during_a_call_is_held_spooled_and_read_with_the_previous_key(
    tmp_path: Path, sim: GhlSimulator, client: GhlClient
) -> None:
    JournalStore.in_dir(tmp_path, KEY).close()
    spools = [tmp_path / "spool"]
    journal = _journal(tmp_path, "call-k", spools, key=OTHER_KEY)  # a job started with another key
    rec = CallRecorder(journal, "call-k", caller_phone=PHONE)
    _say(rec, [("assistant", "Hello!"), ("user", "Hi.")])
    assert not journal.healthy
    rec.finish()
    assert journal.spooled_to is not None
    store = JournalStore.in_dir(tmp_path, KEY)
    deliverer = _deliverer(store, client, spools)
    report = await deliverer.deliver_once()
    assert report.imported_spools == 0  # no configured key reads it: it stays, nothing lost
    assert journal.spooled_to.exists()
    store.close()
    store = JournalStore.in_dir(tmp_path, KEY, previous_keys=[OTHER_KEY])
    assert await _deliverer(store, client, spools).drain(15)
    [note] = _notes(sim)
    assert _transcript_lines(note) == ["Agent: Hello!", "Caller: Hi."]


def test_previous_key_reencrypts_and_reads_late_records(tmp_path: Path) -> None:
    old = JournalStore.in_dir(tmp_path, KEY)
    old.begin_call("c", {"phone": PHONE})
    old.append("c", "message", {"role": "user", "text": "before the rotation"})
    with pytest.raises(JournalKeyError, match="ENCRYPTION_KEY_PREVIOUS"):
        JournalStore.in_dir(tmp_path, OTHER_KEY)
    new = JournalStore.in_dir(tmp_path, OTHER_KEY, previous_keys=[KEY])
    # a process started before the rotation still writes with the old key
    old.append("c", "message", {"role": "user", "text": "from an old process"})
    assert [r.data["text"] for r in new.records("c")] == [
        "before the rotation",
        "from an old process",
    ]
    assert new.call_info("c") == {"phone": PHONE}
    new.close()
    old.close()
    with pytest.raises(JournalKeyError):
        JournalStore.in_dir(tmp_path, KEY)  # the file is under the new key now
    assert JournalStore.in_dir(tmp_path, OTHER_KEY).records("c")[0].data["text"] == (
        "before the rotation"
    )


_REKEY_CHILD = """
import sys
from agent.journal.store import JournalStore
store = JournalStore.in_dir(sys.argv[1], sys.argv[2])
print("START", flush=True)
store.rekey(sys.argv[3])
print("DONE", flush=True)
"""


def test_rekey_cli_and_a_rekey_killed_midway_leaves_one_whole_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = JournalStore.in_dir(tmp_path, KEY)
    with store.transaction():
        for i in range(6000):
            store.append(f"c{i % 50}", "message", {"role": "user", "text": f"line {i}"})
    store.close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _REKEY_CHILD, str(tmp_path), KEY, OTHER_KEY],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "START"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    readable = []
    for key in (KEY, OTHER_KEY):
        try:
            s = JournalStore.in_dir(tmp_path, key)
        except JournalKeyError:
            continue
        readable.append(key)
        assert sum(len(s.records(f"c{i}")) for i in range(50)) == 6000
        assert not s.quarantined()
        s.close()
    assert len(readable) == 1  # wholly under the old key or wholly under the new one

    monkeypatch.setenv("ENCRYPTION_KEY", readable[0])
    new_key = uuid.uuid4().hex
    monkeypatch.setenv("ENCRYPTION_KEY_NEW", new_key)
    assert cli.run(["--data-dir", str(tmp_path), "rekey"]) == 0
    assert "journal re-encrypted under ENCRYPTION_KEY_NEW" in capsys.readouterr().out
    s = JournalStore.in_dir(tmp_path, new_key)
    assert s.records("c7")[0].data["text"] == "line 7"


# -- ownership by lease ----------------------------------------------------------------------
_OTHER_HOST_CHILD = """
import asyncio, sys
from agent.journal.call_journal import CallJournal
from agent.journal.recorder import CallRecorder
from agent.journal.store import JournalStore

async def main() -> None:
    data, key, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
    journal = CallJournal(
        "call-elsewhere", lambda: JournalStore.in_dir(data, key, lease_s=lease),
        key=key, spool_dirs=[], retry_s=lease / 4,
    )
    rec = CallRecorder(journal, "call-elsewhere", caller_phone="+14155550100")
    journal.start()
    rec.record_message("assistant", "Hello from another container.")
    rec.record_message("user", "Hi, please call me.")
    print("LIVE", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.timeout(60)
async def test_call_of_a_killed_process_on_another_host_is_recovered_by_its_lease(
    tmp_path: Path, sim: GhlSimulator, client: GhlClient
) -> None:
    """The owner runs in its own hostname and pid namespace (a recreated container on the
    shared volume); while it lives its lease keeps the call, once SIGKILLed the lease expires
    and this process finishes the call."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to run the owner in another host/pid namespace")
    lease = 1.0
    script = (
        "hostname other-container && exec "
        f"{sys.executable} -c '{_OTHER_HOST_CHILD}' {tmp_path} {KEY} {lease}"
    )
    proc = subprocess.Popen(
        ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        stdout = proc.stdout

        def _until_live() -> bool:
            return any(line.strip() == "LIVE" for line in stdout)

        assert await asyncio.to_thread(_until_live), f"owner did not start ({proc.poll()})"
        store = JournalStore.in_dir(tmp_path, KEY)
        [owner] = store._db.execute("SELECT owner FROM calls").fetchone()
        assert owner.startswith("other-container:1:")  # another host, pid 1 of its namespace
        deliverer = _deliverer(store, client, [])
        await asyncio.sleep(lease * 2)  # several lease periods: it renews, so it is kept
        assert (await deliverer.deliver_once()).recovered_calls == 0
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    async with asyncio.timeout(10):
        while not store.abandoned_calls():
            await asyncio.sleep(0.1)
    assert await deliverer.drain(15)
    [note] = _notes(sim)
    assert "recovered after the call's owner was gone" in note.splitlines()[0]
    assert _transcript_lines(note) == [
        "Agent: Hello from another container.",
        "Caller: Hi, please call me.",
    ]
    assert (await deliverer.deliver_once()).recovered_calls == 0
    assert len(_notes(sim)) == 1


# -- a call's CRM side opens whatever the journal's state ------------------------------------
async def test_call_crm_opens_and_finishes_when_the_journal_cannot_be_opened(
    tmp_path: Path,
) -> None:
    """What ``entrypoint`` does: a DATA_DIR that cannot hold a journal must not crash the job."""
    from agent.call_crm import CallCrm
    from agent.settings import load_settings

    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data directory should be")
    settings = load_settings(data_dir=not_a_dir, encryption_key=KEY)
    crm = CallCrm.open(settings, "room-1", caller_phone=PHONE)
    assert crm is not None
    crm.recorder.record_message("assistant", "Hello!")
    assert crm.recorder.journal.held == 2 and not crm.recorder.journal.healthy
    reply = await crm.lead_sink.save_lead(Lead(name="Ann Lee", phone=PHONE))
    assert reply.startswith("Thanks, Ann")  # the caller hears the confirmation regardless
    crm.recorder.finish(reason="completed")  # never raises into LiveKit's shutdown
    await crm.aclose()
    spooled = crm.recorder.journal.spooled_to
    assert spooled is not None and spooled.suffix == SPOOL_SUFFIX
    spooled.unlink()


async def test_malformed_item_is_quarantined_and_the_next_delivered(
    tmp_path: Path, sim: GhlSimulator, client: GhlClient
) -> None:
    """An item that decrypts but can never be sent (written by a buggy or older version)."""
    from agent.journal.store import NewOutboxItem

    store = JournalStore.in_dir(tmp_path, KEY)
    store.begin_call("c", {"phone": PHONE})
    store.enqueue("c", NewOutboxItem(outbox.ADD_NOTE, {"contact": {"phone": PHONE}}))  # no body
    store.enqueue("c", NewOutboxItem(outbox.BOOK_APPOINTMENT, {"contact": {}, "start": "soon"}))
    store.enqueue("c", outbox.add_note(outbox.contact_ref(phone=PHONE), "Still delivered"))
    assert await _deliverer(store, client, []).drain(10)
    assert [n.split("\n")[0] for n in _notes(sim)] == ["Still delivered"]
    reasons = sorted(q.reason for q in store.quarantined())
    assert reasons == [
        "add_note item has no valid 'body'",
        "book_appointment item has no valid 'calendar_id'",
    ]


def test_worker_start_check_reads_and_reencrypts_a_journal_under_the_previous_key(
    tmp_path: Path,
) -> None:
    from agent.settings import load_settings
    from agent.startup import StartupError, check_journal

    store = JournalStore.in_dir(tmp_path, KEY)
    store.begin_call("c", {"phone": PHONE})
    store.close()
    with pytest.raises(StartupError, match="ENCRYPTION_KEY_PREVIOUS"):
        check_journal(load_settings(data_dir=tmp_path, encryption_key=OTHER_KEY))
    check_journal(
        load_settings(data_dir=tmp_path, encryption_key=OTHER_KEY, encryption_key_previous=KEY)
    )
    assert JournalStore.in_dir(tmp_path, OTHER_KEY).call_info("c") == {"phone": PHONE}


async def test_a_call_recovered_while_alive_sends_the_rest_of_its_transcript_once(
    tmp_path: Path, sim: GhlSimulator, client: GhlClient
) -> None:
    """Its loop was blocked past the lease: another worker finished it; nothing is lost."""
    live = JournalStore.in_dir(tmp_path, KEY)
    rec = CallRecorder(live, "c-live", caller_phone=PHONE)
    rec.record_message("assistant", "Hello!")
    live._db.execute("UPDATE calls SET lease_until=0")  # the renewals did not come in time
    other = JournalStore.in_dir(tmp_path, KEY)
    other.owner = "another-worker"
    deliverer = _deliverer(other, client, [])
    assert (await deliverer.deliver_once()).recovered_calls == 1
    rec.record_message("user", "Hi, I'm still here.")
    rec.finish(reason="completed")
    assert await deliverer.drain(10)
    notes = _notes(sim)
    assert [_transcript_lines(n) for n in notes] == [
        ["Agent: Hello!"],
        ["Caller: Hi, I'm still here."],
    ]
    rec.finish(reason="completed")  # idempotent
    assert (await deliverer.deliver_once()).delivered == 0


def test_a_full_data_dir_does_not_end_a_call_through_its_load_report(small_fs: Path) -> None:
    """Found by bench.chaos: a call starting while DATA_DIR was full died in its load report."""
    from agent.load import JobLoadReporter

    _fill(small_fs)
    reporter = JobLoadReporter(small_fs, "job-1")
    reporter.update({"stt": "deepgram", "llm": "openai", "tts": "cartesia"})  # no OSError
    assert reporter.providers["stt"] == "deepgram"
