"""Who owns a call, and when another process may take its end-of-call work over.

Ownership is a lease: the call's process renews ``lease_until`` in the journal while the call
runs, and any deliverer on any host that shares the journal (a recreated container on the same
volume, another replica) finishes a call whose lease has expired. A process-id check is only a
shortcut: when the owner ran in *this* pid namespace of *this* boot and that process is gone
(SIGKILL, OOM), the call is recovered at once instead of after the lease. Two containers that
share a hostname have different pid namespaces, so one never declares the other's calls dead.
"""

from __future__ import annotations

import hashlib
import os
import socket

# A call's lease; its process renews it every third of that. Long enough that a call whose
# event loop is blocked for a while (a slow import on a loaded machine) keeps its call.
CALL_LEASE_S = 60.0


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if not fields or fields[0] in ("Z", "X"):  # zombie or dead: it will never write again
        return None
    return fields[19] if len(fields) > 19 else "?"


def _namespace() -> str:
    """This boot and pid namespace: where a pid means the same process."""
    parts = []
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            parts.append(f.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        return "?"
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]


def current_owner() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '?'}:{_namespace()}"


def owner_gone_here(owner: str | None) -> bool:
    """True only when ``owner`` provably ran in this namespace and is no longer running."""
    if not owner:
        return False
    try:
        _host, pid_s, ticks, namespace = owner.rsplit(":", 3)
        pid = int(pid_s)
    except ValueError:
        return False  # an older or foreign token: only its lease can tell
    if namespace == "?" or namespace != _namespace():
        return False
    now = _start_ticks(pid)
    return now is None or (ticks != "?" and now != ticks)
