"""``artisync ls``, ``get``, ``ui``, ``prune`` and ``doctor``: storage read directly, no daemon needed."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

from artisync.protocol import NotFound, Settings

from ._cache import cache_root
from ._progress import Progress
from ._reader import Reader
from ._task import Task


def cmd_ls(args: argparse.Namespace, settings: Settings) -> int:
    uri = args.uri or settings.output_uri
    for line in list_entries(Reader(settings), uri, args.project, args.task, args.limit):
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
        quiet=args.quiet,
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


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    """Delete by policy: the config's ``[prune]`` table, with the flags on top."""
    from artisync.daemon.cli import run_loop
    from artisync.daemon.config import load_config
    from artisync.daemon.prune import Policy, prune
    from artisync.daemon.storage import open_storage
    from artisync.daemon.storage.retry import STORAGE_RETRY, RetryingStorage

    table = dict(settings.raw.get("prune") or {})  # its "every" is the daemon's
    if args.older_than is not None or args.before is not None:
        table.pop("older_than", None)  # a cutoff given here replaces the config's
        table.pop("before", None)
    for key in ("older_than", "before", "keep_versions"):
        if getattr(args, key) is not None:
            table[key] = getattr(args, key)
    if args.project:
        table["projects"] = args.project
    if args.status:
        table["statuses"] = args.status
    if args.no_objects:
        table["objects"] = False
    policy = Policy.from_table(table)
    uri = args.uri or settings.output_uri

    async def go() -> str:
        config = load_config(settings)
        # retried through throttling and network failures as the daemon's requests are
        retries = replace(STORAGE_RETRY, max_elapsed=config.retry_max_elapsed)
        st = RetryingStorage(open_storage(uri, config.options_for(uri)), retries)
        try:
            report = await prune(st, policy, settings.reuse_window, apply=args.yes)
        finally:
            await st.aclose()
        return report.summary(uri)

    print(f"prune {uri}: {policy.describe()}")
    print(run_loop(go()))
    return 0


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    from .ui import serve

    serve(settings, args.uri or settings.output_uri, args.host, args.port, args.open)
    return 0


def list_entries(
    reader: Reader, uri: str, project: str | None, task: str | None, limit: int = 0
) -> Iterator[str]:
    """Projects; the tasks of a project, newest first (``limit``: at most that many, 0:
    all; read a page at a time); the artifacts of the newest task of that name."""
    if project is None:
        yield from reader.projects(uri)
        return
    if task is None:
        shown = 0
        for page in reader.task_pages(uri, project, None, None, min(limit or 50, 1000)):
            for rec in page:
                if limit and shown >= limit:
                    yield f"# more: --limit {limit * 10} (or 0 for all)"
                    return
                shown += 1
                yield f"{rec['name']}\t{rec['task_id']}\t{rec.get('status')}\t{_iso(rec['started'])}"
        return
    found = reader.find_tasks(uri, project, task, None)
    if not found:
        raise NotFound(f"no task {task!r} in project {project!r} at {uri}")
    newest = found[0]
    yield f"# task {newest['task_id']} ({newest.get('status')}) started {_iso(newest['started'])}"
    for section, values in sorted((newest.get("params") or {}).items()):
        for key, value in sorted(values.items()):
            yield f"# param {section}/{key} = {json.dumps(value)}"
    for name in sorted(newest.get("configuration") or {}):
        yield f"# configuration {name}"
    for art in reader.artifact_records(uri, newest["task_id"]):
        yield f"{art['name']}\t{art['type']}/{art['format']}\t{art['size']}\t{art['sha256'][:12]}"


def cmd_migrate_index(args: argparse.Namespace, settings: Settings) -> int:
    uri = args.uri or settings.output_uri
    found, moved = Reader(settings).migrate_index(uri, apply=args.yes)
    if args.yes:
        print(f"{uri}: moved {moved} task index entries to the newest-first layout")
    else:
        print(f"{uri}: {found} task index entries in the previous layout (--yes moves them)")
    return 0


def fetch_to(
    uri: str, project: str, task: str, artifact: str, out: Path | None, *, quiet: bool = True
) -> Path:
    """The newest task of that name, that artifact's verified local copy (or ``out``),
    with progress: bytes of its objects in the local cache so far."""
    t = Task.get_task(project_name=project, task_name=task, output_uri=uri)
    if artifact not in t.artifacts:
        raise NotFound(
            f"task {task!r} has no artifact {artifact!r} "
            f"(it has: {', '.join(sorted(t.artifacts)) or 'none'})"
        )
    art = t.artifacts[artifact]
    blobs = [(str(sha), int(size)) for sha, size in art.record.get("blobs") or []]
    bar = Progress(f"downloading {artifact}", quiet=quiet)
    total = sum(size for _, size in blobs)
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(art.get_local_copy, raise_on_error=True)
        try:
            while not wait([job], timeout=0.2).done:
                bar.update(_in_cache(blobs), total)
            bar.update(total, total)
        finally:
            bar.close()
        local = Path(job.result() or "")
    if out is None:
        return local
    if local.is_dir():
        shutil.copytree(local, out, dirs_exist_ok=True)
    else:
        shutil.copyfile(local, out)
    return out


def _in_cache(blobs: list[tuple[str, int]]) -> int:
    """Bytes of ``blobs`` in the reader's cache: whole objects, and those being written
    (``.<sha>.<pid>.<thread>.tmp``); one listing of the cache a call."""
    whole: set[str] = set()
    partial: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError), os.scandir(cache_root()) as it:
        for e in it:
            if e.name.endswith(".tmp"):
                sha = e.name[1:].partition(".")[0]
                with contextlib.suppress(OSError):
                    partial[sha] = partial.get(sha, 0) + e.stat().st_size
            else:
                whole.add(e.name)
    return sum(size if sha in whole else partial.get(sha, 0) for sha, size in blobs)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds")
