"""The outbox log: records appended by the SDK, journaled exactly once by the daemon,
whatever is killed when; a torn end (a power loss) kept aside, never taken whole."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import msgpack

from artisync.protocol import read_log
from artisync.protocol._outbox_log import HEADER, MAGIC
from tests.harness import DaemonProc, Env, outbox_records, run_py

FILL = """
import os, sys
from artisync import Task
t = Task.init(project_name="rig", task_name="offline")
for i in range(int(sys.argv[1])):
    t.upload_artifact(f"m{i % 50}", {"step": i})
print(t.id)
os._exit(0)  # no end frame: a rig that lost power
"""


def _journaled(env: Env) -> list[str]:
    db = sqlite3.connect(env.spool / "journal.db", timeout=30)
    try:
        return [r[0] for r in db.execute("SELECT record_id FROM records WHERE kind='artifact'")]
    finally:
        db.close()


def test_a_daemon_killed_while_it_reads_a_log_journals_each_record_once(env: Env) -> None:
    n = 30_000
    run_py(env, f"import sys; sys.argv = ['f', '{n}']\n{FILL}", timeout=300)
    written = [r["record_id"] for r in outbox_records(env.spool) if r["kind"] == "artifact"]
    assert len(written) == n and len(set(written)) == n
    for _ in range(2):  # killed twice, part of the way through
        d = DaemonProc(env).wait_ready()
        deadline = time.monotonic() + 60
        while len(_journaled(env)) < 2048 and time.monotonic() < deadline:
            time.sleep(0.005)
        d.kill()
        assert len(_journaled(env)) < n, "read everything before it was killed: kill sooner"
    d = DaemonProc(env, "--exit-when-idle")
    assert d.wait_exit(180) == 0, d.output()
    journaled = _journaled(env)
    assert len(journaled) == n and set(journaled) == set(written)
    with sqlite3.connect(env.spool / "journal.db", timeout=30) as db:
        _totals_agree(db)  # the killed transactions counted nothing
    assert list((env.spool / "outbox").iterdir()) == []  # read to its end, writer gone


def test_a_torn_end_is_kept_aside_and_the_rest_journaled(env: Env) -> None:
    run_py(env, "import sys; sys.argv = ['f', '10']\n" + FILL)
    (log,) = (env.spool / "outbox").glob("*.log")
    body = msgpack.packb({"kind": "artifact", "record_id": "f" * 32})
    frame = HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body
    with open(log, "ab") as f:
        f.write(frame[: len(frame) // 2])  # power went out in the middle of a write
    got = read_log(log, 0, 100, writer_alive=True)
    assert len(got.frames) == 11 and got.torn is None  # a live writer may still finish it
    d = DaemonProc(env, "--exit-when-idle")
    assert d.wait_exit(60) == 0, d.output()
    assert len(_journaled(env)) == 10
    kept = list((env.spool / "rejected").glob("torn-*.rec"))
    assert len(kept) == 1 and kept[0].read_bytes() == frame[: len(frame) // 2]
    why = kept[0].with_suffix(".why").read_text()
    assert "torn" in why and log.name in why
    assert not log.exists()


def test_a_refused_record_in_a_log_is_kept_aside_and_the_rest_journaled(env: Env) -> None:
    """A record the daemon refuses (here: one missing its fields, planted in the log by
    hand) goes to rejected/ under its id, with the reason; the others are journaled."""
    code = """
        import os
        from artisync import Task
        t = Task.init(project_name="p", task_name="n")
        t.upload_artifact("before", {"a": 1})
        print(t.id, flush=True)
        os._exit(0)  # no end frame: the planted record follows the others
    """
    task_id = run_py(env, code).stdout.split()[-1]
    (log,) = (env.spool / "outbox").glob("*.log")
    bad = msgpack.packb({"kind": "artifact", "record_id": "e" * 32, "task_id": task_id})
    with open(log, "ab") as f:
        f.write(HEADER.pack(MAGIC, len(bad), zlib.crc32(bad)) + bad)
    d = DaemonProc(env, "--exit-when-idle")
    assert d.wait_exit(60) == 0, d.output()
    assert (env.spool / "rejected" / f"{'e' * 32}.why").exists()
    assert len(_journaled(env)) == 1
    assert list((env.spool / "outbox").iterdir()) == []


def test_forked_children_write_logs_of_their_own(env: Env) -> None:
    code = """
        import os
        from artisync import Task
        t = Task.init(project_name="p", task_name="fork")
        t.upload_artifact("parent-1", {"a": 1})
        pids = []
        for c in range(3):
            pid = os.fork()
            if pid == 0:
                for i in range(100):
                    Task.current_task().upload_artifact(f"child{c}-{i}", {"i": i})
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        t.upload_artifact("parent-2", {"a": 2})
        t.close()
    """
    run_py(env, code)
    logs = list((env.spool / "outbox").glob("*.log"))
    assert len(logs) == 4  # the parent's, and one per child
    names = [r["name"] for r in outbox_records(env.spool) if r["kind"] == "artifact"]
    assert len(names) == 302 and len(set(names)) == 302
    d = DaemonProc(env, "--exit-when-idle")
    assert d.wait_exit(60) == 0, d.output()
    assert len(_journaled(env)) == 302
    assert list((env.spool / "outbox").iterdir()) == []


def test_status_counts_what_waits_in_the_logs(env: Env) -> None:
    run_py(env, "import sys; sys.argv = ['f', '25']\n" + FILL)
    out = subprocess.run(
        [sys.executable, "-m", "artisync.cli", "status"],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "26 records waiting" in out.stdout, out.stdout  # started, 25 artifacts


def _totals_agree(db: sqlite3.Connection) -> None:
    """The journal's counters say what a count over its rows says."""
    counted = dict(db.execute("SELECT state, count(*) FROM records GROUP BY state").fetchall())
    kept = {
        state: n
        for state, n in db.execute("SELECT state, n FROM totals").fetchall()
        if n and state not in ("objects", "compacted")
    }
    assert kept == counted


