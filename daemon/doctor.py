"""``artisync doctor [URI]``: check that a storage destination really works.

Writes a small probe object under ``_artisync_doctor/``, reads it back, lists
it, deletes it and checks it is gone, and explains every failure in words an
operator can act on (credentials, a missing bucket, an unreachable endpoint).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from artisync.protocol import (
    AccessDenied,
    IntegrityError,
    NotFound,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)

from .storage.base import Storage, open_storage, unknown_options

__all__ = ["Check", "doctor", "format_checks"]

PROBE_DIR = "_artisync_doctor"
T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


class _Failed(Exception):
    """A step failed; ``detail`` says why, for the operator."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def explain(exc: BaseException) -> str:
    """A storage error, as one line an operator can act on (never a secret)."""
    if isinstance(exc, StorageError):
        message = str(exc.args[0]) if exc.args else type(exc).__name__
        hint = f"; {exc.hint}" if exc.hint else ""
        if isinstance(exc, AccessDenied):
            named = message.startswith(("access denied", "bucket ", "container "))
            return f"{'' if named else 'access denied: '}{message}{hint or '; check credentials'}"
        if isinstance(exc, IntegrityError):
            return f"integrity check failed: {message}{hint}"
        if isinstance(exc, NotFound):
            return f"not found: {message}{hint}"
        if isinstance(exc, TransientStorageError):
            if message.startswith("cannot connect"):
                return f"{message}{hint}"
            return f"temporary failure (network, timeout or server error): {message}{hint}"
        if isinstance(exc, PermanentStorageError):
            return f"failed: {message}{hint}"
    if isinstance(exc, TimeoutError):
        return "timed out: the endpoint did not answer (check the endpoint URL and network)"
    return f"unexpected {type(exc).__name__}: {exc}"


async def _step(coro: Awaitable[T], step_timeout: float) -> T:
    try:
        async with asyncio.timeout(step_timeout):
            return await coro
    except (StorageError, TimeoutError) as exc:
        raise _Failed(explain(exc)) from exc


async def doctor(
    uri: str, options: Mapping[str, Any], *, step_timeout: float = 20.0
) -> list[Check]:
    """Run the checks against ``uri``; every check is reported, failed or not.

    Steps after a failed write are reported as skipped (``ok=False``).
    """
    checks: list[Check] = []
    try:
        storage = open_storage(uri, options)
    except (ValueError, ImportError, StorageError) as exc:
        reason = explain(exc) if isinstance(exc, StorageError) else str(exc)
        return [Check("open", False, f"cannot use {uri!r}: {reason}")]
    checks.append(Check("open", True, f"{storage.scheme} backend for {storage.uri}"))
    unknown, known = unknown_options(uri, options)
    if unknown:  # a typo (``endpoint`` for ``endpoint_url``) fails later in confusing ways
        detail = (
            f"unknown option(s) {', '.join(unknown)}; {storage.scheme} reads: {', '.join(known)}"
        )
        checks.append(Check("options", False, detail))
    try:
        checks += await _probe(storage, step_timeout)
    finally:
        try:
            await storage.aclose()
        except Exception as exc:  # a failed close must not hide the real report
            checks.append(Check("close", False, explain(exc)))
    return checks


async def _probe(storage: Storage, step_timeout: float) -> list[Check]:
    key = f"{PROBE_DIR}/{secrets.token_hex(8)}"
    data = f"artisync doctor probe {time.time():.3f} pid {os.getpid()}\n".encode()
    checks: list[Check] = []

    async def run(name: str, fn: Any) -> bool:
        start = time.monotonic()
        try:
            detail = await fn()
        except _Failed as failed:
            checks.append(Check(name, False, failed.detail))
            return False
        checks.append(Check(name, True, f"{detail} ({time.monotonic() - start:.2f}s)"))
        return True

    async def write() -> str:
        await _step(storage.put_bytes(key, data), step_timeout)
        return f"wrote {len(data)} bytes to {key}"

    async def read() -> str:
        got = await _step(storage.get_bytes(key), step_timeout)
        if got != data:
            raise _Failed(f"read back {len(got)} bytes that differ from the {len(data)} written")
        return "read back identical bytes"

    async def listing() -> str:
        async def collect() -> list[str]:
            return [info.key async for info in storage.list(f"{PROBE_DIR}/")]

        keys = await _step(collect(), step_timeout)
        if key not in keys:
            raise _Failed(
                f"the probe is missing from the listing of {PROBE_DIR}/ ({len(keys)} other objects)"
            )
        return f"listing of {PROBE_DIR}/ shows the probe"

    async def delete() -> str:
        await _step(storage.delete(key), step_timeout)
        if await _step(storage.head(key), step_timeout) is not None:
            raise _Failed("the probe is still there after delete")
        return "deleted the probe; it is gone"

    if not await run("write", write):
        checks += [Check(n, False, "skipped: write failed") for n in ("read", "list", "delete")]
        return checks
    await run("read", read)
    await run("list", listing)
    if not await run("delete", delete):
        try:  # best effort, so a failed check leaves nothing behind
            await asyncio.wait_for(storage.delete(key), step_timeout)
        except (StorageError, TimeoutError):
            pass
    return checks


def format_checks(checks: Sequence[Check]) -> str:
    """Checks as aligned lines, then a one-line verdict."""
    width = max((len(c.name) for c in checks), default=0)
    lines = [f"{'ok  ' if c.ok else 'FAIL'}  {c.name.ljust(width)}  {c.detail}" for c in checks]
    failed = [c.name for c in checks if not c.ok]
    lines.append(
        "all checks passed"
        if not failed
        else f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)}"
    )
    return "\n".join(lines)
