"""Small PCM helpers shared by the local speech engines.

The engines speak numpy int16 mono (what eSpeak and PocketSphinx use natively and what LiveKit
frames carry); these helpers are the only place that converts, resamples or measures it, so every
engine handles odd input the same way.
"""

from __future__ import annotations

import math

import numpy as np
from livekit import rtc
from livekit.agents import utils
from livekit.agents.utils import AudioBuffer
from numpy.typing import NDArray

Int16Array = NDArray[np.int16]

_INT16_FULL_SCALE = 32767.0


def float_to_int16(audio: NDArray[np.floating]) -> Int16Array:
    """Float samples in [-1, 1] (clipped outside) -> int16."""
    clipped = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return (clipped * _INT16_FULL_SCALE).astype(np.int16)


def int16_to_float(pcm: Int16Array) -> NDArray[np.float32]:
    return pcm.astype(np.float32) / _INT16_FULL_SCALE


def require_mono_int16(pcm: object, *, what: str = "pcm") -> Int16Array:
    """Validate engine input: a 1-D numpy int16 array, else a message saying how to fix it."""
    if not isinstance(pcm, np.ndarray):
        raise TypeError(
            f"{what} must be a numpy int16 array of mono samples, got {type(pcm).__name__}; "
            "wrap raw bytes with numpy.frombuffer(data, dtype=numpy.int16)"
        )
    if pcm.dtype != np.int16:
        raise TypeError(
            f"{what} must have dtype int16, got {pcm.dtype}; convert float audio in [-1, 1] "
            "with plugins.local.audio.float_to_int16"
        )
    if pcm.ndim != 1:
        raise ValueError(
            f"{what} must be 1-D mono samples, got shape {pcm.shape}; downmix first "
            "(plugins.local.audio.frame_to_mono)"
        )
    return pcm


def resample(pcm: Int16Array, from_rate: int, to_rate: int) -> Int16Array:
    """Resample mono int16 with LiveKit's own (high-quality) resampler; safe from any thread."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate or pcm.size == 0:
        return pcm
    resampler = rtc.AudioResampler(
        from_rate, to_rate, num_channels=1, quality=rtc.AudioResamplerQuality.HIGH
    )
    frame = rtc.AudioFrame(pcm.tobytes(), from_rate, 1, pcm.size)
    out = [*resampler.push(frame), *resampler.flush()]
    if not out:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in out])


def resample_exact(pcm: Int16Array, from_rate: int, to_rate: int) -> Int16Array:
    """Resample a whole utterance deterministically: the same input gives the same samples.

    LiveKit's resampler dithers its int16 output (about 2 LSB of fresh noise on every call),
    and Whisper tiny's choice between two close words on a hard line flips on that much, so a
    caller's recognition, a test or a benchmark would differ run to run for no reason. This is
    band-limited resampling in the frequency domain (zero-padded ends so the FFT's wrap-around
    meets silence, a cosine roll-off over the top 10% of the shared band against ringing) for
    audio that is whole in memory, as a batch recogniser gets it; streams keep :func:`resample`.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    if from_rate == to_rate or pcm.size == 0:
        return pcm
    step = from_rate // math.gcd(from_rate, to_rate)  # input samples per whole output count
    pad = max(step, from_rate // 50)  # 20 ms of silence on each side
    n = -(-(pcm.size + 2 * pad) // step) * step
    m = n * to_rate // from_rate
    padded = np.zeros(n, dtype=np.float64)
    padded[pad : pad + pcm.size] = pcm
    spectrum = np.fft.rfft(padded)
    bins = min(spectrum.size, m // 2 + 1)
    kept = np.zeros(m // 2 + 1, dtype=np.complex128)
    kept[:bins] = spectrum[:bins]
    roll = max(1, bins // 10)
    kept[bins - roll : bins] *= 0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, roll))
    out = np.fft.irfft(kept, n=m) * (m / n)
    start = pad * to_rate // from_rate
    length = round(pcm.size * to_rate / from_rate)
    result: Int16Array = np.clip(np.rint(out[start : start + length]), -32768, 32767).astype(
        np.int16
    )
    return result


def frame_to_mono(frame: rtc.AudioFrame) -> Int16Array:
    """A LiveKit frame's samples as mono int16 (channels averaged)."""
    data = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels == 1:
        return data.copy()
    interleaved = data.reshape(-1, frame.num_channels).astype(np.int32)
    mono: Int16Array = interleaved.mean(axis=1).astype(np.int16)
    return mono


def buffer_to_mono(buffer: AudioBuffer) -> tuple[Int16Array, int]:
    """A LiveKit audio buffer (frame or frames) as mono int16 plus its sample rate."""
    if isinstance(buffer, list) and not buffer:
        raise ValueError("nothing to recognize: the audio buffer has no frames")
    frame = utils.merge_frames(buffer) if isinstance(buffer, list) else buffer
    if not isinstance(frame, rtc.AudioFrame):
        raise TypeError(
            f"expected an rtc.AudioFrame or a list of them, got {type(buffer).__name__}"
        )
    return frame_to_mono(frame), frame.sample_rate


def rms_dbfs(pcm: Int16Array) -> float:
    """Loudness relative to full scale; -inf for empty or digital silence."""
    if pcm.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(pcm.astype(np.float64)))))
    if rms == 0.0:
        return -math.inf
    return 20.0 * math.log10(rms / _INT16_FULL_SCALE)


