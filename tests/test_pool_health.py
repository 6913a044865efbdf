"""Pool-wide health: two worker processes share breaker and quota state through real Redis.

Worker A asks the LLM chain a question; the OpenAI simulator answers with its quota error, A's
guard records "quota exhausted" in Redis and the call falls back to the scripted LLM. Worker B,
a separate process started afterwards, skips OpenAI without sending it a request (the
simulator's attempt log does not grow) and answers from the fallback at once.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from plugins.sim.faults import Fault, FaultType
from plugins.sim.openai_sim import OpenAISimulator
from tests.production_fixtures import REPO

pytestmark = pytest.mark.timeout(90)

CHILD = REPO / "tests" / "production_pool_child.py"


@pytest.fixture
async def openai_sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator() as sim:
        yield sim


async def _worker(redis_url: str, prefix: str, base_url: str, data_dir: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        redis_url,
        prefix,
        base_url,
        str(data_dir),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_quota_exhausted_in_one_worker_is_skipped_by_the_other(
    redis_url: str, redis_prefix: str, openai_sim: OpenAISimulator, tmp_path: Path
) -> None:
    openai_sim.state.plan.always(Fault(FaultType.QUOTA))

    a = await _worker(redis_url, redis_prefix, openai_sim.base_url, tmp_path / "a")
    sent_by_a = openai_sim.state.log.count()
    assert sent_by_a >= 1
    assert {
        "event": "failure",
        "key": "llm:openai",
        "kind": "quota_exhausted",
        "state": "open",
    } in a["events"], a["events"]
    assert a["reply"]  # the caller still got an answer, from the fallback

    b = await _worker(redis_url, redis_prefix, openai_sim.base_url, tmp_path / "b")
    assert openai_sim.state.log.count() == sent_by_a  # B sent OpenAI nothing
    skips = [e for e in b["events"] if e["event"] == "skip" and e["key"] == "llm:openai"]
    assert skips, b["events"]
    assert not [e for e in b["events"] if e["event"] == "attempt" and e["key"] == "llm:openai"]
    assert b["openai_state"] == "open"
    assert b["reply"]


async def test_workers_with_their_own_prefix_do_not_share(
    redis_url: str, redis_prefix: str, openai_sim: OpenAISimulator, tmp_path: Path
) -> None:
    """The control: without the shared state, the second worker does try OpenAI."""
    openai_sim.state.plan.always(Fault(FaultType.QUOTA))
    await _worker(redis_url, redis_prefix + "a:", openai_sim.base_url, tmp_path / "a")
    sent_by_a = openai_sim.state.log.count()
    await _worker(redis_url, redis_prefix + "b:", openai_sim.base_url, tmp_path / "b")
    assert openai_sim.state.log.count() > sent_by_a
