"""``artisyncd``: run the daemon in the foreground (``artisync daemon`` calls this too)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from typing import Any


def run_loop(coro: Any) -> Any:
    """Run ``coro`` on uvloop where it is installed, else on asyncio's own loop."""
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
    # client libraries stay at WARNING even at DEBUG: their debug logs carry secrets
    for noisy in ("botocore", "aiobotocore", "urllib3", "azure", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_daemon_args(p: argparse.ArgumentParser) -> None:
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


def run_daemon(args: argparse.Namespace) -> int:
    from artisync.protocol import UnsafeFolder

    from .app import Daemon, SpoolLocked
    from .config import load_config
    from .priority import start_boost, with_work_priority
    from .prune import schedule_of

    _setup_logging(args.log_level)
    overrides: dict[str, Any] = {"exit_when_idle": args.exit_when_idle}
    if args.idle_exit is not None:
        overrides["idle_exit"] = args.idle_exit
    try:
        config = load_config(**overrides)
        schedule_of(config.settings.raw)  # a bad [prune] table: refused now, not at 3 am
    except ValueError as exc:
        print(f"artisyncd: configuration error: {exc}", file=sys.stderr)
        return 2
    start_boost()  # its threads keep this priority (see daemon.priority)
    if config.nice:  # the trainers wait on the daemon's CPU only in a flush: boosted
        with contextlib.suppress(OSError):
            os.nice(config.nice)
    try:
        return int(run_loop(with_work_priority(Daemon(config).run(), config.work_nice)))
    except SpoolLocked as exc:
        print(f"artisyncd: {exc}", file=sys.stderr)
        return 1
    except UnsafeFolder as exc:
        print(f"artisyncd: {exc}", file=sys.stderr)
        return 2


def daemon_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="artisyncd", description="the artisync upload daemon")
    add_daemon_args(p)
    return run_daemon(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(daemon_main())
