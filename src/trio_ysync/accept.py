"""Accepting TCP connections in bursts, keeping each one's socket for the fast paths.

When a listening socket is readable, every connection waiting on it is accepted at once (a
reconnect storm arrives as thousands of them), and each is handed over as the plain
``socket.socket`` together with a trio stream over the same socket: the connection reads and
writes the socket directly while that does not block (trio's socket methods cost several times
the system call in a storm of small messages), and uses the stream for everything else.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable

import trio

__all__ = ["accept_forever", "plain_socket"]

logger = logging.getLogger("trio_ysync.accept")

# Accept errors that say "not now" (a full descriptor table, no memory): wait and retry, as
# trio.serve_listeners does.
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_BURST = 128
_RESOURCE_BACKOFF = 0.1

#: Serves one accepted connection: its socket, and a trio stream over the same socket.
Handler = Callable[[socket.socket, trio.SocketStream], Awaitable[None]]


def plain_socket(listener: trio.SocketListener) -> socket.socket:
    """The listening socket of ``listener`` as a plain, non-blocking ``socket.socket`` (the
    listener gives it up)."""
    sock = socket.socket(fileno=listener.socket.detach())
    sock.setblocking(False)
    return sock


async def accept_forever(sock: socket.socket, handler: Handler, nursery: trio.Nursery) -> None:
    """Accept connections on the listening ``sock`` and start ``handler`` for each in
    ``nursery``, until cancelled; then close ``sock``."""
    try:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(_BURST):
                try:
                    connection, _ = sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _RESOURCE_ERRORS:
                        logger.error("cannot accept connections for now: %s", exc)
                        await trio.sleep(_RESOURCE_BACKOFF)
                        break
                    continue  # the client went away before it was accepted
                connection.setblocking(False)
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(connection))
                nursery.start_soon(handler, connection, stream)
            # A burst fills the nursery with work: let it run before taking more.
            await trio.lowlevel.checkpoint()
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()
