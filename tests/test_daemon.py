"""The daemon as a real process on a real Unix socket, with the file backend."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import stat
import struct
import time

import msgpack

from artisync.protocol import MAGIC, Spool, artifact_prefix, encode, object_key
from tests.harness import Conn, DaemonProc, Env, outbox_records, run_py, stored_objects
from tests.records import artifact_record, task_record


def _journal_rows(env: Env) -> list[tuple[str, str]]:
    db = sqlite3.connect(env.spool / "journal.db")
    try:
        return db.execute("SELECT record_id, state FROM records ORDER BY seq").fetchall()
    finally:
        db.close()


def test_ack_means_durable_then_committed(env: Env) -> None:
    d = DaemonProc(env).wait_ready()
    spool = Spool(env.spool)
    rec = artifact_record(spool, str(env.storage), b"payload-1" * 1000)
    with Conn(env.socket) as c:
        c.hello()
        reply = c.call("submit", record=rec)
    assert reply["ok"] is True and reply["duplicate"] is False
    d.kill()  # no chance to do anything after the ack
    assert (rec["record_id"], rec["record_id"]) and rec["record_id"] in dict(_journal_rows(env))
    d2 = DaemonProc(env, "--exit-when-idle")
    assert d2.wait_exit(60) == 0, d2.output()
    assert dict(_journal_rows(env))[rec["record_id"]] == "committed"
    obj = env.storage / object_key(rec["sha256"])
    assert hashlib.sha256(obj.read_bytes()).hexdigest() == rec["sha256"]
    versions = list((env.storage / artifact_prefix(rec["task_id"], "a")).iterdir())
    assert len(versions) == 1
    assert json.loads(versions[0].read_text())["sha256"] == rec["sha256"]


def test_socket_is_private_and_peer_recorded(daemon: DaemonProc, env: Env) -> None:
    mode = stat.S_IMODE(os.stat(env.socket).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(env.spool).st_mode) == 0o700
    rec = task_record(str(env.storage))
    rec["pid"] = 1  # what the peer claims is not what is recorded
    with Conn(env.socket) as c:
        c.hello()
        assert c.call("submit", record=rec)["ok"]
    db = sqlite3.connect(env.spool / "journal.db")
    uid, pid = db.execute("SELECT peer_uid, peer_pid FROM records").fetchone()
    db.close()
    assert (uid, pid) == (os.getuid(), os.getpid())


def test_offline_first_outbox_then_daemon(env: Env) -> None:
    run_py(
        env,
        """
        from artisync import Task
        t = Task.init(project_name="offline", task_name="run")
        t.upload_artifact("d", {"a": 1})
        t.upload_artifact("s", "some text")
        t.close()
    """,
    )
    assert len(outbox_records(env.spool)) == 4  # started, two artifacts, closed
    assert stored_objects(env.storage) == {}
    d = DaemonProc(env, "--exit-when-idle")
    assert d.wait_exit(60) == 0, d.output()
    assert outbox_records(env.spool) == []
    assert list((env.spool / "outbox").iterdir()) == []  # its log read, and removed
    out = run_py(
        env,
        """
        from artisync import Task
        t = Task.get_task(project_name="offline", task_name="run")
        print(t.status, t.artifacts["d"].get(), t.artifacts["s"].get())
    """,
    )
    assert out.stdout.split() == ["completed", "{'a':", "1}", "some", "text"]


def test_same_payload_stored_once(daemon: DaemonProc, env: Env) -> None:
    spool = Spool(env.spool)
    data = os.urandom(300_000)
    recs = [
        artifact_record(spool, str(env.storage), data, name=n, task_id=t)
        for n, t in (("one", "a" * 32), ("two", "a" * 32), ("one", "b" * 32))
    ]
    with Conn(env.socket) as c:
        c.hello()
        for rec in recs:
            assert c.call("submit", record=rec)["ok"]
        assert c.call("wait", timeout=30)["ok"]
    assert stored_objects(env.storage) == {recs[0]["sha256"]: len(data)}
    db = sqlite3.connect(env.spool / "journal.db")
    assert db.execute("SELECT count(*) FROM objects").fetchone()[0] == 1
    db.close()


def test_bad_frames_and_messages_do_not_hurt_other_clients(daemon: DaemonProc, env: Env) -> None:
    good = Conn(env.socket)
    good.hello()
    # unknown op and wrong field types: an error reply, and the connection stays usable
    with Conn(env.socket) as c:
        c.hello()
        r = c.call("explode")
        assert r["ok"] is False and r["error"] == "invalid"
        r = c.call("submit", record={"kind": "artifact", "record_id": 5})
        assert r["ok"] is False and "record" in r["message"]
        r = c.call("wait", timeout="soon")
        assert r["ok"] is False and "timeout" in r["message"]
        assert c.call("status")["ok"] is True
    # garbage bytes: an error, then the connection is closed
    with Conn(env.socket) as c:
        c.send_raw(b"\x00garbage garbage garbage")
        assert c.recv()["error"] == "protocol"
    # an oversized frame is refused from its header alone
    with Conn(env.socket) as c:
        c.send_raw(struct.pack(">BI", MAGIC, 1 << 30) + b"x" * 100)
        assert "exceeds" in c.recv()["message"]
    # a body that is not msgpack / a non-map message
    with Conn(env.socket) as c:
        c.hello()
        body = b"\xc1\xc1"
        c.send_raw(struct.pack(">BI", MAGIC, len(body)) + body)
        assert c.recv()["error"] == "protocol"
    with Conn(env.socket) as c:
        c.send_raw(encode([1, 2, 3]))  # type: ignore[arg-type]
        assert c.recv()["error"] == "invalid"
    # no hello, wrong version
    with Conn(env.socket) as c:
        assert c.call("status")["error"] == "hello"
    with Conn(env.socket) as c:
        assert c.call("hello", version=999)["error"] == "version"
    # a record naming a payload outside the spool is refused
    with Conn(env.socket) as c:
        c.hello()
        rec = artifact_record(Spool(env.spool), str(env.storage), b"x")
        rec["sha256"] = "../../etc/passwd"
        assert c.call("submit", record=rec)["ok"] is False
        rec = artifact_record(Spool(env.spool), str(env.storage), b"y")
        os.unlink(env.spool / "blobs" / rec["sha256"])
        os.symlink("/etc/passwd", env.spool / "blobs" / rec["sha256"])
        r = c.call("submit", record=rec)
        assert r["ok"] is False and "regular file" in r["message"]
    assert good.call("status")["ok"] is True  # still served
    good.sock.close()
    assert daemon.proc.poll() is None


def test_sigterm_during_uploads_then_restart_finishes(env: Env) -> None:
    spool = Spool(env.spool)
    d = DaemonProc(env, ARTISYNC_CONCURRENCY="2").wait_ready()
    recs = [
        artifact_record(spool, str(env.storage), os.urandom(2_000_000), name=f"n{i}")
        for i in range(40)
    ]
    with Conn(env.socket) as c:
        c.hello()
        for rec in recs:
            assert c.call("submit", record=rec)["ok"]
    assert d.stop(signal.SIGTERM) == 0, d.output()
    d2 = DaemonProc(env, "--exit-when-idle")
    assert d2.wait_exit(120) == 0, d2.output()
    rows = _journal_rows(env)
    assert len(rows) == len(recs) == len({r for r, _ in rows})
    assert {s for _, s in rows} == {"committed"}
    objs = stored_objects(env.storage)
    for rec in recs:
        path = env.storage / object_key(rec["sha256"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == rec["sha256"]
    assert len(objs) == len(recs)


def test_half_written_temp_is_never_uploaded_and_is_cleaned(env: Env) -> None:
    spool = Spool(env.spool).ensure()
    dead = env.spool / "tmp" / "999999.deadbeef.part"  # no such pid: its writer is gone
    dead.write_bytes(b"half of something")
    live = env.spool / "tmp" / f"{os.getpid()}.cafe.part"  # a writer still alive
    live.write_bytes(b"being written")
    rec = artifact_record(spool, str(env.storage), b"complete" * 1000)  # an object
    spool.write_outbox(rec)
    d = DaemonProc(env, "--exit-when-idle")
    assert d.wait_exit(60) == 0, d.output()
    assert not dead.exists()
    assert live.exists()
    assert set(stored_objects(env.storage)) == {rec["sha256"]}


def test_second_daemon_on_same_spool_exits(daemon: DaemonProc, env: Env) -> None:
    d2 = DaemonProc(env)
    assert d2.wait_exit(30) == 1
    assert "already serves" in d2.output()
    with Conn(env.socket) as c:
        assert c.hello()["ok"]


def test_group_commit_shares_fsyncs(daemon: DaemonProc, env: Env) -> None:
    import threading

    spool = Spool(env.spool)
    recs = [task_record(str(env.storage), name=f"t{i}") for i in range(200)]
    conns = [Conn(env.socket) for _ in range(20)]
    for c in conns:
        c.hello()

    def send(c: Conn, chunk: list[dict]) -> None:
        for rec in chunk:
            c.sock.sendall(encode({"op": "submit", "id": 1, "record": rec}))
        for _ in chunk:
            assert c.recv()["ok"]

    threads = [threading.Thread(target=send, args=(c, recs[i::20])) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Conn(env.socket) as c:
        c.hello()
        st = c.call("status")["status"]
    assert st["group_commits"] < 200
    assert spool.root.exists()
    for c in conns:
        c.sock.close()


def test_outbox_record_is_ingested_live(daemon: DaemonProc, env: Env) -> None:
    spool = Spool(env.spool)
    rec = artifact_record(spool, str(env.storage), b"live outbox" * 500)  # an object
    spool.write_outbox(rec)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and rec["sha256"] not in stored_objects(env.storage):
        time.sleep(0.1)
    assert rec["sha256"] in stored_objects(env.storage)
    assert msgpack  # outbox records are msgpack files
