"""``artisync``: the command line. It sits above both the SDK and the daemon.

``status``, ``wait`` and ``retry`` talk to the daemon like any training process
(:mod:`._cli_daemon`); ``ls``, ``get`` and ``doctor`` read storage directly
(:mod:`._cli_storage`), and ``ui`` serves them as web pages; ``daemon`` runs the daemon in the foreground.
"""

from __future__ import annotations

import argparse
import sys

from artisync.protocol import ArtisyncError, load_settings

from . import _cli_daemon, _cli_storage


def build_parser() -> argparse.ArgumentParser:
    from artisync.daemon.cli import add_daemon_args

    p = argparse.ArgumentParser(prog="artisync", description="artifacts out of training jobs")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("daemon", help="run the daemon in the foreground")
    add_daemon_args(d)
    s = sub.add_parser("status", help="backlog, uploads, failures, online/offline")
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    ls = sub.add_parser("ls", help="list projects, tasks, or a task's artifacts")
    ls.add_argument("project", nargs="?")
    ls.add_argument("task", nargs="?")
    ls.add_argument("--uri", help="storage to read (default: the configured output URI)")
    ls.add_argument(
        "--limit", type=int, default=50, help="tasks to list, newest first (0: all; default 50)"
    )
    g = sub.add_parser("get", help="download an artifact")
    g.add_argument("path", metavar="PROJECT/TASK/ARTIFACT")
    g.add_argument("-o", "--output", help="where to put it (default: the local cache)")
    g.add_argument("--uri", help="storage to read (default: the configured output URI)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress, only errors")
    w = sub.add_parser("wait", help="wait until everything acknowledged is committed")
    w.add_argument("--task", help="only this task id")
    w.add_argument("--timeout", type=float, help="give up after this many seconds")
    w.add_argument("-q", "--quiet", action="store_true", help="no progress, only errors")
    sub.add_parser("retry", help="queue failed records again")
    mig = sub.add_parser(
        "migrate-index", help="move a bucket's task index to the newest-first layout"
    )
    mig.add_argument("--uri", help="storage to migrate (default: the configured output URI)")
    mig.add_argument("--yes", action="store_true", help="do it (without: count what would move)")
    pr = sub.add_parser(
        "prune", help="delete old tasks and versions by policy, then unreferenced objects"
    )
    pr.add_argument("--uri", help="storage to prune (default: the configured output URI)")
    when = pr.add_mutually_exclusive_group()
    when.add_argument("--older-than", metavar="AGE", help='tasks started longer ago ("90d", "12h")')
    when.add_argument("--before", metavar="DATE", help="tasks started before (2026-01-31)")
    pr.add_argument("--project", action="append", help="only this project (repeatable)")
    pr.add_argument(
        "--status", action="append", help="only tasks in this state (default: closed ones)"
    )
    pr.add_argument(
        "--keep-versions", type=int, metavar="N", help="keep each artifact's newest N versions"
    )
    pr.add_argument("--no-objects", action="store_true", help="leave unreferenced objects")
    act = pr.add_mutually_exclusive_group()
    act.add_argument("--yes", action="store_true", help="delete (without: a dry run that counts)")
    act.add_argument("--dry-run", action="store_true", help="count only (the default)")
    ui = sub.add_parser("ui", help="browse what runs produced in a web page (read-only)")
    ui.add_argument("--uri", help="storage to show (default: the configured output URI)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    ui.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    ui.add_argument("--open", action="store_true", help="open it in a browser")
    doc = sub.add_parser("doctor", help="check a destination: reach, write, read, list, delete")
    doc.add_argument("uri", nargs="?")
    return p


HANDLERS = {
    "status": _cli_daemon.cmd_status,
    "wait": _cli_daemon.cmd_wait,
    "retry": _cli_daemon.cmd_retry,
    "ls": _cli_storage.cmd_ls,
    "get": _cli_storage.cmd_get,
    "doctor": _cli_storage.cmd_doctor,
    "migrate-index": _cli_storage.cmd_migrate_index,
    "ui": _cli_storage.cmd_ui,
    "prune": _cli_storage.cmd_prune,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "daemon":
        from artisync.daemon.cli import run_daemon

        return run_daemon(args)
    try:
        settings = load_settings()
    except ValueError as exc:
        print(f"artisync: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(HANDLERS[args.command](args, settings))
    except (ArtisyncError, ValueError, KeyError) as exc:
        print(f"artisync {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
