"""Finding a task that is not in this process: through the local daemon (records
acknowledged but not yet uploaded), then in storage (any machine)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from artisync.protocol import ArtisyncError, Settings, Spool, TransientStorageError, all_pages

from ._artifact import Artifact, Locator, Resolver
from ._checks import resolve_destination
from ._client import DaemonError, DaemonUnavailable
from ._session import Session

log = logging.getLogger("artisync")


@dataclass(frozen=True)
class Query:
    task_id: str | None
    project: str | None
    name: str | None
    statuses: list[str] | None


@dataclass
class Found:
    record: dict[str, Any]
    # from storage: read when first asked for (a lookup by id is then one request)
    artifacts: dict[str, Artifact] | Callable[[], dict[str, Artifact]]


def locator(settings: Settings, destination_uri: str, spool: Spool | None) -> Locator:
    """sha256 -> a verified local copy: from the spool while it is there, else storage."""

    def locate(sha: str) -> Any:
        from ._reader import Reader  # loads asyncio and a storage client: only when read

        return Reader(settings).locate(sha, destination_uri, spool)

    return locate


def artifact_from(
    record: dict[str, Any],
    settings: Settings,
    spool: Spool | None,
    wait: Callable[[], None] | None = None,
    resolve: Callable[[str, float], dict[str, Any] | None] | None = None,
) -> Artifact:
    """``wait``: called before reading from storage (until the upload is committed);
    ``resolve``: the daemon's answer for a record it has not encoded yet (one of its
    journal's: read from the spool's raw snapshot meanwhile, or once encoded)."""
    locate = locator(settings, record["dest"], spool)
    if wait is not None:
        locate = after(wait, locate)
    # small payloads inside their records (storage's, the journal's): never an object
    inline: dict[str, str | bytes] = {}
    _note_inline(record, inline)
    if resolve is not None:  # the daemon's encoded record may be one of them
        resolve = _noting_inline(resolve, inline)
    return Artifact(
        record,
        _with_inline(locate, inline),
        spool=spool,
        resolve=resolve,
        allow_pickle=settings.allow_pickle,
    )


def _note_inline(record: dict[str, Any] | None, inline: dict[str, str | bytes]) -> None:
    if record is None:
        return
    if isinstance(record.get("inline"), str):
        inline[str(record.get("sha256"))] = record["inline"]
    kept = (record.get("raw") or {}).get("data")  # the daemon keeps it until committed
    if isinstance(kept, bytes) and len(kept) == record.get("size") and "sha256" in record:
        inline[str(record["sha256"])] = kept


def _noting_inline(resolve: Resolver, inline: dict[str, str | bytes]) -> Resolver:
    def answer(record_id: str, wait: float) -> dict[str, Any] | None:
        done = resolve(record_id, wait)
        _note_inline(done, inline)
        return done

    return answer


def after(wait: Callable[[], None], locate: Locator) -> Locator:
    def find(sha: str) -> Any:
        wait()
        return locate(sha)

    return find


def query(
    task_id: str | None,
    project: str | None,
    name: str | None,
    task_filter: Mapping[str, Any] | None,
) -> Query:
    """ClearML's lookup arguments; of ``task_filter`` only ``status`` is read."""
    statuses = list((task_filter or {}).get("status") or []) or None
    return Query(task_id, project, name, statuses)


def not_found(q: Query) -> str:
    what = q.task_id or f"{q.project!r}/{q.name!r}"
    return f"no task {what} found" + (f" with status in {q.statuses}" if q.statuses else "")


def matches(task: dict[str, Any], q: Query) -> bool:
    """``task`` (a record) answers ``q`` exactly."""
    return (
        (q.task_id is None or task["task_id"] == q.task_id)
        and (q.project is None or task["project"] == q.project)
        and (q.name is None or task["name"] == q.name)
        and (not q.statuses or task["status"] in q.statuses)
    )


def in_process(tasks: Iterable[dict[str, Any]], q: Query) -> dict[str, Any] | None:
    """The newest of this process's own tasks (their latest records) that matches;
    an exact name first, else a case-insensitive one, as ClearML does."""
    folded = q.name.casefold() if q.name is not None else None
    matches = [
        t
        for t in tasks
        if (q.task_id is None or t["task_id"] == q.task_id)
        and (q.project is None or t["project"] == q.project)
        and (folded is None or t["name"].casefold() == folded)
        and (not q.statuses or t["status"] in q.statuses)
    ]
    matches.sort(key=lambda t: t["started"], reverse=True)
    exact = [t for t in matches if q.name is None or t["name"] == q.name]
    best = exact or matches
    return best[0] if best else None


