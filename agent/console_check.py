"""Why the audio console cannot run here, in one line, before LiveKit fails with a traceback."""

from __future__ import annotations


def audio_console_problem() -> str | None:
    try:
        import sounddevice as sd  # type: ignore[import-untyped]
    except OSError:
        return (
            "The audio console needs the PortAudio library, which is missing: install it "
            "(Debian: apt-get install libportaudio2) or run `python -m agent console --text`."
        )
    try:
        devices = sd.query_devices()
    except Exception as e:  # PortAudio reports host API failures as plain exceptions
        return f"No audio devices could be listed ({e}); run `python -m agent console --text`."
    has_in = any(d.get("max_input_channels", 0) > 0 for d in devices)
    has_out = any(d.get("max_output_channels", 0) > 0 for d in devices)
    if not (has_in and has_out):
        missing = "microphone" if not has_in else "speaker"
        return (
            f"This machine has no {missing} for the audio console; "
            "run `python -m agent console --text` to type to the agent instead."
        )
    return None
