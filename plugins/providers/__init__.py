"""One module per provider vendor; each defines its providers once (:class:`Provider`).

To add a provider, write one :class:`~plugins.providers.definition.Provider` (a builder, its
settings, price, credit check, error wording and simulator) and either list it in
:data:`plugins.catalog.BUILTIN` or ship it in a package with an entry point in the group
``never_silent.providers`` (see ``examples/openai-compatible-tts``).
"""

from plugins.providers.definition import (
    BuildContext,
    Option,
    Provider,
    ProviderUnusableError,
    SimulatorHook,
)
from plugins.resilience.phrases import ErrorPhrases

__all__ = [
    "BuildContext",
    "ErrorPhrases",
    "Option",
    "Provider",
    "ProviderUnusableError",
    "SimulatorHook",
]
