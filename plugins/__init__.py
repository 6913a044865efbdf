"""Resilience layer for LiveKit Agents: guarded provider chains that always end on a local provider.

Reusable without the sales agent: nothing here imports ``agent``.
"""
