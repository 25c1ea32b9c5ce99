"""Retention: delete tasks and old artifact versions by policy, then the objects
that no remaining record references (``artisync prune``; the daemon on a schedule).

**Tasks** older than the policy's cutoff (by the start time in their index key:
the listing is newest first, so the young ones cost one LIST page), of its
projects and statuses, go in an order that a crash at any point leaves readable
and a rerun finishes: a tombstone ``prune/tasks/<id>.json`` (the task record)
first, then the task's artifact versions and batches, its index entries, its
task.json, and last the tombstone. Every run first finishes the tombstones it finds.

**Versions**: in the tasks that stay, all but the newest ``keep_versions`` of each
artifact (a chunk of a table, such as the Logger's scalars, is a part: kept); a batch object loses those of its records (rewritten under its own key:
writers never touch a published batch), or goes when none is left.

**Objects** (:mod:`._prune_objects`): mark every object the remaining records
reference, then sweep ``objects/`` for the unreferenced ones written longer ago
than twice the reuse window (``reuse_window``), which no writer may reuse without
writing them again (see :class:`artisync.protocol.Settings`).

A dry run reads the same and deletes nothing; what it would delete is left out
of the marking, so its object count is what a real run would remove.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

from artisync.protocol import (
    TASK_STATUSES,
    NotFound,
    artifact_prefix,
    batch_prefix,
    decode_name,
    legacy_index_key,
    parse_duration,
    parse_newest_first,
    task_key,
    tasks_prefix,
    version_stamp,
)

from . import _prune_objects
from .publish import record_keys
from .storage.base import Storage

log = logging.getLogger("artisync.daemon")

TOMBSTONES = "prune/tasks/"
CLOSED_STATUSES = ("completed", "failed", "aborted")  # what a policy prunes by default
POLICY_KEYS = ("older_than", "before", "projects", "statuses", "keep_versions", "objects")


@dataclass(frozen=True)
class Policy:
    before: float | None = None  # tasks started before this (seconds since the epoch)
    projects: tuple[str, ...] = ()  # only these projects (empty: every project)
    statuses: tuple[str, ...] = CLOSED_STATUSES  # only tasks in these states
    keep_versions: int = 0  # keep each artifact's newest N versions (0: every version)
    objects: bool = True  # then remove the objects no remaining record references

    @classmethod
    def from_table(cls, table: Mapping[str, Any], now: float | None = None) -> Policy:
        """A ``[prune]`` table: ``older_than`` (a duration such as "90d") or ``before``
        (an ISO date), ``projects``, ``statuses``, ``keep_versions``, ``objects``.

        :raises ValueError: an unknown key or a bad value."""
        unknown = set(table) - {*POLICY_KEYS, "every"}
        if unknown:
            raise ValueError(f"[prune]: unknown settings {', '.join(sorted(unknown))}")
        now = time.time() if now is None else now
        before = None
        if table.get("older_than") is not None:
            before = now - parse_duration(table["older_than"])
        if table.get("before") is not None:
            before = _date(table["before"])
        statuses = tuple(table.get("statuses") or CLOSED_STATUSES)
        bad = [s for s in statuses if s not in TASK_STATUSES]
        if bad:
            raise ValueError(f"[prune] statuses: {bad} (known: {', '.join(TASK_STATUSES)})")
        keep = int(table.get("keep_versions") or 0)
        if keep < 0:
            raise ValueError("[prune] keep_versions must be 0 (all) or more")
        return cls(
            before=before,
            projects=tuple(table.get("projects") or ()),
            statuses=statuses,
            keep_versions=keep,
            objects=bool(table.get("objects", True)),
        )

    def describe(self) -> str:
        parts = []
        if self.before is not None:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.before))
            parts.append(f"tasks started before {when} ({', '.join(self.statuses)})")
        if self.keep_versions:
            parts.append(f"all but the newest {self.keep_versions} versions of each artifact")
        if self.objects:
            parts.append("objects no record references")
        scope = f" in {', '.join(self.projects)}" if self.projects else ""
        return "; ".join(parts) + scope if parts else "nothing"


@dataclass
class Report:
    apply: bool
    tasks: int = 0
    task_names: list[str] = field(default_factory=list)  # the first few, for the summary
    versions: int = 0
    objects: int = 0
    object_bytes: int = 0
    finished: int = 0  # deletions an earlier, interrupted run had left: completed

    def summary(self, uri: str) -> str:
        verb = "deleted" if self.apply else "would delete"
        shown = ", ".join(self.task_names[:10]) + (" ..." if self.tasks > 10 else "")
        lines = [f"{uri}: {verb} {self.tasks} tasks" + (f" ({shown})" if shown else "")]
        lines.append(f"  {verb} {self.versions} older artifact versions")
        lines.append(f"  {verb} {self.objects} unreferenced objects, {self.object_bytes} bytes")
        if self.finished:
            lines.append(f"  finished {self.finished} task deletions an earlier run left")
        if not self.apply:
            lines.append("  (a dry run: --yes deletes)")
        return "\n".join(lines)


async def prune(st: Storage, policy: Policy, reuse_window: float, apply: bool) -> Report:
    """Run ``policy`` on one destination; with ``apply`` False, only count."""
    report = Report(apply)
    started = time.time()
    with _prune_objects.Marks() as doomed:
        if apply:
            report.finished = await _finish_tombstones(st)
        if policy.before is not None:
            await _prune_tasks(st, policy, apply, report, doomed)
        if policy.keep_versions > 0:
            await _prune_versions(st, policy, apply, report, doomed)
        if policy.objects:
            found = await _prune_objects.collect(st, started, 2 * reuse_window, apply, doomed)
            report.objects, report.object_bytes = found
    log.info("prune %s: %s", st.uri, report.summary(st.uri).replace("\n", ";"))
    return report


# -- on a schedule --------------------------------------------------------------------------
def schedule_of(raw: Mapping[str, Any]) -> float | None:
    """Seconds between runs of the ``[prune]`` policy (its ``every``), or None.

    :raises ValueError: a bad ``[prune]`` table (the daemon refuses to start)."""
    table = raw.get("prune") or {}
    Policy.from_table(table)  # checked even when not scheduled
    if not table.get("every"):
        return None
    interval = parse_duration(table["every"])
    if interval < 1:
        raise ValueError("[prune] every must be at least a second (hours are usual)")
    return interval


async def scheduled(app: Any) -> None:
    """Run the ``[prune]`` policy on the default destination every ``every`` (the first
    run one interval after start); a failed run is logged and tried at the next."""
    interval = schedule_of(app.config.settings.raw)
    if interval is None:
        return
    uri = app.config.settings.output_uri
    while app.accepting:
        await app.sleep_unless_stopping(interval)
        if not app.accepting:
            return
        try:
            policy = Policy.from_table(app.config.settings.raw["prune"])  # ages from now
            storage = app.destinations.get(uri).storage
            await prune(storage, policy, app.config.settings.reuse_window, apply=True)
        except Exception as exc:
            log.error("scheduled prune of %s failed (next in %.0f s): %s", uri, interval, exc)


# -- tasks ----------------------------------------------------------------------------------
async def _index(st: Storage, policy: Policy) -> AsyncGenerator[tuple[float, str], None]:
    """(started, task id) of every task in the policy's projects, newest first."""
    for prefix in [tasks_prefix(p) for p in policy.projects] or [tasks_prefix(None)]:
        async for info in st.list(prefix):
            parsed = parse_newest_first(info.key[len(prefix) :])
            if parsed is not None:
                yield parsed