def in_daemon(session: Session, q: Query) -> Found | None:
    msg = {
        "op": "query_task",
        "task_id": q.task_id,
        "project": q.project,
        "name": q.name,
        "statuses": q.statuses,
    }
    try:
        reply = all_pages(lambda m: session.request(m, timeout=5), msg)
    except (DaemonUnavailable, DaemonError):
        return None
    tasks = reply.get("tasks") or []
    exact = [t for t in tasks if t["name"] == q.name] if q.name is not None else tasks
    chosen = (exact or tasks or [None])[0]
    if chosen is None:
        return None
    if chosen["task_id"] != tasks[0]["task_id"]:  # the artifacts are of a case-folded match
        return in_daemon(session, Query(chosen["task_id"], None, None, q.statuses))
    spool = session.spool
    task_id = chosen["task_id"]
    # a shared daemon's spool is its own: what is not uploaded yet is read once it is
    wait = (lambda: session.wait_committed(task_id, None)) if session.shared else None
    arts = {
        a["name"]: artifact_from(a, session.settings, spool, wait, session.resolve)
        for a in reply.get("artifacts") or []
    }
    if reply.get("compacted"):  # the daemon kept only recent versions: the rest are stored
        stored = in_storage(session.settings, chosen["dest"], Query(task_id, None, None, None))
        if stored is not None and callable(stored.artifacts):
            for name, art in stored.artifacts().items():
                arts.setdefault(name, art)
    return Found(chosen, arts)


def elsewhere(session: Session, q: Query, output_uri: str | None) -> Found | None:
    """The task in the daemon's journal, else in storage (``output_uri``, else the
    default destination)."""
    try:
        uri = resolve_destination(output_uri or session.default_output_uri())
    except ArtisyncError:  # a daemon we may not use: storage may still be readable
        uri = resolve_destination(output_uri or session.settings.output_uri)
    return in_daemon(session, q) or in_storage(session.settings, uri, q)


def artifacts_elsewhere(session: Session, q: Query, uri: str | None) -> dict[str, Artifact]:
    """The artifacts of a task listed by ``get_tasks``, read when first asked for."""
    found = elsewhere(session, q, uri)
    if found is None:
        return {}
    return found.artifacts() if callable(found.artifacts) else found.artifacts


def in_storage(settings: Settings, uri: str, q: Query) -> Found | None:
    from ._reader import Reader

    reader = Reader(settings)
    if q.task_id is not None:
        rec = reader.task_record(uri, q.task_id)
        if rec is None or (q.statuses and rec.get("status") not in q.statuses):
            return None
    else:
        found = reader.find_tasks(uri, q.project, q.name, q.statuses)
        if not found:
            return None
        rec = found[0]
    rec.setdefault("dest", rec.get("storage", uri))
    spool = Spool(settings.spool) if (settings.spool / "blobs").is_dir() else None
    task_id = rec["task_id"]

    def arts() -> dict[str, Artifact]:
        return {
            a["name"]: artifact_from(a, settings, spool)
            for a in reader.artifact_records(uri, task_id)
        }

    return Found(rec, arts)


def versions(session: Session, task: dict[str, Any], name: str, rank: int | None) -> list[Artifact]:
    """Every version of one artifact of ``task``, oldest first: those the local daemon
    holds (uploaded or not) and those in storage (from any node); ``rank``: only the
    versions that rank made."""
    from ._reader import Reader

    found: dict[str, dict[str, Any]] = {}
    spool, wait = None, None
    try:
        msg = {"op": "query_task", "task_id": task["task_id"], "versions_of": name}
        reply = all_pages(lambda m: session.request(m, timeout=10), msg)
        found.update((r["record_id"], r) for r in reply.get("artifacts") or [])
        spool = session.spool  # the daemon's (or, with a shared daemon, wait for uploads)
        if session.shared:
            wait = lambda: session.wait_committed(task["task_id"], None)  # noqa: E731
    except (DaemonUnavailable, DaemonError):
        pass
    try:
        stored = Reader(session.settings).artifact_versions(task["dest"], task["task_id"], name)
    except TransientStorageError as exc:
        if spool is None:  # nor did the daemon answer: nothing to show
            raise
        log.warning(
            "artisync: %s; the versions of %r are those this node's daemon holds", exc, name
        )
        stored = []
    for rec in stored:
        found.setdefault(rec["record_id"], rec)
    recs = sorted(found.values(), key=lambda r: (r["created"], r["record_id"]))
    return [
        artifact_from(r, session.settings, spool, wait, session.resolve if spool else None)
        for r in recs
        if rank is None or r.get("rank") == rank
    ]


def _with_inline(locate: Locator, inline: dict[str, str | bytes]) -> Locator:
    """``locate``, but a payload in ``inline`` (sha256 -> base64, or the bytes) is read
    from there."""

    def find(sha: str) -> Any:
        if sha not in inline:
            return locate(sha)
        from ._reader import cache_inline

        held = inline[sha]
        try:
            data = held if isinstance(held, bytes) else base64.b64decode(held, validate=True)
        except ValueError:
            data = b""  # fails the hash check below, with the reason
        return cache_inline(sha, data)

    return find
