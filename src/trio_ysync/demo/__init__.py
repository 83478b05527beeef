"""The demo editor that ``trio-ysync serve --demo`` serves at ``/demo/``.

A CodeMirror 6 page bound to the room's ``Y.Text`` named ``t`` with ``y-codemirror.next`` and
``y-websocket``, showing remote cursors and names from awareness. The room is the part of the
address after ``#`` (``/demo/#my-room``); the page connects to the server that served it.

The JavaScript is bundled from npm packages by ``nox -s demo`` (sources in ``examples/demo/``)
and shipped here as static files, so installing the package needs no Node.js.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from urllib.parse import urlsplit

from ..transport import HTTPResponse

__all__ = ["PREFIX", "demo_files", "demo_response"]

#: The path under which the demo is served.
PREFIX = "/demo/"

_CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".txt": b"text/plain; charset=utf-8",
}


@cache
def demo_files() -> dict[str, HTTPResponse]:
    """The shipped files by the name they are served under (read once).

    Only files directly in the package's ``static`` directory with a known type are served:
    requests are looked up in this table, never joined to a file system path.
    """
    files: dict[str, HTTPResponse] = {}
    for entry in resources.files(__name__).joinpath("static").iterdir():
        content_type = _CONTENT_TYPES.get("." + entry.name.rpartition(".")[2])
        if entry.is_file() and content_type is not None:
            files[entry.name] = HTTPResponse(200, entry.read_bytes(), content_type)
    return files


def demo_response(method: str, target: str) -> HTTPResponse | None:
    """The answer to a plain HTTP request for the demo, or ``None`` if the target is not one.

    ``/demo`` and ``/demo/`` answer with the page (its asset links are absolute); other names
    under ``/demo/`` answer with the shipped file of that name, or 404.
    """
    path = urlsplit(target).path
    if path != PREFIX.rstrip("/") and not path.startswith(PREFIX):
        return None
    if method != "GET":
        return HTTPResponse(405, b"the demo answers GET requests only\n")
    name = path[len(PREFIX) :] or "index.html"
    return demo_files().get(name) or HTTPResponse(404, b"no such file in the demo\n")
