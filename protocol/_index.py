"""The task index: keys that answer every task lookup in a fixed number of requests.

Object stores list keys in ascending order, a page at a time. Each index entry's
last component is ``<newest-first stamp>-<task_id>``, the stamp being the start
time counted *down* from a fixed ceiling, so the first page of a listing (one
request, a few keys) holds the newest runs however long the history is. A task
is entered once per question that readers ask:

    index/runs/<project>/<name>/<stamp>-<id>       get_task(project, name)
    index/folded/<project>/<casefolded name>/...   the same, ignoring case (ClearML's fallback)
    index/names/<name>/<stamp>-<id>                get_task(task_name=...) in any project
    index/tasks/<project>/<stamp>-<id>             get_tasks(project), the project's task list
    index/all/<stamp>-<id>                         get_tasks(), newest first
    index/projects/<project>                       the projects

Entries are empty objects written after ``task.json``; a reader that finds one
whose task.json is missing skips it. The previous layout (one ascending entry
per run under ``projects/<project>/<name>/``) is still read (see
:func:`legacy_index_prefix`) until ``artisync migrate-index`` has moved it.
"""

from __future__ import annotations

import hashlib

from ._layout import MAX_NAME_BYTES, decode_name, encode_name

STAMP_CEILING = 10**17 - 1  # microseconds: year 5138; 17 digits, as the other stamps


def newest_first_stamp(started: float, task_id: str) -> str:
    return f"{STAMP_CEILING - int(started * 1e6):017d}-{task_id}"


def parse_newest_first(component: str) -> tuple[float, str] | None:
    """``<stamp>-<task_id>`` -> (started, task_id), or None if it is not an entry."""
    stamp, _, task_id = component.partition("-")
    if len(stamp) != 17 or not stamp.isdigit() or len(task_id) != 32:
        return None
    return (STAMP_CEILING - int(stamp)) / 1e6, task_id


def folded_component(name: str) -> str:
    """The case-insensitive form of ``name`` as one key component (a hash when the
    folded name is longer once encoded than a name may be: ``"ß".casefold()`` is ``ss``)."""
    folded = encode_name(name.casefold())
    if len(folded) > MAX_NAME_BYTES:
        return hashlib.sha256(folded.encode()).hexdigest()
    return folded


def runs_prefix(project: str, name: str) -> str:
    return f"index/runs/{encode_name(project)}/{encode_name(name)}/"


def folded_prefix(project: str, name: str) -> str:
    return f"index/folded/{encode_name(project)}/{folded_component(name)}/"


def names_prefix(name: str) -> str:
    return f"index/names/{encode_name(name)}/"


def tasks_prefix(project: str | None) -> str:
    return "index/all/" if project is None else f"index/tasks/{encode_name(project)}/"


PROJECTS_PREFIX = "index/projects/"


def index_keys(project: str, name: str, started: float, task_id: str) -> list[str]:
    """Every index key of one task: its place in each listing, then its project."""
    entry = newest_first_stamp(started, task_id)
    return [
        runs_prefix(project, name) + entry,
        folded_prefix(project, name) + entry,
        names_prefix(name) + entry,
        tasks_prefix(project) + entry,
        tasks_prefix(None) + entry,
        PROJECTS_PREFIX + encode_name(project),
    ]


def project_of(key: str) -> str | None:
    """``index/projects/<project>`` -> the project's name."""
    if not key.startswith(PROJECTS_PREFIX) or "/" in key[len(PROJECTS_PREFIX) :]:
        return None
    return decode_name(key[len(PROJECTS_PREFIX) :]) or None


# -- the previous layout, read until migrated ---------------------------------------------


def legacy_index_prefix(project: str | None = None, name: str | None = None) -> str:
    """Where the previous layout kept its (ascending, oldest-first) entries."""
    if project is None:
        return "projects/"
    if name is None:
        return f"projects/{encode_name(project)}/"
    return f"projects/{encode_name(project)}/{encode_name(name)}/"


def legacy_index_key(project: str, name: str, started: float, task_id: str) -> str:
    return f"{legacy_index_prefix(project, name)}{int(started * 1e6):017d}-{task_id}"


def parse_legacy_index_key(key: str) -> tuple[str, str, float, str] | None:
    """``projects/<p>/<n>/<started>-<id>`` -> (project, name, started, task_id)."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "projects":
        return None
    stamp, _, task_id = parts[3].partition("-")
    if not stamp.isdigit() or len(task_id) != 32:
        return None
    return decode_name(parts[1]), decode_name(parts[2]), int(stamp) / 1e6, task_id
