"""Which process owns a call, and whether that process is still alive.

A call whose owner died (SIGKILL, OOM, power loss) never got its end-of-call work done; the
next deliverer finds it by this token and finishes it. The token includes the process start
time so a recycled pid is not mistaken for the original process.
"""

from __future__ import annotations

import os
import socket


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


def current_owner() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or '?'}"


def owner_alive(owner: str | None) -> bool | None:
    """True/False for an owner on this host; None when it lives on another host (unknown)."""
    if not owner:
        return False
    try:
        host, pid_s, ticks = owner.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    if host != socket.gethostname():
        return None
    if os.path.exists("/proc"):
        now = _start_ticks(pid)
        return now is not None and (ticks == "?" or now == ticks)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
