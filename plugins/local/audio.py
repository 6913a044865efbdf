"""Small PCM helpers shared by the local speech engines.

The engines speak numpy int16 mono (what eSpeak and PocketSphinx use natively and what LiveKit
frames carry); these helpers are the only place that converts, resamples or measures it, so every
engine handles odd input the same way.
"""

from __future__ import annotations

import math

import numpy as np
from livekit import rtc
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


def frame_to_mono(frame: rtc.AudioFrame) -> Int16Array:
    """A LiveKit frame's samples as mono int16 (channels averaged)."""
    data = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels == 1:
        return data.copy()
    interleaved = data.reshape(-1, frame.num_channels).astype(np.int32)
    mono: Int16Array = interleaved.mean(axis=1).astype(np.int16)
    return mono


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
