"""Issue 15: key and endpoint pools, balancing by weight and headroom, closest first.

The real LiveKit openai plugin talks to the OpenAI simulator, which limits each key on its
own and reports the limit in OpenAI's ``x-ratelimit-*`` headers on every answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from livekit.agents import llm, utils

from agent.settings import SettingsError, load_settings
from plugins.chain import build_chains
from plugins.fallback.balance import Balancer, BalanceSettings, HeadroomBoard
from plugins.providers.pool import pool_specs
from plugins.resilience.headroom import Headroom, read_headroom
from plugins.resilience.store import DocumentStore, open_store
from plugins.resilience.types import BreakerState, FailureKind
from plugins.sim.faults import Fault, FaultType
from plugins.sim.openai_sim import OpenAISimulator
from plugins.sim.rate_limit import KeyRateLimiter, openai_duration
from plugins.spec import ProviderSpec
from tests.guard_fixtures import FakeClock

KEYS = "sk-alpha-0001,sk-bravo-0002"


@pytest.fixture
async def http() -> AsyncIterator[None]:
    async with utils.http_context.open():
        yield


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[DocumentStore]:
    store = open_store(None, tmp_path)
    yield store
    await store.aclose()


async def ask(model: llm.LLM, text: str = "Hi, what do you sell?") -> str:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=text)
    out = ""
    async with model.chat(chat_ctx=ctx) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                out += chunk.delta.content
    return out


def pool(base_url: str, keys: str = KEYS, weights: tuple[float, ...] = ()) -> list[ProviderSpec]:
    base = ProviderSpec("llm", "openai", base_url=base_url, api_key=keys)
    members = pool_specs(base, key_env="OPENAI_API_KEY", url_env="OPENAI_BASE_URL")
    if weights:
        members = [replace(m, weight=w) for m, w in zip(members, weights, strict=True)]
    return members


def served(sim: OpenAISimulator) -> Counter[str]:
    return Counter(a.key for a in sim.state.log.items() if a.status == 200)


def rate_limited(sim: OpenAISimulator) -> int:
    return sum(1 for a in sim.state.log.items() if a.status == 429)


# -- part 1: pools ------------------------------------------------------------------------


def test_a_comma_separated_key_makes_one_member_per_key_named_without_the_key() -> None:
    members = pool("http://127.0.0.1:9/v1")
    assert [m.key for m in members] == ["llm:openai#1", "llm:openai#2"]
    assert [m.api_key for m in members] == KEYS.split(",")
    assert {m.tier for m in members} == {"openai"} and {m.balance for m in members} == {"weighted"}
    assert all("alpha" not in repr(m) and "bravo" not in repr(m) for m in members)
    one = pool("http://127.0.0.1:9/v1", keys="sk-only")
    assert [m.key for m in one] == ["llm:openai"] and one[0].tier is None


def test_regional_base_urls_pair_with_one_key_and_are_served_closest_first() -> None:
    base = ProviderSpec("llm", "openai", base_url="http://eu/v1,http://us/v1", api_key="sk-x")
    members = pool_specs(base, key_env="OPENAI_API_KEY", url_env="OPENAI_BASE_URL")
    assert [(m.key, m.base_url, m.api_key) for m in members] == [
        ("llm:openai#1", "http://eu/v1", "sk-x"),
        ("llm:openai#2", "http://us/v1", "sk-x"),
    ]
    assert {m.balance for m in members} == {"closest"}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"OPENAI_API_KEY": "sk-alpha-0001,,sk-bravo-0002"},
            "Invalid setting OPENAI_API_KEY: entry 2 of 3 is empty",
        ),
        (
            {"OPENAI_API_KEY": "sk-alpha-0001,sk-bravo-0002,sk-alpha-0001"},
            "Invalid setting OPENAI_API_KEY: entries 1 and 3 are the same key",
        ),
        (
            {
                "OPENAI_API_KEY": "sk-a-secret,sk-b-secret,sk-c-secret",
                "OPENAI_BASE_URL": "http://a,http://b",
            },
            "Invalid setting OPENAI_API_KEY: lists 3 keys and OPENAI_BASE_URL lists 2 URLs",
        ),
        (
            {"OPENAI_BASE_URL": "http://a.example/v1,not a url"},
            "Invalid setting OPENAI_BASE_URL: entry 2 of 2 is not a valid URL",
        ),
        (
            {"OPENAI_API_KEY": "sk-alpha-0001,sk-bravo-0002", "PROVIDER_WEIGHTS": "llm:openai#1=0"},
            "Invalid setting PROVIDER_WEIGHTS: weight for llm:openai#1 must be above 0",
        ),
        (
            {"OPENAI_API_KEY": "sk-alpha-0001", "PROVIDER_WEIGHTS": "llm:openai#3=2"},
            "Invalid setting PROVIDER_WEIGHTS: llm:openai#3 is not a configured provider",
        ),
    ],
)
def test_a_malformed_pool_stops_start_up_naming_the_variable_never_a_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as e:
        load_settings()
    message = str(e.value)
    assert message.startswith(expected), message
    for secret in ("alpha", "bravo", "secret"):
        assert secret not in message


def test_settings_give_one_spec_per_member_with_its_weight(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", KEYS)
    monkeypatch.setenv("PROVIDER_WEIGHTS", "llm:openai#1=3,llm:openai#2=1")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-1")
    monkeypatch.setenv("EQUAL_PROVIDERS", "llm:openrouter+openai")
    specs = load_settings().provider_specs("llm")
    by_key = {s.key: s for s in specs}
    assert list(by_key)[:3] == ["llm:openrouter", "llm:openai#1", "llm:openai#2"]
    assert by_key["llm:openai#1"].weight == 3 and by_key["llm:openai#2"].weight == 1
    # equals: one tier, closest first, the pool's members inside it
    assert {by_key[k].tier for k in list(by_key)[:3]} == {"openrouter+openai"}
    assert {by_key[k].balance for k in list(by_key)[:3]} == {"closest"}
    # whisper reads the same OPENAI_API_KEY: its own members
    stt = [s.key for s in load_settings().provider_specs("stt")]
    assert "stt:whisper#1" in stt and "stt:whisper#2" in stt


def test_equal_providers_must_be_neighbours(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EQUAL_PROVIDERS", "llm:openrouter+google")
    with pytest.raises(
        SettingsError, match="EQUAL_PROVIDERS: llm:openrouter\\+google are not next"
    ):
        load_settings()


async def test_status_lists_each_member_without_its_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from agent.ops.status import read_status

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", KEYS)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    statuses = await read_status(load_settings())
    keys = [s.key for s in statuses]
    assert "llm:openai#1" in keys and "llm:openai#2" in keys and "llm:openai" not in keys
    assert not any("alpha" in str(s) or "bravo" in str(s) for s in statuses)


async def test_doctor_checks_each_member_and_names_the_revoked_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from agent.ops.doctor import diagnose

    async with OpenAISimulator() as sim:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-alpha-0001,bad-key")  # the second is revoked
        monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
        monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
        findings = {f.subject: f for f in await diagnose(load_settings())}
    assert findings["llm:openai#1"].ok
    assert not findings["llm:openai#2"].ok and "rejected" in findings["llm:openai#2"].text
    assert "llm:openai" not in findings
    assert not any("alpha-0001" in f.text for f in findings.values())


async def test_each_key_has_its_own_breaker_and_a_429_on_one_leaves_the_other_serving(
    http: None, shared: DocumentStore
) -> None:
    limiter = KeyRateLimiter(requests=5, window_s=60)
    async with OpenAISimulator(rate_limit=limiter) as sim:
        chains = build_chains(pool(sim.base_url), shared, probes=False)
        try:
            # another worker spends key 1 out of sight of this one: its next answer is a 429
            for _ in range(5):
                assert limiter.take("key1", 10).allowed
            for _ in range(4):
                assert await ask(chains.llm)
            await chains.guards["llm:openai#1"].guard.drain()
            one = await shared.health("llm:openai#1")
            two = await shared.health("llm:openai#2")
            assert one.state is BreakerState.OPEN and one.last_failure is FailureKind.RATE_LIMITED
            assert two.state is BreakerState.CLOSED and two.failures == 0
            # one request met the 429 and was served by key 2; the rest went to key 2 directly
            assert rate_limited(sim) == 1
            assert served(sim) == {"key2": 4}
            assert sum(p.sent for p in chains.probers.values()) == 0
        finally:
            await chains.aclose()


# -- part 2: weights and headroom ---------------------------------------------------------


async def test_traffic_follows_the_weights_and_metrics_show_each_members_headroom(
    http: None, shared: DocumentStore
) -> None:
    from prometheus_client import REGISTRY

    from plugins.observability.metrics import PrometheusObserver

    limiter = KeyRateLimiter(requests=1000, window_s=3600)  # refills too slowly to matter
    async with OpenAISimulator(rate_limit=limiter) as sim:
        chains = build_chains(
            pool(sim.base_url, weights=(3, 1)),
            shared,
            probes=False,
            observers=[PrometheusObserver()],
        )
        try:
            for _ in range(12):
                assert await ask(chains.llm)
        finally:
            await chains.aclose()
    assert served(sim) == {"key1": 9, "key2": 3}
    for member, spent in (("openai#1", 9), ("openai#2", 3)):
        labels = {"slot": "llm", "provider": member, "dimension": "requests"}
        share = REGISTRY.get_sample_value("voice_provider_headroom_ratio", labels)
        assert share == pytest.approx((1000 - spent) / 1000, abs=0.002), member


async def test_a_key_near_its_limit_is_passed_over_before_it_answers_429(
    http: None, shared: DocumentStore
) -> None:
    """Weights 4:1 would send key 1 eight of ten requests; it has 5 a window. Its headers
    say when it is close, and it is passed over before any 429."""
    async with OpenAISimulator(rate_limit=KeyRateLimiter(requests=5, window_s=60)) as sim:
        chains = build_chains(pool(sim.base_url, weights=(4, 1)), shared, probes=False)
        try:
            for _ in range(10):
                assert await ask(chains.llm)
            assert rate_limited(sim) == 0
            assert served(sim) == {"key1": 5, "key2": 5}
            board = chains.board
            assert board is not None and board.tight("llm:openai#1")
            # both spent: the pool is tried anyway (the member that refills first first),
            # and the call still gets an answer from the floor
            assert await ask(chains.llm)
            assert rate_limited(sim) >= 1
        finally:
            await chains.aclose()


def test_a_passed_over_member_comes_back_as_its_limit_refills() -> None:
    clock = FakeClock(1000.0)
    board = HeadroomBoard(clock=clock)
    balancer = Balancer(["llm:x#1", "llm:x#2"], board=board, weights=[1, 1], clock=clock)
    board.observe("llm:x#1", [Headroom("requests", 60, 0, observed_at=1000.0, full_at=1060.0)])
    assert [balancer.order([0, 1])[0] for _ in range(4)] == [1, 1, 1, 1]  # #1 spent: passed over
    clock.advance(30)  # half refilled: 30 left, above the 3 kept in reserve
    assert not board.tight("llm:x#1")
    picks = [balancer.order([0, 1])[0] for _ in range(60)]
    # shared again by weight until #1's estimate (30 less what was sent since) nears its reserve
    assert picks.count(0) == 28 and picks[:4] == [0, 1, 0, 1]
    assert board.tight("llm:x#1") and board.spent_since("llm:x#1", 1000.0) == 28


async def test_the_pool_shares_headroom_through_the_health_store(
    http: None, shared: DocumentStore
) -> None:
    async with OpenAISimulator(rate_limit=KeyRateLimiter(requests=4, window_s=60)) as sim:
        members = pool(sim.base_url)
        first = build_chains(members[:1], shared, probes=False)  # a worker on key 1 only
        second = build_chains(members, shared, probes=False)
        try:
            for _ in range(4):  # worker 1 spends key 1
                assert await ask(first.llm, "one")
            await first.aclose()
            stored = await shared.headroom("llm:openai#1")
            assert (stored[0].dimension, stored[0].remaining, stored[0].limit) == ("requests", 0, 4)
            sim.state.log.clear()
            # worker 2 never talked to key 1, yet knows from the store it is spent
            board = second.board
            assert board is not None
            board.refresh(["llm:openai#1", "llm:openai#2"])
            await board.drain()
            for _ in range(3):
                assert await ask(second.llm, "two")
            assert rate_limited(sim) == 0
            assert served(sim) == {"key2": 3}
        finally:
            await second.aclose()


def test_openai_rate_limit_headers_are_read_as_a_refilling_bucket() -> None:
    clock = FakeClock(1000.0)
    limiter = KeyRateLimiter(requests=60, tokens=1000, window_s=60, clock=clock)
    for _ in range(59):
        limiter.take("k", 10)
    decision = limiter.take("k", 10)
    assert decision.headers["x-ratelimit-remaining-requests"] == "0"
    assert decision.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert not limiter.take("k", 10).allowed
    readings = {r.dimension: r for r in read_headroom(decision.headers, _openai(), now=1000.0)}
    requests = readings["requests"]
    assert (requests.limit, requests.remaining, requests.full_at) == (60, 0, 1060.0)
    assert requests.estimate(1030.0) == pytest.approx(30)  # half refilled half-way
    assert requests.estimate(1030.0, spent_since=5) == pytest.approx(25)
    assert readings["tokens"].per_request is False
    clock.advance(1.0)  # one request back every second
    assert limiter.take("k", 10).allowed
    assert openai_duration(0.12) == "120ms" and openai_duration(2.5) == "2.5s"


def _openai() -> tuple:  # type: ignore[type-arg]
    from plugins.providers.openai import RATE_LIMITS

    return RATE_LIMITS


def test_a_window_reset_in_epoch_ms_is_read_as_openrouter_sends_it() -> None:
    from plugins.providers.openrouter import LLM

    now = 1_800_000_000.0
    headers = {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0"}
    headers["X-RateLimit-Reset"] = str(int((now + 30) * 1000))
    (reading,) = read_headroom(headers, LLM.rate_limits, now=now)
    assert reading.full_at == pytest.approx(now + 30)
    assert reading.estimate(now + 20) == 0 and reading.estimate(now + 31) == 20


async def test_the_store_keeps_the_freshest_reading_per_dimension(shared: DocumentStore) -> None:
    new = Headroom("requests", 60, 10, observed_at=2000.0, full_at=2050.0)
    old = Headroom("requests", 60, 50, observed_at=1990.0, full_at=2000.0)
    await shared.record_headroom("llm:x#1", [new])
    await shared.record_headroom("llm:x#1", [old])  # another worker's older reading lands late
    assert await shared.headroom("llm:x#1") == [new]
    assert (await shared.health("llm:x#1")).headroom == [new]


# -- part 3: closest first ----------------------------------------------------------------


def _closest(clock: FakeClock, **settings: float) -> tuple[Balancer, HeadroomBoard]:
    board = HeadroomBoard(settings=BalanceSettings(**settings), clock=clock)  # type: ignore[arg-type]
    keys = ["llm:x#1", "llm:x#2"]
    return Balancer(keys, board=board, modes=["closest", "closest"], clock=clock), board


def test_closest_first_measures_both_then_keeps_the_faster() -> None:
    balancer, board = _closest(FakeClock(), min_samples=2, explore_every=1000)
    latency = {"llm:x#1": 0.200, "llm:x#2": 0.080}
    first = []
    for _ in range(12):
        pick = balancer.order([0, 1])[0]
        first.append(pick)
        board.on_success(balancer.keys[pick], latency_s=latency[balancer.keys[pick]])
    assert sorted(first[:4]) == [0, 0, 1, 1]  # warm-up: each measured twice
    assert set(first[4:]) == {1}


def test_hysteresis_keeps_the_leader_until_a_challenger_is_clearly_faster() -> None:
    balancer, board = _closest(FakeClock(), min_samples=1, explore_every=1000, latency_weight=1.0)
    board.on_success("llm:x#1", latency_s=0.100)
    board.on_success("llm:x#2", latency_s=0.150)
    assert balancer.order([0, 1])[0] == 0  # leader: #1
    board.on_success("llm:x#2", latency_s=0.090)  # 10 ms faster: not enough to flap
    assert [balancer.order([0, 1])[0] for _ in range(5)] == [0] * 5
    board.on_success("llm:x#1", latency_s=0.105)
    board.on_success("llm:x#2", latency_s=0.060)  # 45 ms and 43 % faster: takes over
    assert balancer.order([0, 1])[0] == 1
    board.on_success("llm:x#1", latency_s=0.055)  # now #1 is 5 ms faster: #2 stays
    assert [balancer.order([0, 1])[0] for _ in range(5)] == [1] * 5


def test_one_request_in_n_measures_the_other_member() -> None:
    balancer, board = _closest(FakeClock(), min_samples=1, explore_every=5)
    board.on_success("llm:x#1", latency_s=0.05)
    board.on_success("llm:x#2", latency_s=0.50)
    picks = [balancer.order([0, 1])[0] for _ in range(10)]
    assert picks.count(1) == 2 and picks[4] == 1 and picks[9] == 1


def test_peeking_does_not_spend_a_turn() -> None:
    board = HeadroomBoard(clock=FakeClock())
    balancer = Balancer(["a", "b"], board=board, weights=[1, 1])
    assert [balancer.peek([0, 1])[0] for _ in range(3)] == [0, 0, 0]
    assert [balancer.order([0, 1])[0] for _ in range(4)] == [0, 1, 0, 1]


async def test_regional_endpoints_send_traffic_to_the_closer_one(
    http: None, shared: DocumentStore
) -> None:
    async with OpenAISimulator() as near, OpenAISimulator() as far:
        far.state.plan.always(Fault(FaultType.SLOW_FIRST, delay_s=0.12))
        base = ProviderSpec(
            "llm", "openai", base_url=f"{far.base_url},{near.base_url}", api_key="sk-x"
        )
        specs = pool_specs(base, key_env="OPENAI_API_KEY", url_env="OPENAI_BASE_URL")
        chains = build_chains(specs, shared, probes=False)
        try:
            for _ in range(16):
                assert await ask(chains.llm)
        finally:
            await chains.aclose()
    far_n, near_n = len(far.state.log.items()), len(near.state.log.items())
    assert near_n >= 12 and far_n <= 4, (near_n, far_n)
