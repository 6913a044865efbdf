"""``python -m agent journal``: what the journal holds and whether it reached the CRM.

    journal [--data-dir DIR] list            calls, records and outbox states (no key needed)
    journal [--data-dir DIR] show CALL_ID    the decrypted transcript and outbox (needs the key)
    journal [--data-dir DIR] outbox          every outbox item with its state and last error
    journal [--data-dir DIR] quarantine      damaged items set aside (no key needed)
    journal [--data-dir DIR] rekey           re-encrypt under $ENCRYPTION_KEY_NEW (crash-safe)

The key is read from the environment variable named by ``--key-env`` (default ENCRYPTION_KEY);
a journal written under ENCRYPTION_KEY_PREVIOUS is read with it too.

Rotating the key: either run ``journal rekey`` with the old key in ENCRYPTION_KEY and the new
one in ENCRYPTION_KEY_NEW, then set ENCRYPTION_KEY to the new key; or set ENCRYPTION_KEY to the
new key and ENCRYPTION_KEY_PREVIOUS to the old one and restart: the first process to open the
journal re-encrypts it. Either way it is one SQLite transaction, so a crash leaves the journal
wholly under one key, and records a process still running with the old key writes later are
read with ENCRYPTION_KEY_PREVIOUS.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from agent.journal.crypto import JournalCorruptError, JournalKeyError
from agent.journal.store import JOURNAL_FILENAME, JournalStore


def _ts(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agent journal", description=__doc__.split("\n")[0])
    p.add_argument(
        "--data-dir",
        default=os.environ.get("DATA_DIR", "data"),
        help="default: $DATA_DIR or ./data",
    )
    p.add_argument("--key-env", default="ENCRYPTION_KEY", help="variable holding the key")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("list", help="calls and delivery state")
    show = sub.add_parser("show", help="decrypted transcript of one call")
    show.add_argument("call_id")
    sub.add_parser("outbox", help="every CRM write and its state")
    sub.add_parser("quarantine", help="damaged items set aside so everything else is delivered")
    rekey = sub.add_parser("rekey", help="re-encrypt the journal under a new key (crash-safe)")
    rekey.add_argument(
        "--new-key-env", default="ENCRYPTION_KEY_NEW", help="variable holding the new key"
    )
    return p


def _list_without_key(
    path: Path,
) -> list[tuple[str, float, float | None, str | None, int, dict[str, int]]]:
    """Call metadata is not encrypted, so it can be listed with no key at all."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        calls = db.execute(
            "SELECT c.call_id, c.started_at, c.ended_at, c.end_reason,"
            " (SELECT COUNT(*) FROM records r WHERE r.call_id=c.call_id) FROM calls c ORDER BY c.started_at"
        ).fetchall()
        states: dict[str, dict[str, int]] = {}
        for cid, state, n in db.execute(
            "SELECT call_id, state, COUNT(*) FROM outbox GROUP BY call_id, state"
        ):
            states.setdefault(cid, {})[state] = n
    finally:
        db.close()
    return [(c, s, e, r, n, states.get(c, {})) for c, s, e, r, n in calls]


def _quarantine_without_key(path: Path) -> list[tuple[int, str, str, str | None, str, float]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        has = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='quarantine'"
        ).fetchone()
        if not has:
            return []
        return list(
            db.execute("SELECT id, what, ref, call_id, reason, at FROM quarantine ORDER BY id")
        )
    finally:
        db.close()


