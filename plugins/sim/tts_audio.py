"""Real speech audio for the TTS simulators, in the formats providers put on the wire.

The simulators speak the text they are sent with the local neural voice, so a test (or the
STT simulator downstream) hears the actual words, at the sample rate and encoding the plugin
asked for. Everything here is synchronous and CPU-bound: call it through
``asyncio.to_thread``.
"""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt

from plugins.local.audio import resample
from plugins.local.hibari_tts import HibariEngine

Pcm = npt.NDArray[np.int16]

#: Encodings a simulator can produce for a raw container.
RAW_ENCODINGS = frozenset({"pcm_s16le", "pcm_f32le"})


def speak(text: str, sample_rate: int, *, silent: bool = False) -> Pcm:
    """Mono int16 speech of ``text`` at ``sample_rate``; all zeros (same length) if ``silent``."""
    engine = HibariEngine.shared()
    pcm = np.asarray(engine.synthesize(text), dtype=np.int16)
    pcm = resample(pcm, engine.sample_rate, sample_rate)
    return np.zeros_like(pcm) if silent else pcm


def encode_raw(pcm: Pcm, encoding: str) -> bytes:
    """``pcm`` as little-endian raw samples in ``encoding`` (see :data:`RAW_ENCODINGS`)."""
    if encoding == "pcm_s16le":
        return pcm.astype("<i2").tobytes()
    if encoding == "pcm_f32le":
        return (pcm.astype(np.float32) / 32768.0).astype("<f4").tobytes()
    raise ValueError(f"unsupported raw encoding {encoding!r}; use one of {sorted(RAW_ENCODINGS)}")


def encode_mp3(pcm: Pcm, sample_rate: int, bitrate_kbps: int) -> bytes:
    """``pcm`` as a constant-bitrate MP3 stream (LAME through PyAV)."""
    codec = av.CodecContext.create("libmp3lame", "w")
    codec.sample_rate = sample_rate
    codec.layout = "mono"
    codec.format = "s16p"
    codec.bit_rate = bitrate_kbps * 1000
    codec.open()
    frame_size = codec.frame_size or 1152
    out = bytearray()
    for start in range(0, pcm.size, frame_size):
        block = np.ascontiguousarray(pcm[start : start + frame_size]).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(block, format="s16p", layout="mono")
        frame.sample_rate = sample_rate
        for packet in codec.encode(frame):
            out += bytes(packet)
    for packet in codec.encode(None):
        out += bytes(packet)
    return bytes(out)


def split(data: bytes, size: int) -> list[bytes]:
    """``data`` in pieces of ``size`` bytes (the last may be shorter)."""
    if size <= 0:
        raise ValueError("chunk size must be positive")
    return [data[i : i + size] for i in range(0, len(data), size)]


def spread(lengths: list[int], duration_s: float) -> list[tuple[float, float]]:
    """Start/end times for items of the given lengths laid end to end over ``duration_s``.

    The local voice gives no alignment, so word and character timings are proportional to
    their length: close enough for captions and for the plugins' alignment code.
    """
    total = sum(lengths)
    if total <= 0:
        return [(0.0, 0.0) for _ in lengths]
    spans: list[tuple[float, float]] = []
    at = 0.0
    for n in lengths:
        step = duration_s * n / total
        spans.append((at, at + step))
        at += step
    return spans
