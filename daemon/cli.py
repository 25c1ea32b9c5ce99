"""Command line: ``artisyncd`` / ``artisync daemon``, status, ls, get, wait, retry, doctor.

The talking commands are clients like any training process: they use the
SDK's socket client and reader (imported lazily), so they see exactly what
a script would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from artisync.protocol import ArtisyncError, Settings, load_settings


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("watchdog", "botocore", "aiobotocore", "urllib3", "azure", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_daemon(args: argparse.Namespace) -> int:
    from .app import Daemon, SpoolLocked
    from .config import load_config

    _setup_logging(args.log_level)
    overrides: dict[str, Any] = {"exit_when_idle": args.exit_when_idle}
    if args.idle_exit is not None:
        overrides["idle_exit"] = args.idle_exit
    try:
        config = load_config(**overrides)
    except ValueError as exc:
        print(f"artisyncd: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(_run_loop(Daemon(config).run()))
    except SpoolLocked as exc:
        print(f"artisyncd: {exc}", file=sys.stderr)
        return 1


def _client(settings: Settings) -> Any:
    from artisync._client import DaemonClient

    return DaemonClient(settings)


def _outbox_count(settings: Settings) -> int:
    outbox = settings.spool / "outbox"
    return sum(1 for p in outbox.glob("*.rec")) if outbox.is_dir() else 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from artisync._client import DaemonUnavailable

    try:
        st = _client(settings).request({"op": "status"}, timeout=10)["status"]
    except DaemonUnavailable as exc:
        waiting = _outbox_count(settings)
        if args.json:
            print(json.dumps({"running": False, "outbox": waiting, "error": str(exc)}))
        else:
            print(
                f"daemon: not running ({settings.socket})\noutbox: {waiting} records waiting "
                f"in {settings.spool}"
            )
        return 3
    if args.json:
        print(json.dumps({"running": True, **st}, indent=2))
    else:
        print(_format_status(st))
    if st["failed"]["records"]:
        return 1
    return 0 if st["online"] else 2


def _format_status(st: dict[str, Any]) -> str:
    lines = [
        f"daemon: pid {st['pid']}, up {st['uptime']:.0f} s, spool {st['spool']}",
        f"state: {'online' if st['online'] else 'OFFLINE'}",
        f"backlog: {st['backlog']['records']} records, {_human(st['backlog']['bytes'])}",
        f"in flight: {st['in_flight']} records, {_human(st['bytes_in_flight'])}",
        f"committed: {st['committed']['records']} records; uploaded {st['uploaded_objects']} "
        f"objects, {_human(st['uploaded_bytes'])}",
        f"failed: {st['failed']['records']} records",
    ]
    if "spool_bytes" in st:
        limit = f" of spool_limit {_human(st['spool_limit'])}" if st.get("spool_limit") else ""
        lines.append(f"spool: {_human(st['spool_bytes'])}{limit}")
    for item in st.get("retrying", [])[:3]:
        lines.append(
            f"  retrying {item['record_id'][:12]} -> {item['dest']} "
            f"(attempt {item['attempts']}): {item['reason']}"
        )
    for item in st["failed"]["items"]:
        lines.append(
            f"  {item['kind']} {item['record_id'][:12]} -> {item['dest']}: {item['reason']}"
        )
    for d in st["destinations"]:
        if not d["online"]:
            lines.append(
                f"  offline {d['uri']}: {d['last_error']} (next probe in "
                f"{d['next_probe_in']:.0f} s)"
            )
    if st["failed"]["records"]:
        lines.append("fix the cause, then run `artisync retry`")
    return "\n".join(lines)


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    from artisync._client import DaemonError, DaemonUnavailable

    start = time.monotonic()

    def progress(p: dict[str, Any]) -> None:
        off = f", offline: {', '.join(p['offline'])}" if p.get("offline") else ""
        sys.stderr.write(
            f"\rwaiting: {p['remaining']} records, {_human(p['bytes'])} "
            f"left ({time.monotonic() - start:.0f} s){off}   "
        )
        sys.stderr.flush()

    try:
        reply = _client(settings).request(
            {"op": "wait", "task_id": args.task, "timeout": args.timeout, "progress": True},
            timeout=None if args.timeout is None else args.timeout + 10,
            on_progress=progress,
        )
    except DaemonUnavailable as exc:
        print(f"\nartisync wait: {exc}", file=sys.stderr)
        return 3
    except DaemonError as exc:
        print(f"\nartisync wait: {exc}", file=sys.stderr)
        return 2
    sys.stderr.write("\n")
    if reply["failed"]:
        print(f"done, but {reply['failed']} records failed: see `artisync status`")
        return 1
    print("everything acknowledged so far is committed")
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    from artisync._client import DaemonUnavailable

    try:
        n = _client(settings).request({"op": "retry"}, timeout=10)["retried"]
    except DaemonUnavailable as exc:
        print(f"artisync retry: {exc} (failed records are retried when it starts)", file=sys.stderr)
        return 3
    print(f"{n} failed records queued again")
    return 0


def cmd_ls(args: argparse.Namespace, settings: Settings) -> int:
    from artisync._reader import list_entries

    uri = args.uri or settings.output_uri
    for line in list_entries(uri, args.project, args.task):
        print(line)
    return 0


def cmd_get(args: argparse.Namespace, settings: Settings) -> int:
    from artisync._reader import fetch_to

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
    from .config import load_config
    from .doctor import doctor, format_checks

    uri = args.uri or settings.output_uri
    checks = _run_loop(doctor(uri, load_config(settings).options_for(uri)))
    print(format_checks(checks))
    return 0 if all(c.ok for c in checks) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="artisync", description="artifacts out of training jobs")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("daemon", help="run the daemon in the foreground")
    _daemon_args(d)
    s = sub.add_parser("status", help="backlog, uploads, failures, online/offline")
    s.add_argument("--json", action="store_true")
    ls = sub.add_parser("ls", help="list projects, tasks, or a task's artifacts")
    ls.add_argument("project", nargs="?")
    ls.add_argument("task", nargs="?")
    ls.add_argument("--uri", help="storage to read (default: the configured output URI)")
    g = sub.add_parser("get", help="download an artifact")
    g.add_argument("path", metavar="PROJECT/TASK/ARTIFACT")
    g.add_argument("-o", "--output", help="where to put it (default: the local cache)")
    g.add_argument("--uri", help="storage to read (default: the configured output URI)")
    w = sub.add_parser("wait", help="wait until everything acknowledged is committed")
    w.add_argument("--task", help="only this task id")
    w.add_argument("--timeout", type=float, help="give up after this many seconds")
    sub.add_parser("retry", help="queue failed records again")
    doc = sub.add_parser("doctor", help="check a destination: reach, write, read, list, delete")
    doc.add_argument("uri", nargs="?")
    return p


def _daemon_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        help="exit after this many idle seconds with nothing to upload",
    )
    p.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit as soon as the outbox and backlog are empty",
    )
    p.add_argument("--log-level", default="INFO")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "daemon":
        return cmd_daemon(args)
    try:
        settings = load_settings()
    except ValueError as exc:
        print(f"artisync: configuration error: {exc}", file=sys.stderr)
        return 2
    handler = {
        "status": cmd_status,
        "wait": cmd_wait,
        "retry": cmd_retry,
        "ls": cmd_ls,
        "get": cmd_get,
        "doctor": cmd_doctor,
    }[args.command]
    try:
        return int(handler(args, settings))
    except (ArtisyncError, ValueError, KeyError) as exc:
        print(f"artisync {args.command}: {exc}", file=sys.stderr)
        return 1


def daemon_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="artisyncd", description="the artisync upload daemon")
    _daemon_args(p)
    return cmd_daemon(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
