"""Speech recognition for the STT simulators, decoded as it streams.

The simulators transcribe the words actually spoken with PocketSphinx; this is how they do it
on a live stream without costing more, per interim result, the longer the caller talks.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from plugins.local.audio import resample
from plugins.local.sphinx_stt import SAMPLE_RATE as SPHINX_RATE
from plugins.local.sphinx_stt import SphinxEngine, contains_speech

Pcm = npt.NDArray[np.int16]

#: How often a simulator sends an interim result while someone speaks (seconds of audio);
#: Deepgram's documented examples show each interim covering about one more second.
INTERIM_EVERY_S = 1.0
#: A brisk caller's pace: how many words of a script an interim result has reached per second.
SCRIPT_WORDS_PER_S = 3.0


class PartialDecoder:
    """One utterance decoded as it arrives, as a streaming recogniser does.

    A streaming recogniser's interim results (Deepgram's, Google's) cost it nothing extra: they are the hypothesis so far of a
    decoder that has already consumed the audio, and its final is that decoder's last word.
    Re-transcribing the whole utterance for every interim and again for the final (what a
    batch engine would do) costs time that grows with the utterance, so a long caller turn on
    a busy machine got no interim at all, which no real provider does. Audio is fed in short
    blocks: PocketSphinx holds the GIL while it decodes, and a whole 10 s utterance in one call
    would freeze every other thread of the process (the agent's event loop, in ``simulate``)
    for seconds. Blocking; run it in a thread, one call at a time.
    """

    BLOCK_S = 0.1

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.consumed = 0  # samples of the utterance already fed
        self._engine = SphinxEngine.shared()
        self._decoder: Any = None
        self._lock = threading.Lock()  # a cancelled await leaves its thread running
        self._closed = False
        self._voiced = False

    def advance(self, pcm: Pcm) -> str:
        """Feed ``pcm[consumed:]``; the hypothesis so far ("" before any word)."""
        with self._lock:
            if self._closed:
                return ""
            self._feed(pcm)
            return self._hypothesis()

    def finish(self, pcm: Pcm) -> str:
        """Feed the rest of the utterance and end it: the final transcript."""
        with self._lock:
            if self._closed:
                return ""
            self._feed(pcm)
            if self._decoder is not None:
                self._decoder.end_utt()
            text = self._hypothesis() if self._voiced else ""
            self._release()
            return text

    def close(self) -> None:
        """Abandon the utterance and give the decoder back."""
        with self._lock:
            if self._decoder is not None:
                with contextlib.suppress(Exception):
                    self._decoder.end_utt()
            self._release()

    def _feed(self, pcm: Pcm) -> None:
        fresh = pcm[self.consumed :]
        self.consumed = pcm.size
        if self._decoder is None:
            self._decoder = self._engine.acquire()
            self._decoder.start_utt()
        if not fresh.size:
            return
        audio = resample(np.ascontiguousarray(fresh), self.sample_rate, SPHINX_RATE)
        self._voiced = self._voiced or contains_speech(audio)
        block = round(SPHINX_RATE * self.BLOCK_S)
        for i in range(0, audio.size, block):
            self._decoder.process_raw(audio[i : i + block].tobytes(), full_utt=False)

    def _hypothesis(self) -> str:
        hyp = self._decoder.hyp() if self._decoder is not None else None
        return str(hyp.hypstr).strip() if hyp is not None else ""

    def _release(self) -> None:
        self._closed = True
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            self._engine.release(decoder)


class ScriptedDecoder:
    """A recogniser that "hears" a fixed script, for load tests: a cloud recogniser decodes on
    the provider's machines, so a simulator standing in for hundreds of callers must not spend
    the worker's CPU (nor hold the GIL of the process that serves every call) on PocketSphinx.
    Interim results are the script's first words at a brisk caller's pace; the final is the
    whole script. The same interface as :class:`PartialDecoder`."""

    def __init__(self, script: str, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.consumed = 0
        self._words = script.split()

    def advance(self, pcm: Pcm) -> str:
        self.consumed = pcm.size
        heard = int(SCRIPT_WORDS_PER_S * self.consumed / self.sample_rate)
        return " ".join(self._words[: max(1, heard)])

    def finish(self, pcm: Pcm) -> str:
        self.consumed = pcm.size
        return " ".join(self._words)

    def close(self) -> None:
        pass
