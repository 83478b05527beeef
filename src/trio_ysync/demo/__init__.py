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

from ..connection import HTTPRequest, HTTPResponse

__all__ = ["PREFIX", "demo_files", "demo_response"]

#: The path under which the demo is served.
PREFIX = "/demo/"

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
# Browsers revalidate (the files change with the installed version) and never guess types.
_HEADERS = (("cache-control", "no-cache"), ("x-content-type-options", "nosniff"))


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
            files[entry.name] = HTTPResponse(200, entry.read_bytes(), content_type, _HEADERS)
    return files


def demo_response(request: HTTPRequest) -> HTTPResponse | None:
    """The answer to a plain HTTP request for the demo, or ``None`` if it is for another path.

    ``/demo`` and ``/demo/`` answer with the page (its asset links are absolute); other names
    under ``/demo/`` answer with the shipped file of that name, or 404.
    """
    path = request.path
    if path != PREFIX.rstrip("/") and not path.startswith(PREFIX):
        return None
    if request.method != "GET":
        return HTTPResponse.text(405, "the demo answers GET requests only")
    name = path[len(PREFIX) :] or "index.html"
    return demo_files().get(name) or HTTPResponse.text(404, "no such file in the demo")
