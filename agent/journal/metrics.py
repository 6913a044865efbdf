"""Prometheus series for the journal's own faults (one set per process, aggregated by LiveKit's
multiprocess collector like the provider metrics). Labels name an operation, never a value."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FAULTS = Counter(
    "journal_faults_total",
    "Journal operations that failed (cannot open, disk full, read-only, damaged file)",
    ["operation"],
)
QUARANTINED = Counter(
    "journal_quarantined_total",
    "Damaged journal items set aside so everything else is delivered",
    ["what"],
)
HELD = Gauge(
    "journal_held_items",
    "Journal writes held in memory until the journal can be written again",
    multiprocess_mode="livesum",
)
SPOOLED = Counter(
    "journal_spooled_calls_total",
    "Calls whose held writes were saved to a spool file because the journal stayed unwritable",
)
