"""The worker imports, before it forks a job process, what a call would otherwise import."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_worker_imports_what_a_calls_first_answer_would_import() -> None:
    """LiveKit forks job processes from the worker: a module imported at start-up is inherited,
    one imported on a call's first request costs every call (the OpenAI SDK builds its chat
    stream types on first use: about 0.1 s of CPU each, at the caller's first turn). A fresh
    interpreter, so no other test has imported it already."""
    code = textwrap.dedent(
        """
        import sys
        from plugins.catalog import import_plugins
        assert "openai.resources.chat.chat" not in sys.modules
        import_plugins()
        from plugins.providers.openai import _tls
        assert _tls.cache_info().currsize == 1, "the TLS context is made in the job process"
        import openai
        before = set(sys.modules)
        openai.AsyncOpenAI(api_key="sim-key").chat.completions
        late = sorted(m for m in set(sys.modules) - before if m.startswith("openai."))
        print(",".join(late))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"imported on the first request: {done.stdout}"
