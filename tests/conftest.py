"""Fixtures shared by the whole suite.

``redis_url``: a real redis-server for the session, on a free 127.0.0.1 port, working in a
temporary directory with persistence off, stopped when the session ends. Tests that share it
isolate themselves with their own key prefix (see ``redis_prefix``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a private redis-server started for this test session."""
    try:
        server = RedisServer().start()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, so tests can share the session's redis-server."""
    return f"test:{uuid.uuid4().hex[:12]}:"
