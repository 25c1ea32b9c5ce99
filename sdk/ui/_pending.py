"""What this node's daemon has accepted for the view's destination but storage
does not hold yet: shown as "pending upload" beside what storage has.

The daemon is asked over its socket (``query_task``, the request read-your-writes
uses); its peer check applies, so a shared daemon answers each user with their own
tasks only. No daemon, or one that does not answer within :data:`ASK_TIMEOUT`:
nothing is pending as far as the view can tell, and pages show storage alone.
"""

from __future__ import annotations

import threading
from typing import Any

from artisync.protocol import Settings, all_pages

from .._checks import resolve_destination
from .._client import DaemonClient, DaemonError, DaemonUnavailable

ASK_TIMEOUT = 3.0  # seconds a page waits for the daemon's answer


class Pending:
    def __init__(self, settings: Settings, uri: str) -> None:
        self.uri = resolve_destination(uri)
        self.client = DaemonClient(settings)
        self.lock = threading.Lock()  # one request at a time on the one connection

    def ask(
        self, project: str | None = None, task_id: str | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the daemon's tasks of ``project`` or the task ``task_id`` (neither: its
        newest 20 tasks), newest first; the newest version of each artifact of the
        first of them), for this destination."""
        return self._query(task_id=task_id, project=project)

    def versions(self, task_id: str, name: str) -> list[dict[str, Any]]:
        """Every version of artifact ``name`` of the task that the daemon's journal
        holds (uploaded ones too, until they are compacted away), oldest first."""
        _, arts = self._query(task_id=task_id, versions_of=name)
        return arts

    def projects(self) -> set[str]:
        """The projects of the daemon's newest tasks for this destination."""
        tasks, _ = self._query()
        return {str(t["project"]) for t in tasks if t.get("project")}

    def _query(self, **fields: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        msg = {"op": "query_task", "task_id": None, "project": None, "name": None}
        try:
            with self.lock:
                ask = {**msg, **fields, "statuses": None}
                reply = all_pages(lambda m: self.client.request(m, ASK_TIMEOUT), ask)
        except (DaemonUnavailable, DaemonError, OSError, TimeoutError):
            return [], []
        tasks = [t for t in reply.get("tasks") or [] if self._ours(t)]
        arts = [a for a in reply.get("artifacts") or [] if self._ours(a)] if tasks else []
        return tasks, arts

    def _ours(self, rec: dict[str, Any]) -> bool:
        try:
            return resolve_destination(str(rec.get("dest", ""))) == self.uri
        except ValueError:
            return False


def not_stored(
    daemon: list[dict[str, Any]], stored: list[dict[str, Any]], key: str
) -> list[dict[str, Any]]:
    """Those of the daemon's records whose ``key`` storage's records do not have."""
    have = {r.get(key) for r in stored}
    return [dict(r, pending=True) for r in daemon if r.get(key) not in have]
