"""The web console: a static single-page app the gateway serves at ``/ui/``.

The console is files only (``static/``: ``index.html``, ``app.js``, ``lib/``, ``pages/``,
``vendor/``); it calls the public ``/v1`` API from the browser with the user's key, like
any other client, so it behaves the same on a laptop and behind a cluster's gateway. There
is no build step: Preact and htm are ES modules named by an import map, uPlot draws the
charts, Pico CSS lays the pages out; all vendored unchanged (``static/vendor/MANIFEST.json``
lists their versions, hashes and licences). Nothing is fetched from a third party.

The files are public (they hold no data); every answer carries a Content-Security-Policy
that allows scripts, styles, images and requests from this origin only (the import map,
the one inline script, is allowed by its hash), and no framing.

Example:
    >>> from fastapi import FastAPI
    >>> app = FastAPI()
    >>> add_console(app)
    >>> sorted(r.path for r in app.routes if r.path.startswith("/ui"))
    ['/ui', '/ui/', '/ui/{path:path}']
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

from qingliang.platform.errors import NotFound

STATIC = Path(__file__).resolve().parent / "static"

#: Content types of the files the console ships (anything else is not served).
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}

_INLINE_SCRIPT = re.compile(r"<script type=\"importmap\">(.*?)</script>", re.S)


def csp_for(index_html: str) -> str:
    """The Content-Security-Policy of the console: this origin only, plus the import map."""
    hashes = []
    for body in _INLINE_SCRIPT.findall(index_html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes.append(f"'sha256-{digest}'")
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self' " + " ".join(hashes),
            # Preact and uPlot set element styles from script; no inline <style> is shipped.
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "connect-src 'self'",
            "font-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def resolve(path: str, root: Path = STATIC) -> Path:
    """The shipped file at ``path`` (relative to ``root``), or :class:`NotFound`.

    Refuses anything outside ``root`` (``..``, absolute paths, links out) and unknown types.
    """
    candidate = (root / path).resolve()
    if (
        root.resolve() not in candidate.parents
        or not candidate.is_file()
        or candidate.suffix not in TYPES
    ):
        raise NotFound(f"the console has no file {path!r}", code="not_found")
    return candidate


def add_console(app: FastAPI, root: Path = STATIC) -> None:
    """Serve the console from ``root`` at ``/ui/`` (``/ui`` redirects there)."""
    index = (root / "index.html").read_text(encoding="utf-8")
    headers = {
        "Content-Security-Policy": csp_for(index),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }

    def answer(file: Path) -> Response:
        # Small files, read per request: a developer's edit shows on reload; the browser
        # revalidates (no-cache) so an upgraded platform never runs yesterday's script.
        return Response(
            file.read_bytes(),
            media_type=TYPES[file.suffix],
            headers={**headers, "Cache-Control": "no-cache"},
        )

    @app.get("/ui", include_in_schema=False)
    async def ui_redirect() -> Response:
        return RedirectResponse("/ui/", status_code=308)

    @app.get("/ui/", include_in_schema=False)
    async def ui_index() -> Response:
        return answer(root / "index.html")

    @app.get("/ui/{path:path}", include_in_schema=False)
    async def ui_file(path: str) -> Response:
        return answer(resolve(path, root))