def test_the_counters_count_a_batch_that_comes_again_once(tmp_path: Path) -> None:
    """Records journaled before (a log read again after a crash between its records'
    commit and nothing else, or a record both in a file and a log) are ignored, and
    the counters count only the rows inserted, with and without payloads."""
    from artisync.daemon._journal_schema import Incoming, configure, create_schema, ingest_batch

    db = sqlite3.connect(tmp_path / "journal.db", isolation_level=None)
    configure(db)
    create_schema(db)
    task = "a" * 32

    def record(i: int, raw: bool) -> dict[str, Any]:
        rec: dict[str, Any] = {"kind": "artifact", "record_id": f"{i:032x}", "task_id": task}
        rec.update(project="p", name=f"m{i}", dest="file:///tmp/x", created=1.0)
        if raw:  # its raw file in the spool, to be hashed (encoded) later
            rec["raw"] = {"codec": "stored", "size": 10 + i}
        else:
            rec.update(sha256="b" * 64, size=5, blobs=[["b" * 64, 5]])
        return rec

    first = [Incoming(record(i, i % 3 != 0), 0, 1) for i in range(1200)]
    ingest_batch(db, first, ("one.log", 100))
    _totals_agree(db)
    again = [Incoming(record(i, i % 3 != 0), 0, 1) for i in range(1000, 1600)]  # 200 seen
    ingest_batch(db, again, ("one.log", 200))
    _totals_agree(db)
    n, size = db.execute("SELECT n, bytes FROM totals WHERE state='encoding'").fetchone()
    raw = [i for i in range(1600) if i % 3 != 0]
    assert (n, size) == (len(raw), sum(10 + i for i in raw))
    db.close()


def test_a_stream_of_records_is_journaled_in_passes_a_lone_one_at_once(env: Env) -> None:
    """``ingest_window``: while records stream in, the outbox is read at most that often
    (here 2 s), so a stream is journaled a few records per pass; a record after a quiet
    spell is journaled at once, and a flush does not wait for the window."""
    d = DaemonProc(env, ARTISYNC_INGEST_WINDOW="2").wait_ready()
    try:
        time.sleep(2.5)  # quiet for longer than the window
        code = """
            import time
            from artisync import Task
            t = Task.init(project_name="stream", task_name="n")
            for i in range(8):
                t.upload_artifact(f"d{i}", {"i": i})
                time.sleep(0.1)
            t.upload_artifact("last", {"i": 8})
            t.flush()  # journaled now, not at the end of the window
            print(time.time())
        """
        flushed = float(run_py(env, code).stdout.split()[-1])
        with sqlite3.connect(env.spool / "journal.db", timeout=30) as db:
            rows = db.execute("SELECT body, received FROM records WHERE kind='artifact'")
            got = {msgpack.unpackb(b, raw=False)["name"]: (rec, b) for b, rec in rows}
        assert sorted(got) == [*(f"d{i}" for i in range(8)), "last"]
        created = {name: msgpack.unpackb(b, raw=False)["created"] for name, (_, b) in got.items()}
        received = {name: rec for name, (rec, _) in got.items()}
        assert received["d0"] - created["d0"] < 1.0  # the first of the stream: at once
        passes = {round(received[f"d{i}"], 3) for i in range(8)}
        assert len(passes) <= 2, passes  # the rest of the stream: one pass, or two
        assert received["last"] <= flushed  # flush() did not wait for the window
    finally:
        d.stop()
