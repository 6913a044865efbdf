"""Local servers that speak each provider's real wire protocol and fail on command.

Product code: ``python -m agent simulate`` runs calls against them, and the tests drive the
real LiveKit plugins through them.
"""
