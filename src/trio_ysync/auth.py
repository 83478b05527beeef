"""Who may read and write a room: grants, refusals, and the built-in signed tokens.

A server asks its ``authorize`` hook about every connection before the room is loaded::

    async def authorize(request: ConnectionRequest) -> Grant:
        user = await sessions.user_for(request.header("cookie"))
        if user is None:
            raise Unauthorized("log in first")
        if not user.may_open(request.room):
            raise Forbidden("not your document")
        return Grant(Access.READ_ONLY if user.viewer else Access.READ_WRITE, identity=user.name)

    RoomServer(store, authorize=authorize)

Rights belong to the connection: two clients of one room can hold different grants.

:class:`TokenAuthorizer` is a ready-made hook for HMAC-signed JSON Web Tokens (HS256, via
PyJWT), which any backend in any language can mint; :func:`create_token` mints them in Python
and ``trio-ysync token create`` on the command line. The claims:

- ``room``: the room name, or with ``"prefix": true`` a prefix of room names (an empty prefix
  covers every room: a server-wide token);
- ``access``: ``"rw"`` (read and write, the default) or ``"r"`` (read only);
- ``exp``: when the token expires (a connection it opened is closed with 4401 then);
- ``sub``: who the token was issued to (logs and hooks see it as the grant's identity).

The token travels in the ``token`` query parameter (what y-websocket's ``params`` option sends)
or in an ``Authorization: Bearer`` header.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from .connection import ConnectionRequest
from .errors import YSyncError

__all__ = [
    "MIN_SECRET_BYTES",
    "Access",
    "Authorize",
    "Forbidden",
    "Grant",
    "TokenAuthorizer",
    "Unauthorized",
    "allow_everyone",
    "check_secret",
    "create_token",
    "read_secret_file",
    "token_of",
]

#: HMAC-SHA256 keys shorter than this are refused (RFC 7518, section 3.2).
MIN_SECRET_BYTES = 32
_ALGORITHM = "HS256"


class Access(enum.Enum):
    """What a connection may do in its room."""

    #: Read the document and every update, and write.
    READ_WRITE = "rw"
    #: Read the document and every update; its own updates are never applied.
    READ_ONLY = "r"


@dataclass(frozen=True, slots=True)
class Grant:
    """The rights of one connection, returned by an ``authorize`` hook."""

    access: Access = Access.READ_WRITE
    #: Who is connected (a user name or ID): shown in logs, passed to hooks.
    identity: str | None = None
    #: Anything else the application wants later hooks to see.
    context: Any = None
    #: When the grant ends, in seconds since the epoch: the connection is closed with 4401.
    expires_at: float | None = None

    @property
    def read_only(self) -> bool:
        """Whether the connection may only read."""
        return self.access is Access.READ_ONLY


# 4401 and 4403 are the close codes Hocuspocus uses for the same refusals.


class Unauthorized(YSyncError):
    """Credentials are missing, invalid or expired: HTTP 401 before the upgrade, 4401 after."""

    close_code = 4401
    http_status = 401
    peer_fault = True


class Forbidden(YSyncError):
    """Valid credentials that do not cover this room: HTTP 403 before the upgrade, 4403 after."""

    close_code = 4403
    http_status = 403
    peer_fault = True


#: The ``authorize`` hook: a grant for the request, or :class:`Unauthorized` /
#: :class:`Forbidden`.
Authorize = Callable[[ConnectionRequest], Awaitable[Grant]]


async def allow_everyone(request: ConnectionRequest) -> Grant:
    """The default hook: every connection may read and write (for trusted networks only)."""
    return Grant()


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """The shared secret kept in the file ``path`` (surrounding whitespace removed).

    Raises:
        OSError: the file cannot be read.
        ValueError: the secret is shorter than :data:`MIN_SECRET_BYTES`.
    """
    with open(path, "rb") as file:
        secret = file.read().strip()
    check_secret(secret)
    return secret


def check_secret(secret: bytes) -> None:
    """Refuse a secret too short to sign tokens safely.

    Raises:
        ValueError: ``secret`` is shorter than :data:`MIN_SECRET_BYTES`.
    """
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the secret has {len(secret)} bytes; use at least {MIN_SECRET_BYTES} random bytes "
            f"(for example: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )


def create_token(
    secret: bytes | str,
    room: str,
    *,
    prefix: bool = False,
    read_only: bool = False,
    ttl: float | None = 3600.0,
    subject: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token for ``room`` (or, with ``prefix``, every room whose name starts so).

    Args:
        secret: the server's shared secret.
        room: the room name, or a prefix (``""`` with ``prefix=True``: every room).
        prefix: whether ``room`` is a prefix.
        read_only: grant read-only access.
        ttl: seconds until it expires (``None``: never).
        subject: who it is for.
        now: the issue time (seconds since the epoch; default: now).
    """
    secret = secret.encode() if isinstance(secret, str) else secret
    check_secret(secret)
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "room": room,
        "access": Access.READ_ONLY.value if read_only else Access.READ_WRITE.value,
        "iat": int(issued),
    }
    if prefix:
        claims["prefix"] = True
    if ttl is not None:
        claims["exp"] = int(issued + ttl)
    if subject is not None:
        claims["sub"] = subject
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


