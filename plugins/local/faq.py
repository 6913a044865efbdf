"""An FAQ a voice agent can answer without a network: trigger phrases in, a spoken answer out.

Callers' words come from speech recognition: lower case, no punctuation, and small slips
("pricng"). Triggers are whole words matched in order; a long word (six letters or more)
tolerates a slip of about one letter in six. Answers are checked when the book is built so a
bad FAQ file fails at start-up with the key it is about, never in the middle of a call.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
_UNSPEAKABLE = re.compile(r"[*#`_\[\]<>|]")


def words(text: str) -> list[str]:
    """The lower-case words of an utterance, as FAQ triggers are matched against them."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


@dataclass(frozen=True)
class FaqEntry:
    topic: str  # the first trigger phrase: how the entry is named in notes
    triggers: tuple[tuple[str, ...], ...]
    answer: str


class FaqBook:
    """Validated FAQ entries; :meth:`matches` finds the ones a caller's words ask about.

    ``faq`` maps ``"trigger, other trigger"`` to a spoken answer, in which ``{name}``
    placeholders are filled from ``fields`` (e.g. ``{"company": "Acme"}``).
    """

    def __init__(self, faq: Mapping[str, str], *, fields: Mapping[str, str] | None = None) -> None:
        self._fields = dict(fields or {})
        self.entries = tuple(self._entry(key, answer) for key, answer in faq.items())

    @classmethod
    def from_file(cls, path: str | Path, *, fields: Mapping[str, str] | None = None) -> FaqBook:
        return cls(load_faq(path), fields=fields)

    def _entry(self, key: str, answer: str) -> FaqEntry:
        triggers = tuple(tuple(words(phrase)) for phrase in key.split(",") if phrase.strip())
        if not triggers or not all(triggers):
            raise ValueError(
                f"FAQ key {key!r} has no trigger words: use comma-separated phrases "
                'like "price, pricing, how much"'
            )
        try:
            spoken = answer.format(**self._fields).strip()
        except (KeyError, IndexError, ValueError) as exc:
            known = ", ".join("{" + name + "}" for name in self._fields) or "none"
            raise ValueError(
                f"FAQ answer for {key!r} has a bad placeholder ({exc}): "
                f"the ones filled in are {known}"
            ) from exc
        if not spoken:
            raise ValueError(f"FAQ answer for {key!r} is empty: give the sentence to say")
        if _UNSPEAKABLE.search(spoken):
            raise ValueError(
                f"FAQ answer for {key!r} contains markup symbols: write plain spoken sentences"
            )
        return FaqEntry(topic=" ".join(triggers[0]), triggers=triggers, answer=spoken)

    def matches(self, heard: Sequence[str]) -> list[FaqEntry]:
        """Entries whose triggers occur in ``heard`` (lower-case words), in the caller's order."""
        scored: list[tuple[int, int, FaqEntry]] = []
        for order, entry in enumerate(self.entries):
            best = 0
            position = len(heard)
            for trigger in entry.triggers:
                at = find_phrase(heard, trigger)
                if at is not None and len(trigger) > best:
                    best, position = len(trigger), at
            if best:
                scored.append((position, order, entry))
        return [entry for _, _, entry in sorted(scored, key=lambda s: (s[0], s[1]))]


def load_faq(path: str | Path) -> dict[str, str]:
    """The FAQ from a TOML file with a ``[faq]`` table of trigger phrases -> answers."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(
            f"FAQ file {path} cannot be read ({exc.strerror}): check the path"
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"FAQ file {path} is not valid TOML: {exc}") from exc
    faq = data.get("faq")
    if not isinstance(faq, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in faq.items()
    ):
        raise ValueError(
            f"FAQ file {path} needs a [faq] table of "
            '"trigger, other trigger" = "spoken answer" string pairs'
        )
    return dict(faq)


@lru_cache(maxsize=65536)
def word_matches(heard: str, trigger: str) -> bool:
    """``heard`` is ``trigger``, allowing a small recognition slip in a long word."""
    if heard == trigger:
        return True
    if len(trigger) < 6 or abs(len(heard) - len(trigger)) > 2:
        return False
    return difflib.SequenceMatcher(None, heard, trigger).ratio() >= 0.84


def find_phrase(heard: Sequence[str], phrase: Sequence[str]) -> int | None:
    """Where ``phrase`` starts in ``heard`` (word by word, slips allowed), or ``None``."""
    for i in range(len(heard) - len(phrase) + 1):
        if all(word_matches(heard[i + k], p) for k, p in enumerate(phrase)):
            return i
    return None


def has_phrase(heard: Sequence[str], phrases: Sequence[Sequence[str]]) -> bool:
    return any(find_phrase(heard, p) is not None for p in phrases)
