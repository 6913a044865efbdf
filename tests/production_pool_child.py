"""One worker process's view of the pool: build the LLM chain on the shared Redis store, ask
one question, print what happened as JSON (used by tests/test_pool_health.py).

Usage: python tests/production_pool_child.py REDIS_URL PREFIX OPENAI_BASE_URL DATA_DIR
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit.agents import llm

from plugins.chain import build_chains
from plugins.resilience.store import StoreConfig, open_store
from plugins.resilience.types import Admission, BreakerState, Failure, GuardObserver
from plugins.spec import ProviderSpec


class Events(GuardObserver):
    def __init__(self) -> None:
        self.log: list[dict[str, Any]] = []

    def on_attempt(self, key: str, *, is_probe: bool) -> None:
        self.log.append({"event": "attempt", "key": key, "probe": is_probe})

    def on_success(self, key: str, *, latency_s: float | None, is_probe: bool = False) -> None:
        self.log.append({"event": "success", "key": key})

    def on_failure(self, key: str, failure: Failure, new_state: BreakerState) -> None:
        self.log.append(
            {"event": "failure", "key": key, "kind": failure.kind.value, "state": new_state.value}
        )

    def on_skip(self, key: str, admission: Admission) -> None:
        self.log.append({"event": "skip", "key": key, "reason": admission.reason})


async def main(redis_url: str, prefix: str, openai_url: str, data_dir: str) -> None:
    store = open_store(redis_url, Path(data_dir), config=StoreConfig(redis_prefix=prefix))
    events = Events()
    specs = [
        ProviderSpec("llm", "openai", openai_url, "gpt-4o-mini", api_key="sim-key"),
        ProviderSpec("llm", "free-llm"),
        ProviderSpec("stt", "free-stt"),
        ProviderSpec("tts", "free-tts"),
    ]
    chains = build_chains(specs, store, observers=[events], probes=False)
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="Hi, what does your service cost?")
    reply: list[str] = []
    async with chains.llm.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                reply.append(chunk.delta.content)
    health = await store.health("llm:openai")
    await chains.aclose()
    await store.aclose()
    print(
        json.dumps(
            {
                "reply": "".join(reply),
                "events": events.log,
                "openai_state": health.state.value,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
