"""Lining up a second LLM's answer with what the caller already heard from the first."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WS = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


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
        # skip exactly as many non-space characters as ``said`` has
        target = len(_WS.sub("", self.said))
        seen = 0
        cut = 0
        for i, ch in enumerate(self._held):
            if not ch.isspace():
                seen += 1
            if seen == target:
                cut = i + 1
                break
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
