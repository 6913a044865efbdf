"""Operator commands: ``status`` and ``doctor``."""