class TokenAuthorizer:
    """An ``authorize`` hook that accepts the tokens :func:`create_token` makes.

    Args:
        secret: the shared secret the tokens are signed with.
        leeway: seconds of clock difference tolerated on ``exp``, ``nbf`` and ``iat``.
        audience: when given, tokens must carry this ``aud`` claim.
        issuer: when given, tokens must carry this ``iss`` claim.
    """

    def __init__(
        self,
        secret: bytes | str,
        *,
        leeway: float = 0.0,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self._secret = secret.encode() if isinstance(secret, str) else secret
        check_secret(self._secret)
        self.leeway = leeway
        self.audience = audience
        self.issuer = issuer

    async def __call__(self, request: ConnectionRequest) -> Grant:
        """The grant the request's token gives for its room.

        Raises:
            Unauthorized: no token, or an invalid or expired one.
            Forbidden: a valid token for other rooms.
        """
        return self.grant(self.claims(token_of(request)), request.room)

    async def authorize_server(self, request: ConnectionRequest) -> Grant:
        """The grant for operations on the whole server (listing and deleting rooms through the
        HTTP API): only a token for every room (an empty ``room`` prefix) gives one.

        Raises:
            Unauthorized: no token, or an invalid or expired one.
            Forbidden: a valid token for some rooms only.
        """
        return self.grant(self.claims(token_of(request)), None)

    def claims(self, token: str | None) -> Mapping[str, Any]:
        """The verified claims of ``token``.

        Raises:
            Unauthorized: no token, or an invalid or expired one.
        """
        if not token:
            raise Unauthorized("a token is required")
        try:
            claims: Mapping[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                leeway=self.leeway,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["room"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        return claims

    def grant(self, claims: Mapping[str, Any], room: str | None) -> Grant:
        """The grant ``claims`` give for ``room`` (``None``: for every room, server-wide).

        Raises:
            Unauthorized: the claims are malformed.
            Forbidden: they do not cover ``room``.
        """
        scope = claims.get("room")
        prefix = claims.get("prefix", False)
        access = claims.get("access", Access.READ_WRITE.value)
        if not isinstance(scope, str) or not isinstance(prefix, bool):
            raise Unauthorized("invalid token: malformed room claim")
        try:
            granted = Access(access)
        except ValueError:
            raise Unauthorized("invalid token: malformed access claim") from None
        covered = (
            (scope == "" and prefix)
            if room is None
            else (room.startswith(scope) if prefix else room == scope)
        )
        if not covered:
            what = "every room" if room is None else f"room {room!r}"
            raise Forbidden(f"the token is not valid for {what}")
        expires = claims.get("exp")
        subject = claims.get("sub")
        return Grant(
            granted,
            identity=subject if isinstance(subject, str) else None,
            context=claims,
            expires_at=float(expires) if isinstance(expires, int | float) else None,
        )


def token_of(request: ConnectionRequest) -> str | None:
    """The token a request carries: the ``token`` query parameter or a Bearer header."""
    token = request.query_param("token")
    if token:
        return token
    authorization = request.header("authorization") or ""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None
