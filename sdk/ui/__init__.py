"""artisync.ui: the artifacts view, a read-only web page served by ``artisync ui``.

It reads storage directly (any backend, with the reader and credentials of
``Task.get_task``): no server to install, no database. Pages are rendered on
the server (aiohttp.web + jinja2); previews and artifact counts load lazily
with htmx, shipped in ``static/`` (pinned, no CDN, works offline).
"""

from __future__ import annotations

import logging
import sys
import webbrowser

from artisync.protocol import Settings

log = logging.getLogger("artisync")

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def serve(settings: Settings, uri: str, host: str, port: int, open_browser: bool) -> None:
    """Serve the view of ``uri`` until interrupted."""
    from aiohttp import web

    from ._app import make_app

    if host not in LOOPBACK:
        print(
            f"artisync ui: WARNING: serving on {host}, beyond this machine. The view has no "
            "authentication of its own: anyone who reaches the port reads every artifact.",
            file=sys.stderr,
        )
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    async def announce(_app: web.Application) -> None:
        print(f"artisync ui: {uri} at {url} (Ctrl-C stops)", file=sys.stderr, flush=True)
        if open_browser:
            webbrowser.open(url)

    app = make_app(settings, uri)
    app.on_startup.append(announce)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
