"""The client provider: keep a local Yjs document in sync with a room, from a trio program.

Use :func:`open_provider` (``async with``) or start :meth:`Provider.run` in a nursery. See
``docs/provider.rst``.
"""

from ._awareness import AwarenessCallback, AwarenessOrigin, ProviderAwareness
from ._feed import Subscription
from ._provider import (
    Backoff,
    ConnectionStatus,
    HeadersSource,
    ParamsSource,
    PermanentDisconnect,
    Provider,
    ProviderError,
    TokenSource,
    WebSocketFactory,
    default_should_reconnect,
    open_provider,
)

__all__ = [
    "AwarenessCallback",
    "AwarenessOrigin",
    "Backoff",
    "ConnectionStatus",
    "HeadersSource",
    "ParamsSource",
    "PermanentDisconnect",
    "Provider",
    "ProviderAwareness",
    "ProviderError",
    "Subscription",
    "TokenSource",
    "WebSocketFactory",
    "default_should_reconnect",
    "open_provider",
]