async def _prune_tasks(
    st: Storage, policy: Policy, apply: bool, report: Report, doomed: _prune_objects.Marks
) -> None:
    assert policy.before is not None
    chunk: list[str] = []

    async def settle() -> None:
        records = await _prune_objects.gather([_task_json(st, task_id) for task_id in chunk])
        for rec in records:
            if rec is None or rec.get("status") not in policy.statuses:
                continue
            report.tasks += 1
            if len(report.task_names) < 10:
                report.task_names.append(f"{rec.get('project')}/{rec.get('name')}")
            doomed.add_task(rec["task_id"])
            if apply:
                await _delete_task(st, rec)
        chunk.clear()

    async with contextlib.aclosing(_index(st, policy)) as entries:
        async for started, task_id in entries:
            if started >= policy.before:
                continue  # newest first: the young ones come first, a LIST page for many
            chunk.append(task_id)
            if len(chunk) >= 256:
                await settle()
    await settle()


async def _task_json(st: Storage, task_id: str) -> dict[str, Any] | None:
    try:
        rec: dict[str, Any] = json.loads(await st.get_bytes(task_key(task_id)))
    except NotFound:
        return None
    return rec


async def _delete_task(st: Storage, rec: dict[str, Any]) -> None:
    """Tombstone, versions and batches, index entries, task.json, tombstone."""
    task_id = rec["task_id"]
    await st.put_bytes(f"{TOMBSTONES}{task_id}.json", json.dumps(rec).encode())
    await _finish(st, rec)


