"""Is this TTS audio plausible speech? Noise, clipping and bytes that are not audio are failures.

A TTS that answers 200 with random bytes, an HTML page or an error document still "succeeds"
as far as HTTP goes, and the plugin pushes whatever came as 16-bit PCM: the caller hears
full-scale noise. Speech has a shape no such output has, measured over short windows:

* its RMS level stays well below full scale (synthesized speech sits around -20 to -30 dBFS;
  random bytes are at -5 dBFS),
* it hardly ever touches full scale (clipping),
* it swings around zero (text or JSON read as samples is all positive: a large DC offset).

A window that breaks any of these is implausible. The thresholds sit far from speech so that
a loud voice or a hard consonant never trips them; they exist to catch what is not audio.

:func:`min_speech_s` is the other half: a TTS answer that ends cleanly with far less audio
than its text needs (an error written into a 200 body, a provider that stops early) was cut.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FULL_SCALE = 32768.0
#: Audio judged at a time once the answer is playing.
WINDOW_S = 0.1
#: The first window, held back from the caller until it is judged: short, because every
#: millisecond of it is added to the first audio of every turn (a voice streaming in real
#: time takes 40 ms to send 40 ms), and enough for what it guards against: noise, clipping
#: and bytes read as samples are wrong from the first sample on. Two 20 ms frames.
FIRST_WINDOW_S = 0.04
#: RMS above this fraction of full scale is not speech (random bytes: ~0.58).
MAX_RMS = 0.45
#: More than this fraction of samples at full scale is clipping, not speech.
MAX_CLIPPED = 0.02
CLIP_LEVEL = 32700
#: A mean this far from zero (fraction of full scale) is text or bytes read as samples.
MAX_DC = 0.25
#: Letters and digits a second no voice speaks faster than (brisk speech is ~15).
MAX_CHARS_PER_S = 40.0
#: Texts shorter than this are not judged for length (a name, "OK.").
MIN_JUDGED_CHARS = 20


def min_speech_s(text_chars: int) -> float:
    """The least audio a text of ``text_chars`` letters and digits can take; 0 if too short."""
    return text_chars / MAX_CHARS_PER_S if text_chars >= MIN_JUDGED_CHARS else 0.0


def spoken_chars(text: str) -> int:
    """Letters and digits: what a voice speaks (markup and punctuation take no time)."""
    return sum(ch.isalnum() for ch in text)


def implausible(samples: npt.NDArray[np.int16]) -> str | None:
    """Why ``samples`` (one window, mono or interleaved int16) cannot be speech, or None."""
    if samples.size == 0:
        return None
    x = samples.astype(np.float64)
    rms = float(np.sqrt(np.mean(x * x))) / FULL_SCALE
    if rms > MAX_RMS:
        return f"full-scale noise (RMS {rms:.0%} of full scale)"
    clipped = float(np.mean(np.abs(x) >= CLIP_LEVEL))
    if clipped > MAX_CLIPPED:
        return f"clipped audio ({clipped:.0%} of samples at full scale)"
    dc = abs(float(np.mean(x))) / FULL_SCALE
    if dc > MAX_DC:
        return f"not audio (offset {dc:.0%} of full scale: text or bytes read as samples)"
    return None


class SpeechCheck:
    """Judges a stream of int16 frames window by window; counts the audio's duration."""

    def __init__(self) -> None:
        self._window: list[npt.NDArray[np.int16]] = []
        self._window_samples = 0
        self._samples_per_s = 0
        self.seconds = 0.0
        self.windows_judged = 0

    def feed(self, data: npt.NDArray[np.int16], sample_rate: int, num_channels: int) -> str | None:
        """Add one frame; the reason the window it completes is implausible, or None."""
        self._samples_per_s = sample_rate * max(1, num_channels)
        self.seconds += data.size / self._samples_per_s if self._samples_per_s else 0.0
        self._window.append(data)
        self._window_samples += data.size
        window_s = FIRST_WINDOW_S if self.windows_judged == 0 else WINDOW_S
        if self._window_samples >= window_s * self._samples_per_s:
            return self._judge()
        return None

    def finish(self) -> str | None:
        """Judge what is left (a partial window of at least 20 ms)."""
        if self._samples_per_s and self._window_samples >= 0.02 * self._samples_per_s:
            return self._judge()
        return None

    def _judge(self) -> str | None:
        window = np.concatenate(self._window) if len(self._window) > 1 else self._window[0]
        self._window, self._window_samples = [], 0
        self.windows_judged += 1
        return implausible(window)
