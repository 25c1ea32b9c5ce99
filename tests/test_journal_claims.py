"""The uploader's and the encoder's claims on a real journal (SQLite in a temp folder):
oldest first across new records and retries that are due, never one in flight, an
offline destination's records left waiting, a long backlog claimed a slice at a time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from artisync.daemon.journal import Incoming, Journal, State


def _record(i: int, dest: str = "file:///a", raw: bool = False) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "kind": "artifact",
        "record_id": f"{i:032x}",
        "task_id": "t" * 32,
        "project": "p",
        "dest": dest,
        "type": "dict",
        "format": "json",
        "created": float(i),
    }
    if raw:  # a raw file in the spool: waits for the encoder
        rec["raw"] = {"codec": "stored", "size": 3}
    else:
        rec.update(sha256=f"{i:064x}", size=3, blobs=[[f"{i:064x}", 3]])
    return rec


def test_claims_take_the_oldest_due_records_first(tmp_path: Path) -> None:
    async def run() -> None:
        journal = Journal(tmp_path / "journal.db")
        await journal.open()
        try:
            # seq = i + 1; seq 4 goes to destination b, seq 9 waits to be encoded
            batch = [
                Incoming(_record(i, "file:///b" if i == 3 else "file:///a"), 0, 1) for i in range(8)
            ]
            await journal.ingest([*batch, Incoming(_record(8, raw=True), 0, 1)])
            # seq 1, 2: retries due now; seq 5: a retry due in an hour
            now = time.time()
            await journal.set_state(1, State.PENDING, "503", now - 1)
            await journal.set_state(2, State.UPLOADED, "503", now - 5)
            await journal.set_state(5, State.PENDING, "503", now + 3600)
            first = await journal.claim(3, ["file:///b"], exclude=[])
            assert [r.seq for r in first] == [1, 2, 3]  # b is offline: 4 waits
            assert [r.state for r in first] == [State.PENDING, State.UPLOADED, State.PENDING]
            # claimed: uploading (an uploaded one stays: only its publishing is left)
            again = await journal.claim(10, [], exclude=[2])
            assert [r.seq for r in again] == [4, 6, 7, 8]  # 5 not due yet, 9 not encoded
            assert await journal.claim(10, [], exclude=[2]) == []
            encode = await journal.claim_encoding(5, exclude=[])
            assert [r.seq for r in encode] == [9]
            assert await journal.claim_encoding(5, exclude=[9]) == []
        finally:
            await journal.close()

    asyncio.run(run())


def test_a_long_backlog_is_claimed_in_order_a_slice_at_a_time(tmp_path: Path) -> None:
    async def run() -> None:
        journal = Journal(tmp_path / "journal.db")
        await journal.open()
        try:
            await journal.ingest([Incoming(_record(i), 0, 1) for i in range(20_000)])
            got: list[int] = []
            while rows := await journal.claim(64, [], exclude=[]):
                got += [r.seq for r in rows]
            assert got == list(range(1, 20_001))
        finally:
            await journal.close()

    asyncio.run(run())
