"""``artisync status``, ``wait`` and ``retry``: the daemon's view, through its socket."""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import time
from typing import Any

from artisync.protocol import Settings, Spool, format_size, iter_logs, read_log

from ._client import DaemonClient, DaemonError, DaemonUnavailable
from ._handover import hand_over
from ._progress import Progress


def _client(settings: Settings) -> DaemonClient:
    return DaemonClient(settings)


def _hand_over(client: DaemonClient, settings: Settings) -> None:
    """A shared daemon: give it first what waits in this user's handover folder."""
    with client.lock:
        client.connect()
    folder = Spool(settings.handover)
    if client.shared and folder.outbox.is_dir():
        refused = hand_over(client, folder)
        for why in refused:
            print(f"artisync: refused: {why}", file=sys.stderr)


def _outbox_count(settings: Settings) -> int:
    """Records waiting in the outbox: its record files, and what its logs hold beyond
    what the daemon's journal says it read."""
    outbox = settings.spool / "outbox"
    if not outbox.is_dir():
        return 0
    count = sum(1 for p in outbox.glob("*.rec"))
    offsets: dict[str, int] = {}
    with contextlib.suppress(sqlite3.Error):
        uri = f"file:{settings.spool / 'journal.db'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1)) as db:
            offsets = dict(db.execute("SELECT name, offset FROM outbox_logs").fetchall())
    for path in iter_logs(outbox):
        with contextlib.suppress(OSError):
            count += len(read_log(path, offsets.get(path.name, 0), 1 << 30, True).frames)
    return count


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
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
    elif args.watch:
        return _watch(settings, args.watch)
    else:
        print(_format_status(st))
    if st["failed"]["records"] or st.get("rejected", {}).get("records"):
        return 1
    return 0 if st["online"] else 2


def _watch(settings: Settings, every: float) -> int:
    """``status --watch``: the status again every ``every`` seconds, until Ctrl-C (on a
    terminal in place; elsewhere one block after the other, with its time)."""
    client = _client(settings)
    tty = sys.stdout.isatty()
    try:
        while True:
            try:
                text = _format_status(client.request({"op": "status"}, timeout=10)["status"])
            except DaemonUnavailable as exc:
                text = f"daemon: not running ({exc})"
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: the block stays in place
            else:
                text = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{text}"
            print(text, flush=True)
            time.sleep(every)
    except KeyboardInterrupt:
        return 0


def _format_status(st: dict[str, Any]) -> str:
    lines = [
        f"daemon: pid {st['pid']}, up {st['uptime']:.0f} s, spool {st['spool']}",
        f"state: {'online' if st['online'] else 'OFFLINE'}",
        f"backlog: {st['backlog']['records']} records, {format_size(st['backlog']['bytes'])}",
        f"in flight: {st['in_flight']} records, {format_size(st['bytes_in_flight'])}",
        *_encoding_line(st),
        f"committed: {st['committed']['records']} records; uploaded {st['uploaded_objects']} "
        f"objects, {format_size(st['uploaded_bytes'])}",
        f"failed: {st['failed']['records']} records",
    ]
    if "spool_bytes" in st:
        limit = f" of spool_limit {format_size(st['spool_limit'])}" if st.get("spool_limit") else ""
        lines.append(f"spool: {format_size(st['spool_bytes'])}{limit}")
    for item in st.get("retrying", [])[:3]:
        lines.append(
            f"  retrying {item['record_id'][:12]} -> {item['dest']} "
            f"(attempt {item['attempts']}): {item['reason']}"
        )
    for item in st["failed"]["items"]:
        lines.append(
            f"  {item['kind']} {item['record_id'][:12]} -> {item['dest']}: {item['reason']}"
        )
    rejected = st.get("rejected") or {"records": 0, "items": []}
    if rejected["records"]:
        lines.append(f"rejected: {rejected['records']} records (kept in {st['spool']}/rejected)")
    for item in rejected["items"][:5]:
        lines.append(f"  rejected {item['record_id'][:12]}: {item['reason']}")
    for d in st["destinations"]:
        if not d["online"]:
            lines.append(
                f"  offline {d['uri']}: {d['last_error']} (next probe in "
                f"{d['next_probe_in']:.0f} s)"
            )
    if st["failed"]["records"]:
        lines.append("fix the cause, then run `artisync retry`")
    return "\n".join(lines)


def _encoding_line(st: dict[str, Any]) -> list[str]:
    enc = st.get("encoding")
    if not enc:
        return []
    return [
        f"encoding: {enc['records']} raw snapshots waiting, {format_size(enc['bytes'])} "
        f"({enc['in_flight']} now, {enc['workers']} workers)"
    ]


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    bar = Progress("uploading", quiet=args.quiet)
    peak = 0  # the most bytes seen waiting: the bar's total

    def progress(p: dict[str, Any]) -> None:
        nonlocal peak
        left = int(p.get("bytes", 0))
        peak = max(peak, left)
        off = f", offline: {', '.join(p['offline'])}" if p.get("offline") else ""
        bar.update(peak - left, peak, f"{p['remaining']} records left{off}")

    client = _client(settings)
    try:
        _hand_over(client, settings)
        reply = client.request(
            {"op": "wait", "task_id": args.task, "timeout": args.timeout, "progress": True},
            timeout=None if args.timeout is None else args.timeout + 10,
            on_progress=progress,
        )
    except DaemonUnavailable as exc:
        print(f"artisync wait: {exc}", file=sys.stderr)
        return 3
    except DaemonError as exc:
        print(f"artisync wait: {exc}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    if reply["failed"]:
        print(f"done, but {reply['failed']} records failed: see `artisync status`")
        return 1
    if not args.quiet:
        print("everything acknowledged so far is committed")
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    try:
        n = _client(settings).request({"op": "retry"}, timeout=10)["retried"]
    except DaemonUnavailable as exc:
        print(f"artisync retry: {exc} (failed records are retried when it starts)", file=sys.stderr)
        return 3
    print(f"{n} failed records queued again")
    return 0
