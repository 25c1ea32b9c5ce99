"""The artifacts view's routes: projects, tasks, one task, one artifact, compare.

Every page reads storage through :class:`artisync._reader.Reader`, the reader
``Task.get_task`` uses (same credentials, same verified object cache), in a worker
thread so the event loop only serves. Names in URLs are looked up among what the
task holds, never joined into a key or a path: a name that is not there is a
404, whatever it contains. Payloads are served from the reader's cache after
their SHA-256 was checked; only images are served inline (anything else is an
attachment), under a Content-Security-Policy that allows this site's own files.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import mimetypes
import re
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web

from artisync.protocol import IntegrityError, NotFound, Settings, StorageError
from artisync.protocol.formats import read_listing

from .._lookup import artifact_from
from .._reader import Reader, cache_inline
from . import _pending, _previews

T = TypeVar("T")
PAGE = 50  # tasks a project page lists
MAX_COMPARE = 8  # tasks the compare page shows side by side
_TASK_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class View:
    """What the handlers share: the storage URI, its reader, the settings."""

    def __init__(self, settings: Settings, uri: str) -> None:
        self.settings = settings
        self.uri = uri
        self.reader = Reader(settings)
        self.pending = _pending.Pending(settings, uri)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def task(self, request: web.Request) -> dict[str, Any]:
        """The task of the URL, which must belong to the URL's project."""
        return await self.task_by_id(request.match_info["task_id"], request.match_info["project"])

    async def task_by_id(self, task_id: str, project: str | None = None) -> dict[str, Any]:
        """The task (in storage, else accepted here and not uploaded yet), of ``project``
        when given. :raises web.HTTPNotFound:"""
        if not _TASK_ID.match(task_id):
            raise web.HTTPNotFound(text=f"no task {task_id!r}")
        rec = await self.run(self.reader.task_record, self.uri, task_id)
        if rec is None:
            tasks, _ = await self.run(self.pending.ask, None, task_id)
            rec = dict(tasks[0], pending=True) if tasks else None
        if rec is None or (project is not None and rec.get("project") != project):
            where = f" in project {project!r}" if project is not None else ""
            raise web.HTTPNotFound(text=f"no task {task_id!r}{where}")
        return rec

    async def versions(
        self, request: web.Request, *, pending: bool = True
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The URL's task and every version of its artifact, oldest first: those in
        storage and (``pending``) those this node's daemon has not uploaded yet."""
        task = await self.task(request)
        name = request.match_info["name"]
        try:  # the name is encoded into its key prefix (no "/" or ".." survives that)
            found = await self.run(self.reader.artifact_versions, self.uri, task["task_id"], name)
        except ValueError:  # not a name storage could hold (too long, say)
            found = []
        if pending:
            daemon = await self.run(self.pending.versions, task["task_id"], name)
            found += _pending.not_stored(daemon, found, "record_id")
            found.sort(key=lambda r: (r.get("created") or 0, r["record_id"]))
        if not found:
            raise web.HTTPNotFound(text=f"task {task['name']!r} has no artifact {name!r}")
        return task, found

    async def version(self, request: web.Request) -> tuple[dict[str, Any], dict[str, Any]]:
        """The stored version asked for (``?v=record_id``), else the newest stored one."""
        task, found = await self.versions(request, pending=False)
        want = request.query.get("v")
        for rec in reversed(found):
            if want is None or rec["record_id"] == want:
                return task, rec
        name = request.match_info["name"]
        raise web.HTTPNotFound(text=f"no version {want!r} of {name!r} in storage")

    def payload(self, rec: dict[str, Any]) -> Path:
        """The version's main blob, verified (in a worker thread)."""
        inline = rec.get("inline")
        if isinstance(inline, str):
            return cache_inline(rec["sha256"], base64.b64decode(inline))
        return self.reader.locate(rec["sha256"], rec["dest"], None)

    def local_copy(self, rec: dict[str, Any], extract: bool) -> Path:
        """What ``get_local_copy()`` gives: the file, a tree's folder, or its zip."""
        art = artifact_from(rec, self.settings, None)
        return Path(str(art.get_local_copy(extract_archive=extract, raise_on_error=True)))


VIEW = web.AppKey("view", View)


def _view(request: web.Request) -> View:
    return request.app[VIEW]


@aiohttp_jinja2.template("index.html")
async def projects(request: web.Request) -> dict[str, Any]:
    """Every project in storage, and those whose tasks are all still pending upload."""
    view = _view(request)
    stored, daemon = await asyncio.gather(
        view.run(view.reader.projects, view.uri), view.run(view.pending.projects)
    )
    pending = daemon.difference(stored)
    return {"projects": sorted(pending.union(stored)), "pending": pending}


@aiohttp_jinja2.template("project.html")
async def project(request: web.Request) -> dict[str, Any]:
    """A page of a project's tasks, newest first. Page n skips (n - 1) x PAGE index
    entries by listing them: storage lists from a prefix only (no backend here can
    start after a key), so the skipped entries cost LIST pages of 1,000 keys, read
    one after another: the last page of 100,000 tasks, about 100 LISTs."""
    view = _view(request)
    name = request.match_info["project"]
    try:
        page = max(1, int(request.query.get("page", "1")))
    except ValueError:
        raise web.HTTPBadRequest(text="page must be a number") from None
    tasks, more = await view.run(view.reader.task_page, view.uri, name, (page - 1) * PAGE, PAGE)
    if page == 1:
        tasks = await _pending_tasks(view, name, tasks) + tasks
    if not tasks and page == 1:
        known = await view.run(view.reader.projects, view.uri)
        if name not in known:
            raise web.HTTPNotFound(text=f"no project {name!r}")
    return {"project": name, "tasks": tasks, "page": page, "more": more}


async def _pending_tasks(
    view: View, project: str, stored: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The daemon's tasks of ``project`` that storage does not hold yet."""
    daemon, _ = await view.run(view.pending.ask, project, None)
    maybe = _pending.not_stored(daemon, stored, "task_id")
    found = await asyncio.gather(
        *(view.run(view.reader.task_record, view.uri, t["task_id"]) for t in maybe)
    )
    return [t for t, rec in zip(maybe, found, strict=True) if rec is None]


async def artifact_count(request: web.Request) -> web.Response:
    view = _view(request)
    task = await view.task(request)
    arts = await view.run(view.reader.artifact_records, view.uri, task["task_id"])
    return web.Response(text=str(len(arts)))


@aiohttp_jinja2.template("task.html")
async def task_page(request: web.Request) -> dict[str, Any]:
    view = _view(request)
    task = await view.task(request)
    arts = await view.run(view.reader.artifact_records, view.uri, task["task_id"])
    _, daemon = await view.run(view.pending.ask, None, task["task_id"])
    pending = _pending.not_stored(daemon, arts, "record_id")
    return {"task": task, "artifacts": arts, "pending": pending, "project": task["project"]}


@aiohttp_jinja2.template("artifact.html")
async def artifact_page(request: web.Request) -> dict[str, Any]:
    view = _view(request)
    task, found = await view.versions(request)
    want = request.query.get("v")
    stored = [r for r in found if not r.get("pending")]
    # by default the newest version that can be previewed and downloaded
    chosen = next((r for r in found if r["record_id"] == want), (stored or found)[-1])
    return {"task": task, "project": task["project"], "art": chosen, "versions": found}


async def preview(request: web.Request) -> web.Response:
    """A version's preview, as an HTML fragment (loaded by the pages with htmx)."""
    view = _view(request)
    task, rec = await view.version(request)
    full = request.query.get("full") == "1"
    compact = request.query.get("compact") == "1"

    async def read() -> dict[str, Any]:
        if (rec.get("size") or 0) > _previews.FETCH_LIMIT and rec.get("format") != "tree":
            return {"kind": "none", "why": "too large to preview here: its summary, and download"}
        if rec.get("format") == "tree":
            return _previews.tree(read_listing(await view.run(view.payload, rec)))
        path = await view.run(view.payload, rec)
        parts = [await view.run(view.payload, r) for r in await _chunks_up_to(view, request, rec)]
        return await view.run(partial(_previews.of_record, full=full, parts=parts), rec, path)

    data, status = await _previewed(read())
    ctx = {"task": task, "art": rec, "p": data, "compact": compact, "project": task["project"]}
    return aiohttp_jinja2.render_template("_preview.html", request, ctx, status=status)


async def _chunks_up_to(
    view: View, request: web.Request, rec: dict[str, Any]
) -> list[dict[str, Any]]:
    """For a chunk of a table (the Logger's scalars: each version holds the rows that
    came since the one before), the stored chunks up to it, in order; else none."""
    meta = rec.get("metadata") or {}
    if "chunk_of" not in meta:
        return []
    _, found = await view.versions(request, pending=False)
    chunks = [
        r
        for r in found
        if (r.get("metadata") or {}).get("chunk_of") == meta["chunk_of"]
        and int(r["metadata"].get("chunk", 0)) <= int(meta.get("chunk", 0))
    ]
    return sorted(chunks, key=lambda r: int(r["metadata"].get("chunk", 0)))


async def _previewed(work: Awaitable[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """A preview's data and the status to send it with: a stored object that does not
    match its SHA-256 is refused (502), whatever else fails is shown as the reason."""
    try:
        return await work, 200
    except IntegrityError as exc:
        return {"kind": "error", "why": f"stored object does not match its SHA-256: {exc}"}, 502
    except (OSError, ValueError, StorageError) as exc:
        return {"kind": "error", "why": f"{type(exc).__name__}: {exc}"}, 200


async def download(request: web.Request) -> web.StreamResponse:
    """The version's bytes: a file, or a folder as a zip (``?inline=1``: images shown)."""
    view = _view(request)
    _, rec = await view.version(request)
    if rec.get("format") == "tree":
        path = await view.run(view.local_copy, rec, False)
        return _file(path, f"{rec['name']}.zip", inline=False)
    path = await view.run(view.payload, rec)
    filename = rec["name"] + (rec.get("extension") or "")
    return _file(path, filename, inline=request.query.get("inline") == "1")


async def tree_file(request: web.Request) -> web.StreamResponse:
    """One file of a folder or wildcard artifact, or its preview (``?preview=1``)."""
    view = _view(request)
    task, rec = await view.version(request)
    if rec.get("format") != "tree":
        raise web.HTTPNotFound(text=f"{rec['name']!r} is not a folder")
    rel = request.match_info["path"]
    listing = read_listing(await view.run(view.payload, rec))
    member = next((entry for entry in listing if entry[0] == rel), None)
    if member is None:
        raise web.HTTPNotFound(text=f"{rec['name']!r} has no file {rel!r}")
    path = await view.run(view.reader.locate, member[1], rec["dest"], None)
    if request.query.get("preview") == "1":
        data, status = await _previewed(view.run(_previews.by_extension, path, _suffix(rel)))
        ctx = {"task": task, "art": rec, "p": data, "compact": False, "member": rel}
        return aiohttp_jinja2.render_template("_preview.html", request, ctx, status=status)
    return _file(path, rel.rpartition("/")[2], inline=request.query.get("inline") == "1")


@aiohttp_jinja2.template("compare.html")
async def compare(request: web.Request) -> dict[str, Any]:
    """Two or more tasks side by side: artifacts of the same name on one row."""
    view = _view(request)
    ids = list(dict.fromkeys(request.query.getall("t", [])))  # each task once
    if len(ids) < 2:
        raise web.HTTPBadRequest(text="compare needs two tasks or more: /compare?t=ID&t=ID")
    tasks = list(await asyncio.gather(*(view.task_by_id(t) for t in ids[:MAX_COMPARE])))
    arts = await asyncio.gather(
        *(view.run(view.reader.artifact_records, view.uri, t["task_id"]) for t in tasks)
    )
    by_task = [{a["name"]: a for a in found} for found in arts]
    names = sorted(set().union(*by_task))
    rows = []
    for name in names:
        cells = [found.get(name) for found in by_task]
        hashes = {c.get("sha256") for c in cells if c is not None}
        metas = {repr(sorted((c.get("metadata") or {}).items())) for c in cells if c is not None}
        same = len(hashes) == 1 and None not in cells
        rows.append({"name": name, "cells": cells, "same": same, "meta_differs": len(metas) > 1})
    return {"tasks": tasks, "rows": rows, "asked": len(ids)}


def _file(path: Path, filename: str, *, inline: bool) -> web.FileResponse:
    ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    shown = inline and ctype.startswith("image/") and ctype != "image/svg+xml"
    disposition = "inline" if shown else "attachment"
    headers = {
        "Content-Type": ctype if shown else _download_type(ctype),
        "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(filename, safe='')}",
    }
    return web.FileResponse(path, headers=headers)


def _download_type(ctype: str) -> str:
    # never let a browser render a stored page or script on this origin
    return "application/octet-stream" if ctype.startswith(("text/html", "image/svg")) else ctype


def _suffix(rel: str) -> str:
    name = rel.rpartition("/")[2].lower()
    return ".csv.gz" if name.endswith(".csv.gz") else Path(name).suffix


@web.middleware
async def pages_for_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Errors as pages (404 with what was not found; 502 for storage that failed or
    sent other bytes than were stored), and the security headers."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(request, exc.status, exc.reason, exc.text or "")
    except NotFound as exc:
        response = _error(request, 404, "Not Found", str(exc))
    except IntegrityError as exc:  # never the bytes: they are not what was stored
        text = f"stored object does not match its SHA-256, not sent: {exc}"
        response = _error(request, 502, "Bad Gateway", text)
    except StorageError as exc:
        response = _error(request, 502, "Bad Gateway", f"storage could not be read: {exc}")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _error(request: web.Request, status: int, reason: str, text: str) -> web.Response:
    # htmx asked (a preview, a count): a fragment to show in place, not a whole page
    fragment = request.headers.get("HX-Request") == "true"
    ctx = {"status": status, "reason": reason, "text": text}
    name = "_error.html" if fragment else "error.html"
    return aiohttp_jinja2.render_template(name, request, ctx, status=status)


def _when(ts: float | None) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def _size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def make_app(settings: Settings, uri: str) -> web.Application:
    app = web.Application(middlewares=[pages_for_errors])
    app[VIEW] = View(settings, uri)
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("artisync.ui", "templates"),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,  # older records may lack a field: blank
    )
    env.filters.update(
        q=lambda s: quote(str(s), safe=""),
        qp=lambda s: quote(str(s), safe="/"),
        when=_when,
        size=_size,
    )
    env.globals.update(uri=uri)
    static = Path(__file__).parent / "static"
    app.router.add_static("/static/", static, name="static")
    app.router.add_get("/", projects)
    app.router.add_get("/compare", compare)
    app.router.add_get("/p/{project}", project)
    app.router.add_get("/p/{project}/t/{task_id}", task_page)
    app.router.add_get("/p/{project}/t/{task_id}/count", artifact_count)
    app.router.add_get("/p/{project}/t/{task_id}/a/{name}", artifact_page)
    app.router.add_get("/p/{project}/t/{task_id}/a/{name}/preview", preview)
    app.router.add_get("/p/{project}/t/{task_id}/a/{name}/download", download)
    app.router.add_get("/p/{project}/t/{task_id}/a/{name}/files/{path:.+}", tree_file)
    return app
