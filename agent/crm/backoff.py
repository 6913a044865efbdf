"""Full-jitter backoff and a retry budget (AWS full jitter; gRPC retry throttling)."""

from __future__ import annotations

import random


def full_jitter(
    attempt: int, *, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Sleep before retry number ``attempt`` (1-based): ``U(0, min(cap, base * 2**(attempt-1)))``."""
    r = rng or random
    return r.uniform(0.0, min(cap_s, base_s * (2 ** max(0, attempt - 1))))


class RetryBudget:
    """gRPC-style throttling: retries are allowed only while the token count is above half.

    Each failure costs one token, each success gives back ``token_ratio``: with the defaults
    retries stay near 10% of requests, so a struggling GHL is not hit harder by our retries.
    """

    def __init__(self, max_tokens: float = 10.0, token_ratio: float = 0.1) -> None:
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self._tokens = max_tokens

    def record_success(self) -> None:
        self._tokens = min(self.max_tokens, self._tokens + self.token_ratio)

    def record_failure(self) -> None:
        self._tokens = max(0.0, self._tokens - 1.0)

    def can_retry(self) -> bool:
        return self._tokens > self.max_tokens / 2
