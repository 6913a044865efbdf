"""One way every benchmark hands over its table: written to ``bench/results/``, and shown."""

from __future__ import annotations

from pathlib import Path


def publish(report: str, path: Path) -> None:
    """Write ``report`` to ``path`` (creating ``bench/results/``) and print it with its place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    print(report)
    print(f"written to {path}")
