"""A clock that stops while our own process cannot run: the time every deadline is judged in.

A provider's deadline measures *its* lateness. On a worker whose CPU is saturated (a fallback
storm onto local models, a noisy neighbour, a garbage-collection pause, a CPU-bound callback)
the event loop runs late: a chunk that arrived on time sits unread in the socket buffer while
wall time runs on, and a tight first-audio or stall deadline fails a healthy provider. Worse,
it fails every call on the worker at once and moves them to the local models, which need the
most CPU of all: a saturated worker would make itself more saturated.

So deadlines are judged in *run time*: wall time minus the time the event loop was late. A
heartbeat is scheduled on each running loop every :data:`BEAT_S`; whatever it wakes later than
:data:`TOLERANCE_S` after it was due is time the loop could not run, and is left out. The lag
still being incurred (the heartbeat is overdue right now) is left out too, so a deadline
checked by a callback that runs before the heartbeat sees the same clock as one checked after.
The clock is continuous and never goes backwards; outside a running loop it is wall time.

Only deadlines and the latencies they learn from run on it. What the caller lived through
(a gap, the time to recover after a failover) is measured in wall time.

The cost is one timer callback per loop every 50 ms (at 20 ms it was a fortieth of a call's
CPU); a starvation is missed by at most one beat, well inside every deadline. The heartbeat
is a chain of ``call_later`` handles rather than a task, so a loop can close with it pending
and say nothing.
"""

from __future__ import annotations

import asyncio
import time
import weakref

#: How often the heartbeat is due.
BEAT_S = 0.05
#: Lateness a heartbeat may have on a healthy, busy loop (other ready callbacks run first).
TOLERANCE_S = 0.005


class _Heartbeat:
    """Holds no reference to its loop: the loop's own timer keeps it, and a closed loop (with
    its entry in ``_beats``) can be collected."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.lost_s = 0.0
        self._due = time.perf_counter() + BEAT_S
        loop.call_later(BEAT_S, self._beat)

    def overdue(self, now: float) -> float:
        return max(0.0, now - self._due - TOLERANCE_S)

    def _beat(self) -> None:
        now = time.perf_counter()
        self.lost_s += self.overdue(now)
        self._due = now + BEAT_S
        asyncio.get_running_loop().call_later(BEAT_S, self._beat)


_beats: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Heartbeat] = (
    weakref.WeakKeyDictionary()
)


def run_time() -> float:
    """Seconds, like ``time.perf_counter()``, not counting time the running loop was late."""
    now = time.perf_counter()
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return now
    beat = _beats.get(loop)
    if beat is None:
        beat = _beats[loop] = _Heartbeat(loop)
    return now - beat.lost_s - beat.overdue(now)
