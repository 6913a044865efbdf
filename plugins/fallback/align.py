"""Lining up text: a second LLM's answer with what the caller already heard from the first, and
a tokenizer's sentences with the text they were cut from."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WS = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def non_space(text: str) -> int:
    """How many characters of ``text`` are not whitespace."""
    return len(_WS.sub("", text))


def after_non_space(text: str, count: int, start: int = 0) -> int:
    """The index in ``text`` just after the ``count``-th non-space character from ``start``
    (``start`` itself when ``count`` is 0; ``len(text)`` when there are fewer): where a
    tokenizer's output, which keeps the characters and changes only the spaces, ends in its
    input."""
    if count <= 0:
        return start
    seen = 0
    for i in range(start, len(text)):
        if not text[i].isspace():
            seen += 1
            if seen == count:
                return i + 1
    return len(text)


def sentences(text: str) -> list[str]:
    """``text`` split after sentence-ending punctuation (whitespace kept with the sentence)."""
    parts = _SENTENCE_END.split(text)
    return [p for p in parts if p.strip()]


class Aligner:
    """Turns a second provider's answer into what the caller has not heard yet.

    ``said`` is the text already emitted. While the new text agrees with it nothing is
    emitted; once the new text has covered all of ``said`` the rest flows through. If it
    diverges, it is a different wording: the sentences of it the caller already heard whole
    are dropped and the rest is spoken from the first new sentence (the interrupted sentence
    is said again once, whole, never a fragment twice).
    """

    def __init__(self, said: str, *, continues: bool) -> None:
        self.said = said
        self.continues = continues
        self._held = ""
        self._passing = False

    def feed(self, text: str) -> str:
        if self._passing:
            return text
        self._held += text
        held_n, said_n = _norm(self._held), _norm(self.said)
        if said_n.startswith(held_n):
            return ""  # still repeating what was said
        if held_n.startswith(said_n):
            return self._release_after_said()
        return self._diverged()

    def finish(self) -> str:
        if self._passing or not self._held:
            return ""
        held_n, said_n = _norm(self._held), _norm(self.said)
        if said_n.startswith(held_n):
            return ""  # the new answer is what was said already (or less)
        return self._diverged()

    def _release_after_said(self) -> str:
        cut = after_non_space(self._held, non_space(self.said))
        self._passing = True
        rest = self._held[cut:]
        self._held = ""
        return rest

    def _diverged(self) -> str:
        self._passing = True
        held, self._held = self._held, ""
        if self.continues and not _norm(self.said).startswith(_norm(held)[:8]):
            # a provider continuing the prefill: its text follows on directly
            return held if held[:1].isspace() or not self.said else " " + held
        heard = {_norm(s) for s in sentences(self.said) if _SENTENCE_END.search(s + " ")}
        complete_heard = {h for h in heard if h[-1:] in ".!?"}
        kept = [s for s in sentences(held) if _norm(s) not in complete_heard]
        out = " ".join(s.strip() for s in kept)
        return (" " + out) if out else ""