def is_silent(pcm: Int16Array, *, threshold_dbfs: float = -50.0) -> bool:
    return rms_dbfs(pcm) < threshold_dbfs


def silence(duration_s: float, sample_rate: int) -> Int16Array:
    return np.zeros(max(0, round(duration_s * sample_rate)), dtype=np.int16)


# -- conditioning for the local recognisers ----------------------------------------------------

#: Speech level the recognisers are fed: telephone audio arrives anywhere from -45 to -10 dBFS.
ASR_TARGET_DBFS = -20.0
#: Never amplify by more than this: a quiet line is lifted, line noise is not turned into speech.
ASR_MAX_GAIN_DB = 24.0
#: Audio whose loudest stretch stays below this is line noise, not a quiet caller: left as is.
ASR_NOISE_FLOOR_DBFS = -48.0


def condition_for_asr(pcm: Int16Array, sample_rate: int, target_rate: int) -> Int16Array:
    """Telephone (or any) mono int16 audio -> what a local recogniser hears best.

    Resampled to the recogniser's rate, deterministically (:func:`resample_exact`: 8 kHz phone
    audio upsampled cleanly, 48 kHz WebRTC audio downsampled), the DC offset some phone gateways add
    removed, and a quiet caller lifted toward :data:`ASR_TARGET_DBFS` (gain capped at
    :data:`ASR_MAX_GAIN_DB`, peaks kept below clipping, line noise and silence left alone).
    Loud audio is never attenuated: both recognisers normalise loud input themselves.
    """
    require_mono_int16(pcm)
    audio = resample_exact(pcm, sample_rate, target_rate)
    if audio.size == 0:
        return audio
    samples = audio.astype(np.float64)
    samples -= samples.mean()
    gain_db = _lift_db(_speech_level_dbfs(samples, target_rate))
    gain = 10.0 ** (gain_db / 20.0)
    peak = float(np.max(np.abs(samples)))
    if peak * gain > _INT16_FULL_SCALE * 0.98:
        gain = _INT16_FULL_SCALE * 0.98 / peak
    conditioned: Int16Array = np.clip(np.rint(samples * gain), -32768, 32767).astype(np.int16)
    return conditioned


class StreamingGain:
    """Slow automatic gain for a live stream: quiet phone lines are lifted toward the target.

    The speech level is the loudest recent 10-30 ms frame, decaying by ``release_db_per_s``, so
    the gain follows a caller's level over seconds, not syllables, and pauses are not pumped up
    (the gain is capped at :data:`ASR_MAX_GAIN_DB` and never exceeds what the level allows).
    """

    def __init__(self, *, release_db_per_s: float = 6.0, sample_rate: int = 16000) -> None:
        if release_db_per_s <= 0:
            raise ValueError(f"release_db_per_s must be positive, got {release_db_per_s}")
        self._release = release_db_per_s
        self._rate = sample_rate
        self._level_dbfs = -90.0  # no speech heard yet: the first voiced frame sets the level

    def apply(self, pcm: Int16Array) -> Int16Array:
        if pcm.size == 0:
            return pcm
        level = rms_dbfs(pcm)
        decayed = self._level_dbfs - self._release * pcm.size / self._rate
        self._level_dbfs = max(decayed, level, -90.0)
        gain_db = _lift_db(self._level_dbfs)
        if gain_db <= 0.0:
            return pcm
        scaled = pcm.astype(np.float32) * (10.0 ** (gain_db / 20.0))
        out: Int16Array = np.clip(scaled, -32768, 32767).astype(np.int16)
        return out


def _speech_level_dbfs(samples: NDArray[np.float64], sample_rate: int) -> float:
    """The level of the loud (speech) part: the 90th percentile of 20 ms frame levels."""
    frame = max(1, sample_rate // 50)
    usable = samples.size - samples.size % frame
    frames = samples[None, :] if usable == 0 else samples[:usable].reshape(-1, frame)
    rms = np.sqrt(np.mean(np.square(frames), axis=1))
    level = float(np.percentile(rms, 90))
    if level <= 0.0:
        return -math.inf
    return 20.0 * math.log10(level / _INT16_FULL_SCALE)


def _lift_db(level_dbfs: float) -> float:
    """Gain that brings speech at ``level_dbfs`` to the target: only lifts, capped, and none
    for audio at the noise floor."""
    if level_dbfs < ASR_NOISE_FLOOR_DBFS:
        return 0.0
    return max(0.0, min(ASR_TARGET_DBFS - level_dbfs, ASR_MAX_GAIN_DB))
