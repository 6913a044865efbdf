"""``python -m bench`` (``make bench``): every benchmark, one after the other.

Each compares against its stock LiveKit (or bare-engine) baseline in the same run, prints a
table with ratios and writes it under bench/results/. Run one alone with
``python -m bench.<name>``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

BENCHMARKS = (
    "local_rtf",
    "store_admit",
    "failover",
    "balancing",
    "midstream",
    "prewarm",
    "capacity",
    "own_faults",
    "chaos",
)


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        if importlib.util.find_spec(f"bench.{name}") is None:
            continue
        print(f"\n=== bench.{name} ===", flush=True)
        # A process each: benchmarks load models and start servers; none may skew the next.
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False).returncode:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
