"""An HTTP API for documents, on the server's own port: read and write rooms without a
WebSocket.

==========================================  ===================================================
``GET /api/rooms``                          the rooms (stored or loaded), as JSON
``GET /api/rooms/{room}``                   the document as one Yjs update
                                            (``application/octet-stream``)
``GET /api/rooms/{room}/json``              the document's root types as JSON
``POST /api/rooms/{room}``                  apply the Yjs update in the body, like a client's
                                            edit: validated, committed, broadcast
``DELETE /api/rooms/{room}``                close the room's connections (4404) and delete it
                                            (501 in a cluster)
==========================================  ===================================================

``{room}`` is the room name percent-encoded as one path segment (``team%2Fplan``). Loaded or
not, the answer is the same: a room that is not loaded is loaded for the request and unloads
after the grace period, like one a client visited.

Requests are authorized by the server's ``authorize`` hook, as a WebSocket connection to the
room would be (so the same tokens work: ``?token=`` or ``Authorization: Bearer``); writing needs
read-write access. Listing and deleting need a server-wide grant: a token whose ``room`` claim is
an empty prefix (``trio-ysync token create --room '' --prefix``), or a hook with an
``authorize_server`` method; without one they are refused, whatever else is configured.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .auth import Forbidden, Grant
from .connection import ConnectionRequest, HTTPRequest, HTTPResponse, room_from_path
from .doc import DocumentError, document_json
from .errors import RoomClosedError, YSyncError
from .protocol import ProtocolError, encode_json, validate_update

if TYPE_CHECKING:
    from .server import RoomServer

__all__ = ["PREFIX", "DocumentAPI"]

logger = logging.getLogger("trio_ysync.api")

#: The path under which the API answers.
PREFIX = "/api/rooms"

_ROOM = re.compile(r"^/api/rooms/([^/]+)(/json)?$")
_JSON = "application/json"


def _json(status: int, value: Any) -> HTTPResponse:
    return HTTPResponse(status, (encode_json(value) + "\n").encode(), _JSON)


def _error(exc: YSyncError) -> HTTPResponse:
    return _json(exc.http_status, {"error": str(exc)})


class DocumentAPI:
    """Answers the ``/api/rooms`` requests of ``server``."""

    def __init__(self, server: RoomServer) -> None:
        self.server = server

    async def answer(self, request: HTTPRequest) -> HTTPResponse | None:
        """The answer to ``request``, or ``None`` if it is not an API path."""
        path = request.path
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return None
        try:
            if path in (PREFIX, PREFIX + "/"):
                if request.method != "GET":
                    return _json(405, {"error": "use GET"})
                await self._authorize_server(request)
                return await self._list()
            match = _ROOM.match(path)
            if match is None:
                return _json(404, {"error": "no such API path"})
            room = room_from_path("/" + match.group(1))
            as_json = bool(match.group(2))
            if request.method == "GET":
                await self._authorize_room(request, room)
                return await self._read(room, as_json)
            if as_json:
                return _json(405, {"error": "use GET"})
            if request.method == "POST":
                grant = await self._authorize_room(request, room)
                if grant.read_only:
                    raise Forbidden("read-only access")
                return await self._write(room, request.body, grant)
            if request.method == "DELETE":
                await self._authorize_server(request)
                await self.server.delete_room(room)
                return HTTPResponse(204)
            return _json(405, {"error": "use GET, POST or DELETE"})
        except YSyncError as exc:
            if exc.peer_fault:
                logger.info("%s %s: %d %s", request.method, path, exc.http_status, exc)
            else:
                logger.error("%s %s failed", request.method, path, exc_info=exc)
            return _error(exc)

    # -- authorization -------------------------------------------------------------------

    def _as_connection(self, request: HTTPRequest, room: str) -> ConnectionRequest:
        query = request.target.partition("?")[2]
        return ConnectionRequest.from_target(
            "/" + room_quote(room) + (f"?{query}" if query else ""), request.headers
        )

    async def _authorize_room(self, request: HTTPRequest, room: str) -> Grant:
        return await self.server.authorize(self._as_connection(request, room))

    async def _authorize_server(self, request: HTTPRequest) -> Grant:
        check = getattr(self.server.authorize, "authorize_server", None)
        if check is None:
            raise Forbidden("listing and deleting rooms need a server-wide token")
        grant: Grant = await check(self._as_connection(request, "-"))
        if grant.read_only:
            raise Forbidden("deleting rooms needs read-write access")
        return grant

    # -- operations ----------------------------------------------------------------------

    async def _list(self) -> HTTPResponse:
        stored = set(await self.server.store.list_rooms())
        loaded = set(self.server.rooms)
        rooms = [{"name": name, "loaded": name in loaded} for name in sorted(stored | loaded)]
        return _json(200, {"rooms": rooms})

    async def _exists(self, room: str) -> bool:
        if room in self.server.rooms:
            return True
        return bool((await self.server.store.load(room)).updates)

    async def _read(self, room: str, as_json: bool) -> HTTPResponse:
        if not await self._exists(room):
            return _json(404, {"error": f"no room {room!r}"})
        async with self.server.open_room(room) as opened:
            update = opened.document.diff()
        if as_json:
            try:
                return _json(200, document_json(update))
            except DocumentError as exc:
                raise RoomClosedError(f"room {room!r} cannot be read as JSON: {exc}") from exc
        return HTTPResponse(200, update, "application/octet-stream")

    async def _write(self, room: str, body: bytes, grant: Grant) -> HTTPResponse:
        try:
            info = validate_update(body, self.server.message_limits.update)
        except ProtocolError as exc:
            raise ProtocolError(f"not a valid Yjs update: {exc}") from exc
        async with self.server.open_room(room) as opened:
            await opened.submit(body, grant.identity or "http", info)
        return HTTPResponse(204)


def room_quote(room: str) -> str:
    """``room`` as one percent-encoded path segment."""
    return quote(room, safe="")
