"""``artisync ls``, ``get`` and ``doctor``: storage read directly, no daemon needed."""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from artisync.protocol import NotFound, Settings, project_prefix

from ._reader import Reader
from ._task import Task


def cmd_ls(args: argparse.Namespace, settings: Settings) -> int:
    uri = args.uri or settings.output_uri
    for line in list_entries(Reader(settings), uri, args.project, args.task):
        print(line)
    return 0


def cmd_get(args: argparse.Namespace, settings: Settings) -> int:
    project, _, rest = args.path.partition("/")
    task, _, artifact = rest.rpartition("/")
    if not project or not task or not artifact:
        print("artisync get: expected PROJECT/TASK/ARTIFACT", file=sys.stderr)
        return 2
    out = fetch_to(
        args.uri or settings.output_uri,
        project,
        task,
        artifact,
        Path(args.output) if args.output else None,
    )
    print(out)
    return 0


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    from artisync.daemon.cli import run_loop
    from artisync.daemon.config import load_config
    from artisync.daemon.doctor import doctor, format_checks

    uri = args.uri or settings.output_uri
    checks = run_loop(doctor(uri, load_config(settings).options_for(uri)))
    print(format_checks(checks))
    return 0 if all(c.ok for c in checks) else 1


def list_entries(reader: Reader, uri: str, project: str | None, task: str | None) -> Iterator[str]:
    """Projects; the tasks of a project; the artifacts of the newest task of that name."""
    if project is None:
        seen: set[str] = set()
        for entry in reader.index(uri, project_prefix()):
            if entry[0] not in seen:
                seen.add(entry[0])
                yield entry[0]
        return
    if task is None:
        for _project, name, started, task_id in reader.index(uri, project_prefix(project)):
            yield f"{name}\t{task_id}\t{_iso(started)}"
        return
    found = reader.find_tasks(uri, project, task, None)
    if not found:
        raise NotFound(f"no task {task!r} in project {project!r} at {uri}")
    newest = found[0]
    yield f"# task {newest['task_id']} ({newest.get('status')}) started {_iso(newest['started'])}"
    for art in reader.artifact_records(uri, newest["task_id"]):
        yield f"{art['name']}\t{art['type']}/{art['format']}\t{art['size']}\t{art['sha256'][:12]}"


def fetch_to(uri: str, project: str, task: str, artifact: str, out: Path | None) -> Path:
    """The newest task of that name, that artifact's verified local copy (or ``out``)."""
    t = Task.get_task(project_name=project, task_name=task, output_uri=uri)
    if artifact not in t.artifacts:
        raise NotFound(
            f"task {task!r} has no artifact {artifact!r} "
            f"(it has: {', '.join(sorted(t.artifacts)) or 'none'})"
        )
    local = Path(t.artifacts[artifact].get_local_copy(raise_on_error=True) or "")
    if out is None:
        return local
    if local.is_dir():
        shutil.copytree(local, out, dirs_exist_ok=True)
    else:
        shutil.copyfile(local, out)
    return out


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds")
