"""The worker's load function: CPU average or the projected cost of its running calls.

Job processes report which provider serves each slot of their call (a JSON file per job in
DATA_DIR/load/); the worker sums the per-call weights of live processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit.agents import llm

from agent.load import (
    MEASURED_WEIGHTS,
    CallWeights,
    JobLoadReporter,
    WorkerLoad,
    load_dir,
    load_weights,
    projected_load,
    running_calls,
)
from plugins.chain import build_chains
from plugins.observability.switches import SwitchTracker
from plugins.resilience.store import open_store
from plugins.sim.faults import Fault, FaultType
from plugins.sim.openai_sim import OpenAISimulator
from plugins.spec import ProviderSpec
from tests.production_fixtures import REPO

CLOUD = {"stt": "deepgram", "llm": "openai", "tts": "cartesia"}
LOCAL = {"stt": "free-stt", "llm": "free-llm", "tts": "local-tts"}


def test_a_call_on_local_providers_weighs_more_than_one_on_cloud_providers() -> None:
    cloud = MEASURED_WEIGHTS.weight(CLOUD)
    local = MEASURED_WEIGHTS.weight(LOCAL)
    assert 0 < cloud < local < 1
    assert MEASURED_WEIGHTS.weight({**CLOUD, "tts": "local-tts"}) > cloud
    assert MEASURED_WEIGHTS.weight({**CLOUD, "stt": "free-stt"}) > cloud


def test_reports_are_written_atomically_and_removed_at_the_end(tmp_path: Path) -> None:
    reporter = JobLoadReporter(tmp_path, "AJ_one/../x")
    reporter.update(CLOUD)
    assert reporter.path.parent == load_dir(tmp_path)  # a job id cannot escape the directory
    assert running_calls(tmp_path) == [CLOUD]
    reporter.update({"tts": "local-tts", "stt": None})  # a switch; None leaves the slot as is
    assert running_calls(tmp_path) == [{**CLOUD, "tts": "local-tts"}]
    assert not list(load_dir(tmp_path).glob("*.tmp"))
    reporter.close()
    assert running_calls(tmp_path) == []


def test_reports_of_dead_processes_are_ignored_and_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    stale = JobLoadReporter(tmp_path, "AJ_dead", pid=int(dead.stdout))
    stale.update(LOCAL)
    (load_dir(tmp_path) / "garbage.json").write_text("{not json")
    assert running_calls(tmp_path) == []
    assert not stale.path.exists()


def test_load_is_the_larger_of_cpu_and_projected(tmp_path: Path) -> None:
    cpu = 0.10
    load = WorkerLoad(tmp_path, cpu=lambda: cpu)
    assert load() == pytest.approx(0.10)
    reporters = [JobLoadReporter(tmp_path, f"AJ_{n}") for n in range(3)]
    for r in reporters:
        r.update(LOCAL)
    expected = 3 * MEASURED_WEIGHTS.weight(LOCAL)
    assert load() == pytest.approx(max(0.10, expected))
    assert load.last_projected == pytest.approx(expected)
    cpu = 0.95
    assert load() == pytest.approx(0.95)
    heavy = WorkerLoad(tmp_path, cpu=lambda: 0.0, weights=CallWeights(base=0.5, extra={}))
    assert heavy() == 1.0  # capped: LiveKit compares it with a threshold <= 1


def test_the_worker_sees_a_call_in_another_process_until_it_ends(tmp_path: Path) -> None:
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; from agent.load import JobLoadReporter;"
        "r = JobLoadReporter(Path(sys.argv[2]), 'AJ_child');"
        "r.update({'stt': 'free-stt', 'llm': 'free-llm', 'tts': 'local-tts'});"
        "print('reported', flush=True); sys.stdin.readline(); r.close()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(REPO), str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "reported\n"
        assert projected_load(tmp_path) == pytest.approx(MEASURED_WEIGHTS.weight(LOCAL))
    finally:
        child.communicate("done\n", timeout=10)
    assert projected_load(tmp_path) == 0.0


@pytest.fixture
async def quota_sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator() as sim:
        sim.state.plan.always(Fault(FaultType.QUOTA))
        yield sim


async def test_a_call_that_falls_back_reports_its_new_provider(
    tmp_path: Path, quota_sim: OpenAISimulator
) -> None:
    store = open_store(None, tmp_path)
    chains = build_chains(
        [
            ProviderSpec("llm", "openai", quota_sim.base_url, "gpt-4o-mini", api_key="sim-key"),
            ProviderSpec("stt", "free-stt"),
            ProviderSpec("tts", "free-tts"),
        ],
        store,
        probes=False,
    )
    reporter = JobLoadReporter(tmp_path / "data", "AJ_call")
    tracker = SwitchTracker(chains)  # the call's one tracker
    stop = reporter.watch(tracker)
    try:
        assert json.loads(reporter.path.read_text())["providers"]["llm"] == "openai"
        ctx = llm.ChatContext.empty()
        ctx.add_message(role="user", content="What does it cost?")
        async with chains.llm.chat(chat_ctx=ctx) as stream:
            async for _ in stream:
                pass
        assert running_calls(tmp_path / "data") == [
            {"stt": "free-stt", "llm": "free-llm", "tts": "free-tts"}
        ]
    finally:
        stop()
        await chains.aclose()
        await store.aclose()
    assert not reporter.path.exists()


def test_measured_weights_come_from_the_file_the_capacity_bench_writes(tmp_path: Path) -> None:
    from bench.capacity import Level, Outcome, write_weights

    target = tmp_path / "weights.json"
    target.write_text(json.dumps({"base": 0.1, "extra": {"stt:free-stt": 0.2}}))
    cloud, local = Level("cloud", 20, cpu_share=[0.02]), Level("local", 5, cpu_share=[0.08])
    singles = [
        Level("local-stt", 2, cpu_share=[0.05]),
        Level("local-tts", 2, cpu_share=[0.03]),
    ]
    busy = Outcome(cloud=cloud, local=local, singles=singles, load_before=9.0)
    assert "not written" in write_weights(busy, quick=True, path=target)
    assert load_weights(target) == CallWeights(base=0.1, extra={"stt:free-stt": 0.2})
    quiet = Outcome(cloud=cloud, local=local, singles=singles, load_before=0.1)
    assert "written" in write_weights(quiet, quick=True, path=target)
    weights = load_weights(target)
    assert weights.base == pytest.approx(1 / 20)
    # the local call's extra (1/5 - 1/20) split 3:1 by the CPU the single-slot runs added
    assert weights.extra["stt:local-stt"] == pytest.approx(0.15 * 0.75, abs=1e-4)
    assert weights.extra["tts:local-tts"] == pytest.approx(0.15 * 0.25, abs=1e-4)
    assert weights.extra["stt:free-stt"] == 0.2  # not measured by the bench: kept
    assert weights.weight({"stt": "local-stt", "tts": "local-tts"}) == pytest.approx(1 / 5)
    target.write_text("{")
    with pytest.raises(RuntimeError, match="unreadable"):
        load_weights(target)
