"""Settings more than one provider reads."""

from __future__ import annotations

from plugins.providers.definition import Option

STT_LANGUAGE = Option("STT_LANGUAGE", "Language of the callers, BCP-47", default="en-US")
