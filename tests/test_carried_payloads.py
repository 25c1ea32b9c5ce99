"""Records that carry their payload (a dict's JSON up to 64 KiB): journaled encoded, kept
in the journal until committed, sent from there. Real daemon, real S3 behind a real
fault proxy, real SIGKILL."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.faultproxy import FaultProxy
from tests.harness import Conn, DaemonProc, Env, run_py, short_tmpdir
from tests.storage_fixtures import _make
from tests.test_storage_manager import _env

# ~30 kB of JSON: more than is published inside a version record (4 KiB), less than
# a record carries (64 KiB)
REPORT = """
from artisync import Task
task = Task.init(project_name="carried", task_name="dicts")
task.upload_artifact("big", {f"key{i}": [i, i / 2, str(i)] for i in range(1000)})
task.upload_artifact("small", {"lr": 0.1})
print(task.id, flush=True)
"""
BIG = {f"key{i}": [i, i / 2, str(i)] for i in range(1000)}

READ = """
import json, sys
from artisync import Task
task = Task.get_task(task_id=sys.argv[1])
print(json.dumps(task.artifacts["big"].get()))
"""


def _journaled(env: Env, name: str) -> tuple[str, dict[str, Any]]:
    with sqlite3.connect(env.spool / "journal.db", timeout=30) as db:
        rows = db.execute("SELECT state, body FROM records WHERE kind='artifact'").fetchall()
    found = [(s, msgpack.unpackb(b, raw=False)) for s, b in rows]
    (one,) = [(s, b) for s, b in found if b.get("name") == name]
    return one


def _states(env: Env) -> list[tuple[str, str, str]]:
    with sqlite3.connect(env.spool / "journal.db", timeout=30) as db:
        return db.execute("SELECT kind, state, reason FROM records").fetchall()


def _wait_state(env: Env, name: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            state, body = _journaled(env, name)
            if state in states:
                return body
        except (ValueError, sqlite3.OperationalError):
            pass  # not journaled yet
        assert time.monotonic() < deadline, f"{name} never reached {states}: {_states(env)}"
        time.sleep(0.05)


def test_a_dict_is_kept_in_the_journal_until_committed_and_sent_from_there(
    request: pytest.FixtureRequest,
) -> None:
    """S3 refuses connections: the dict is journaled encoded (its hash known, no encoding
    step, no blob in the spool), read back on the node from the journal, survives a
    SIGKILL of the daemon, and is sent once S3 is back; committed, the journal's copy
    of its payload goes."""
    with short_tmpdir() as root:
        backend = _make("s3", request, root)
        proxy = FaultProxy(backend.target).start()
        request.addfinalizer(proxy.stop)
        env = _env(root, backend, backend.options_via(proxy.endpoint))
        proxy.set("refuse")
        daemon = DaemonProc(env).wait_ready()
        request.addfinalizer(daemon.stop)
        task_id = run_py(env, REPORT).stdout.split()[-1]
        body = _wait_state(env, "big", {"pending", "uploading"})
        payload = body["raw"]["data"]
        assert json.loads(payload) == BIG and 4096 < len(payload) <= 65536
        assert body["sha256"] == hashlib.sha256(payload).hexdigest()
        assert body["size"] == len(payload) and body["blobs"] == [[body["sha256"], len(payload)]]
        assert list((env.spool / "blobs").iterdir()) == []  # no file for it in the spool
        # another process on the node reads it back while S3 is down: from the journal
        read = run_py(env, f"import sys; sys.argv = ['r', {task_id!r}]\n{READ}", timeout=60)
        assert json.loads(read.stdout.splitlines()[-1]) == BIG

        daemon.kill()  # the journal is all there is of it now
        daemon = DaemonProc(env).wait_ready()
        request.addfinalizer(daemon.stop)
        proxy.set("pass")
        with Conn(env.socket, timeout=100) as c:
            c.hello()
            reply = c.call("wait", timeout=90)
            assert reply.get("ok") and reply["failed"] == 0, reply
        state, body = _journaled(env, "big")
        assert state == "committed" and "data" not in body["raw"]  # sent: dropped
        assert list((env.spool / "blobs").iterdir()) == []
        daemon.stop()

        # from storage alone (another machine): the same bytes under the same hash
        (root / "elsewhere").mkdir()
        direct = _env(root / "elsewhere", backend, backend.options)
        read = run_py(direct, f"import sys; sys.argv = ['r', {task_id!r}]\n{READ}", timeout=60)
        assert json.loads(read.stdout.splitlines()[-1]) == BIG
        cached = list(Path(root / "elsewhere" / "cache").rglob(body["sha256"]))
        assert cached and hashlib.sha256(cached[0].read_bytes()).hexdigest() == body["sha256"]
