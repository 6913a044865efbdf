"""A telephone channel: what a caller's voice has become by the time a SIP trunk hands it over.

Narrowband PSTN audio is 8 kHz, band-limited to roughly 300-3400 Hz, companded with G.711
mu-law, and carries some line noise. Tests and benchmarks pass clean synthetic speech through
:func:`phone_channel` to measure the local recognisers on the audio they really get.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from plugins.local.audio import Int16Array, require_mono_int16, resample

PHONE_RATE = 8000
BAND_HZ = (300.0, 3400.0)
_MU = 255.0


def band_pass(pcm: Int16Array, sample_rate: int, band_hz: tuple[float, float]) -> Int16Array:
    """Zero-phase band-pass in the frequency domain with 100 Hz cosine skirts (no SciPy)."""
    low, high = band_hz
    if not 0 < low < high < sample_rate / 2:
        raise ValueError(f"band {band_hz} Hz must lie inside 0..{sample_rate / 2} Hz")
    spectrum = np.fft.rfft(pcm.astype(np.float64))
    freqs = np.fft.rfftfreq(pcm.size, 1.0 / sample_rate)
    skirt = 100.0
    gain = np.clip((freqs - (low - skirt)) / skirt, 0.0, 1.0) * np.clip(
        ((high + skirt) - freqs) / skirt, 0.0, 1.0
    )
    gain = 0.5 - 0.5 * np.cos(np.pi * gain)
    filtered = np.fft.irfft(spectrum * gain, n=pcm.size)
    out: Int16Array = np.clip(filtered, -32768, 32767).astype(np.int16)
    return out


def mu_law_round_trip(pcm: Int16Array) -> Int16Array:
    """Encode to 8-bit G.711 mu-law and decode back: the quantisation a phone call adds."""
    x = pcm.astype(np.float64) / 32768.0
    encoded = np.sign(x) * np.log1p(_MU * np.abs(x)) / np.log1p(_MU)
    quantised = np.round((encoded + 1.0) * 127.5) / 127.5 - 1.0  # 256 levels
    decoded = np.sign(quantised) * np.expm1(np.abs(quantised) * np.log1p(_MU)) / _MU
    out: Int16Array = np.clip(decoded * 32768.0, -32768, 32767).astype(np.int16)
    return out


def add_noise(pcm: Int16Array, snr_db: float, rng: np.random.Generator) -> Int16Array:
    """White noise ``snr_db`` below the signal's RMS."""
    signal = pcm.astype(np.float64)
    rms = float(np.sqrt(np.mean(np.square(signal)))) if signal.size else 0.0
    noise: NDArray[np.float64] = rng.normal(0.0, rms / (10.0 ** (snr_db / 20.0)), signal.size)
    out: Int16Array = np.clip(signal + noise, -32768, 32767).astype(np.int16)
    return out


def phone_channel(
    pcm: Int16Array,
    sample_rate: int,
    *,
    snr_db: float | None = 30.0,
    level_db: float = -6.0,
    seed: int = 0,
) -> Int16Array:
    """Clean mono int16 speech -> 8 kHz telephone audio (band-pass, noise, mu-law).

    ``level_db`` scales the voice first (a phone line is rarely at full level); ``snr_db``
    None leaves the line noiseless. Returns 8 kHz samples.
    """
    require_mono_int16(pcm)
    narrow = resample(pcm, sample_rate, PHONE_RATE)
    scaled: Int16Array = np.clip(
        narrow.astype(np.float64) * 10.0 ** (level_db / 20.0), -32768, 32767
    ).astype(np.int16)
    banded = band_pass(scaled, PHONE_RATE, BAND_HZ)
    if snr_db is not None:
        banded = add_noise(banded, snr_db, np.random.default_rng(seed))
    return mu_law_round_trip(banded)