async def _finish(st: Storage, rec: dict[str, Any]) -> None:
    task_id = rec["task_id"]
    prefix = f"tasks/{task_id}/"
    await st.delete_many([i.key async for i in st.list(prefix) if i.key != task_key(task_id)])
    index = record_keys({**rec, "kind": "task"})[1:]
    # the project's entry stays: other tasks of the project may still be listed by it
    index = [k for k in index if not k.startswith("index/projects/")]
    with contextlib.suppress(KeyError, TypeError, ValueError):
        index.append(legacy_index_key(rec["project"], rec["name"], rec["started"], task_id))
    await st.delete_many(index)
    await st.delete(task_key(task_id))
    # a version a late writer published while this ran would be left with no task and
    # keep its objects forever: listed once more, now that no reader reaches the task
    await st.delete_many([i.key async for i in st.list(prefix)])
    await st.delete(f"{TOMBSTONES}{task_id}.json")


async def _finish_tombstones(st: Storage) -> int:
    done = 0
    async for info in st.list(TOMBSTONES):
        try:
            rec = json.loads(await st.get_bytes(info.key))
        except (NotFound, ValueError):
            continue
        if isinstance(rec, dict) and isinstance(rec.get("task_id"), str):
            await _finish(st, rec)
            done += 1
    return done


# -- versions ---------------------------------------------------------------------------------
async def _prune_versions(
    st: Storage, policy: Policy, apply: bool, report: Report, doomed: _prune_objects.Marks
) -> None:
    seen: set[str] = set()
    async with contextlib.aclosing(_index(st, policy)) as entries:
        async for _started, task_id in entries:
            if task_id in seen or doomed.has_task(task_id):
                continue
            seen.add(task_id)
            report.versions += await _prune_task_versions(
                st, task_id, policy.keep_versions, apply, doomed
            )


async def _prune_task_versions(
    st: Storage, task_id: str, keep: int, apply: bool, doomed: _prune_objects.Marks
) -> int:
    """Drop all but the newest ``keep`` versions of each artifact of one task."""
    versions, batches = await _versions_of(st, task_id)
    candidates: list[str] = []
    dropped: dict[str, set[str]] = {}
    for found in versions.values():
        for _stamp, where in sorted(found, reverse=True)[keep:]:
            if isinstance(where, str):
                candidates.append(where)
            elif not _chunk(next(r for r in batches[where[0]] if r["record_id"] == where[1])):
                dropped.setdefault(where[0], set()).add(where[1])
                doomed.add_record_key(f"{where[0]}#{where[1]}")
    # a chunk of a table (the Logger's scalars) is a part, not an older version: kept
    bodies = await _prune_objects.gather([_prune_objects.read_json(st, k) for k in candidates])
    alone = [k for k, body in zip(candidates, bodies, strict=True) if not _chunk(body)]
    for key in alone:
        doomed.add_record_key(key)
    if apply:
        await st.delete_many(alone)
        for key, ids in dropped.items():
            left = [r for r in batches[key] if r["record_id"] not in ids]
            if left:
                body = json.dumps({"version": 1, "records": left}, sort_keys=True).encode()
                await st.put_bytes(key, body)
            else:
                await st.delete(key)
    return len(alone) + sum(len(ids) for ids in dropped.values())


async def _versions_of(
    st: Storage, task_id: str
) -> tuple[dict[str, list[tuple[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """(artifact name -> [(version stamp, where)], batch key -> its records); where is
    a version's own key, or (batch key, record id)."""
    prefix = artifact_prefix(task_id)
    versions: dict[str, list[tuple[str, Any]]] = {}
    async for info in st.list(prefix):
        enc_name, _, version = info.key[len(prefix) :].partition("/")
        if version.endswith(".json"):
            found = versions.setdefault(decode_name(enc_name), [])
            found.append((version.removesuffix(".json"), info.key))
    batches: dict[str, list[dict[str, Any]]] = {}
    async for info in st.list(batch_prefix(task_id)):
        body = await _prune_objects.read_json(st, info.key) if info.key.endswith(".json") else None
        if body is not None:
            batches[info.key] = [r for r in body.get("records", []) if isinstance(r, dict)]
    for key, recs in batches.items():
        for rec in recs:
            stamp = version_stamp(rec["created"], rec["record_id"])
            versions.setdefault(rec["name"], []).append((stamp, (key, rec["record_id"])))
    return versions, batches


# -- helpers ---------------------------------------------------------------------------------
def _chunk(rec: dict[str, Any] | None) -> bool:
    return isinstance(rec, dict) and "chunk_of" in (rec.get("metadata") or {})


def _date(value: Any) -> float:
    """An ISO date or date-time (a TOML date too), local time unless it says otherwise."""
    import datetime as dt

    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day).timestamp()
    try:
        return dt.datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        raise ValueError(f"not a date: {value!r} (e.g. 2026-01-31 or 2026-01-31T12:00)") from None