def run(
    argv: Sequence[str] | None = None,
    *,
    data_dir: str | Path | None = None,
    encryption_key: str | None = None,
    previous_keys: Sequence[str] | None = None,
) -> int:
    """``argv`` are the words after ``journal``. ``data_dir`` / ``encryption_key`` let the main
    CLI pass validated settings (a key read from ``.env`` is not in ``os.environ``); the
    ``--data-dir`` / ``--key-env`` options still win when given."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    if data_dir is not None and "--data-dir" not in (argv or ()):
        args.data_dir = str(data_dir)
    path = Path(args.data_dir) / JOURNAL_FILENAME
    if not path.exists():
        print(f"no journal at {path} (set --data-dir or DATA_DIR)", file=sys.stderr)
        return 1
    command = args.command or "list"
    key = os.environ.get(args.key_env)
    if encryption_key and "--key-env" not in (argv or ()):
        key = encryption_key
    if command == "list":
        rows = _list_without_key(path)
        if not rows:
            print("no calls in the journal")
            return 0
        print(f"{'call':<36} {'started (UTC)':<19} {'ended':<8} {'records':>7}  crm delivery")
        for cid, started, ended, reason, n, states in rows:
            delivery = ", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "nothing queued"
            print(
                f"{cid:<36} {_ts(started):<19} {'yes' if ended else 'open':<8} {n:>7}  {delivery}"
            )
            if reason and ended:
                print(f"{'':<36} ended: {reason}")
        quarantined = _quarantine_without_key(path)
        if quarantined:
            print(f"{len(quarantined)} damaged item(s) quarantined: see `journal quarantine`")
        return 0
    if command == "quarantine":
        quarantined = _quarantine_without_key(path)
        if not quarantined:
            print("nothing quarantined")
            return 0
        for qid, what, ref, q_call, why, at in quarantined:
            print(f"#{qid:<5} {_ts(at)}  {what:<7} call {q_call or '-'}  {ref}  ({why})")
        return 0
    if not key:
        print(f"{args.key_env} is not set: it is needed to decrypt the journal", file=sys.stderr)
        return 2
    previous = list(previous_keys) if previous_keys is not None else []
    if not previous and os.environ.get("ENCRYPTION_KEY_PREVIOUS"):
        previous = [os.environ["ENCRYPTION_KEY_PREVIOUS"]]
    try:
        store = JournalStore(path, key, previous_keys=previous)
    except JournalKeyError as e:
        print(str(e), file=sys.stderr)
        return 2
    try:
        if command == "rekey":
            return _rekey(store, args.new_key_env)
        if command == "show":
            return _show(store, args.call_id)
        for item in store.outbox():
            err = (
                f"  last error: {item.last_error}"
                if item.last_error and item.state != "delivered"
                else ""
            )
            print(
                f"#{item.id:<5} {item.state:<9} {item.op:<17} call {item.call_id or '-'} attempts {item.attempts}{err}"
            )
        return 0
    except JournalCorruptError as e:
        print(str(e), file=sys.stderr)
        return 3
    finally:
        store.close()


def _rekey(store: JournalStore, new_key_env: str) -> int:
    new_key = os.environ.get(new_key_env)
    if not new_key:
        print(f"{new_key_env} is not set: it must hold the new 32-character key", file=sys.stderr)
        return 2
    try:
        counts = store.rekey(new_key)
    except JournalKeyError as e:
        print(f"{new_key_env}: {e}", file=sys.stderr)
        return 2
    print(
        f"journal re-encrypted under {new_key_env}: {counts['calls']} calls, "
        f"{counts['records']} records, {counts['outbox']} outbox items. Now set ENCRYPTION_KEY "
        "to the new key (and ENCRYPTION_KEY_PREVIOUS to the old one while processes started "
        "with it still run)."
    )
    return 0


def _show(store: JournalStore, call_id: str) -> int:
    summary = next((c for c in store.calls() if c.call_id == call_id), None)
    if summary is None:
        print(f"no call {call_id!r} in the journal at {store.path}", file=sys.stderr)
        return 1
    print(f"call {call_id}  started {_ts(summary.started_at)} UTC  ended {_ts(summary.ended_at)}")
    for r in store.records(call_id):
        d = r.data
        if r.kind == "message":
            flag = " [interrupted]" if d.get("interrupted") else ""
            print(f"{_ts(r.at)}  {d.get('role', '?'):>9}: {d.get('text', '')}{flag}")
        elif r.kind == "tool_call":
            print(
                f"{_ts(r.at)}       tool: {d.get('name')}({d.get('arguments')}) -> {d.get('output')}"
            )
        elif r.kind == "provider_switch":
            print(
                f"{_ts(r.at)}     switch: {d.get('slot')} {d.get('from')} -> {d.get('to')} ({d.get('reason')})"
            )
        else:
            print(f"{_ts(r.at)}  {r.kind:>9}: {d}")
    for item in store.outbox(call_id):
        err = f" ({item.last_error})" if item.last_error and item.state != "delivered" else ""
        print(f"crm: {item.op} {item.state} after {item.attempts} attempt(s){err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
