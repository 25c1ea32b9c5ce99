"""Who may talk to the daemon, what it may be made to read, where names may lead,
and what never shows up in logs or status."""

from __future__ import annotations

import grp
import json
import os
import re
import sqlite3
import stat
import unicodedata
from pathlib import Path
from typing import Any

from artisync.protocol import Spool, decode_name
from tests import faults
from tests.harness import Conn, DaemonProc, Env, run_py
from tests.records import artifact_record, task_record
from tests.storage_fixtures import Backend


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_spool_socket_and_journal_are_owner_only(daemon: DaemonProc, env: Env) -> None:
    out = run_py(
        env,
        """
        import os
        from artisync import Task
        from artisync.protocol import Spool
        t = Task.init(project_name="sec", task_name="modes")
        t.upload_artifact("a", {"x": "y" * 70_000})  # a raw file, then a blob (not inline)
        art = t.artifacts["a"]
        spool = Spool(os.environ["ARTISYNC_SPOOL"])
        modes = []
        try:  # the raw snapshot, unless the daemon encoded it already
            modes.append(os.stat(spool.raw_path(art._record["record_id"])).st_mode & 0o777)
        except FileNotFoundError:
            pass
        try:  # the stored payload, unless it is uploaded and collected already
            modes.append(os.stat(spool.blob_path(art.hash)).st_mode & 0o777)
        except FileNotFoundError:
            pass
        print(*modes)
        t.close()
        """,
    )
    modes = [int(m) for m in out.stdout.split()]
    assert modes and all(m == 0o600 for m in modes), modes
    assert _mode(env.socket) == 0o600
    for d in ("", "blobs", "tmp", "outbox", "raw"):
        assert _mode(env.spool / d) == 0o700, d
    for f in env.spool.glob("journal.db*"):
        assert _mode(f) == 0o600, f.name


def test_group_mode_shares_the_socket_not_the_spool(env: Env) -> None:
    group = grp.getgrgid(os.getgid() if os.getgid() != 0 else 1)
    d = DaemonProc(env, ARTISYNC_GROUP=group.gr_name).wait_ready()
    try:
        st = os.stat(env.socket)
        assert _mode(env.socket) == 0o660 and st.st_gid == group.gr_gid
        assert _mode(env.socket.parent) == 0o750
        assert os.stat(env.socket.parent).st_gid == group.gr_gid
        for sub in ("", "blobs", "tmp", "outbox", "raw"):  # payloads reach it by descriptor
            assert _mode(env.spool / sub) == 0o700, sub
        for f in env.spool.glob("journal.db*"):
            assert _mode(f) == 0o600, f.name
    finally:
        d.stop()


def test_peer_identity_comes_from_the_kernel(daemon: DaemonProc, env: Env) -> None:
    rec = task_record(str(env.storage))
    rec.update(pid=1, user="root-pretender", host="elsewhere")
    child = run_py(
        env,
        f"""
        import os
        from tests.harness import Conn
        from pathlib import Path
        rec = {rec!r}
        with Conn(Path({str(env.socket)!r})) as c:
            c.hello()
            assert c.call("submit", record=rec)["ok"]
        print(os.getpid())
        """,
    )
    pid = int(child.stdout.split()[-1])
    db = sqlite3.connect(env.spool / "journal.db")
    uid, peer_pid = db.execute(
        "SELECT peer_uid, peer_pid FROM records WHERE record_id=?", (rec["record_id"],)
    ).fetchone()
    db.close()
    assert (uid, peer_pid) == (os.getuid(), pid)


def test_records_cannot_make_the_daemon_read_outside_the_spool(
    daemon: DaemonProc, env: Env
) -> None:
    spool = Spool(env.spool)
    secret = env.root / "secret.txt"
    secret.write_bytes(b"not for upload")
    with Conn(env.socket) as c:
        c.hello()
        # a path instead of a hash
        for bad in ("../../secret.txt", str(secret), "blobs/../x"):
            rec = artifact_record(spool, str(env.storage), b"x")
            rec["sha256"] = bad
            rec["blobs"] = [[bad, 1]]
            assert c.call("submit", record=rec)["ok"] is False
        # a blob that is a symlink, a hard link, or a folder
        for plant in ("symlink", "hardlink", "folder"):
            rec = artifact_record(spool, str(env.storage), f"payload {plant}".encode())
            blob = env.spool / "blobs" / rec["sha256"]
            blob.unlink()
            if plant == "symlink":
                blob.symlink_to(secret)
            elif plant == "hardlink":
                os.link(secret, blob)
            else:
                blob.mkdir()
            rec["size"] = rec["blobs"][0][1] = secret.stat().st_size
            reply = c.call("submit", record=rec)
            assert reply["ok"] is False and "regular file" in reply["message"], (plant, reply)
    # the same through the outbox: refused, kept aside, never uploaded
    rec = artifact_record(spool, str(env.storage), b"outbox plant")
    blob = env.spool / "blobs" / rec["sha256"]
    blob.unlink()
    blob.symlink_to(secret)
    spool.write_outbox(rec)
    link = env.spool / "outbox" / "planted.rec"
    link.symlink_to(secret)
    (env.spool / "outbox" / f"{'0' * 32}.1.log").symlink_to(secret)  # a log, never followed
    faults.wait_until(
        lambda: len(list((env.spool / "rejected").glob("*.rec"))) == 3, 30, "rejection"
    )
    stored = [p for p in env.storage.rglob("*") if p.is_file()] if env.storage.exists() else []
    assert all(p.read_bytes() != b"not for upload" for p in stored)


HOSTILE = [
    "...",
    "../../../etc/passwd",
    "a/b",
    "/abs",
    "..\\..\\win",
    "%2e%2e%2f",
    ".hidden",
    "~user",
    "e\u0301",  # NFD: the same name as "é"
    "\u00e9",
    "\uff0e\uff0e\uff0f",  # fullwidth "../"
    "\u202egnp.exe",
    "x" * 170,
    "naïve/../../über",
    "*?[]<>|:\"'",
]
REFUSED = ["", ".", "..", " ", "a\x00b", "tab\there", "x" * 200, "\u00e9" * 40]
LAYOUT = re.compile(
    r"(objects/sha256/[0-9a-f]{2}/[0-9a-f]{64}"
    r"|tasks/[0-9a-f]{32}/task\.json"
    r"|tasks/[0-9a-f]{32}/artifacts/[^/]+/\d{17}-[0-9a-f]{32}\.json"
    r"|index/(runs|folded)/[^/]+/[^/]+/\d{17}-[0-9a-f]{32}"
    r"|index/(names|tasks)/[^/]+/\d{17}-[0-9a-f]{32}"
    r"|index/all/\d{17}-[0-9a-f]{32}"
    r"|index/projects/[^/]+)\Z"
)


def _config(backend: Backend) -> str:
    if backend.name == "file":
        return ""
    lines = [f"[[storage.override]]\nmatch = {json.dumps(backend.root_uri)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in backend.options.items()]
    return "\n".join(lines) + "\n"


async def _keys(backend: Backend) -> list[str]:
    async with backend.opened() as storage:
        return [info.key async for info in storage.list("")]


def test_names_cannot_escape_their_prefix(backend: Backend, env: Env) -> None:
    import asyncio

    env.config.write_text(_config(backend))
    d = DaemonProc(env, ARTISYNC_RETRY_MAX_ELAPSED="5").wait_ready()
    spool = Spool(env.spool)
    accepted: list[dict[str, Any]] = []
    try:
        with Conn(env.socket) as c:
            c.hello()
            for i, name in enumerate(HOSTILE + REFUSED):
                task = task_record(backend.uri, project=name, name=name, task_id=f"{i:032x}")
                art = artifact_record(
                    spool, backend.uri, name.encode() + b"!", name, task["task_id"]
                )
                replies = [c.call("submit", record=task), c.call("submit", record=art)]
                if name in REFUSED:
                    assert all(r["ok"] is False for r in replies), (name, replies)
                else:
                    assert all(r["ok"] for r in replies), (name, replies)
                    accepted += [task, art]
            assert c.call("wait", timeout=120)["ok"]
    finally:
        d.stop()
    keys = asyncio.run(_keys(backend))
    assert keys and all(LAYOUT.match(k) for k in keys), [k for k in keys if not LAYOUT.match(k)]
    wanted = {unicodedata.normalize("NFC", r["name"]) for r in accepted}
    artifact_names = {decode_name(k.split("/")[3]) for k in keys if "/artifacts/" in k}
    project_names = {decode_name(k.split("/")[2]) for k in keys if k.startswith("index/projects/")}
    assert artifact_names == wanted == project_names
    if backend.name == "file":  # nothing written outside the storage folder
        root = Path(backend.uri).resolve()
        for path in Path(backend.bucket).rglob("*"):
            assert not path.is_file() or path.resolve().is_relative_to(root), path


def test_no_credentials_in_logs_or_status(seaweedfs: Any) -> None:
    from tests.harness import short_tmpdir

    with short_tmpdir() as root:
        target = faults.S3Target(seaweedfs, secret="wrong-Secret-123456")
        try:
            env = faults.make_env(root, target)
            # the real key too: doctor and errors must not echo either
            with open(env.config, "a") as f:
                f.write(f"# {'x' * 3}\n")
            spool = Spool(env.spool).ensure()
            recs = [faults.artifact(spool, target.uri, os.urandom(100), "d" * 32, "c")]
            d = DaemonProc(env, ARTISYNC_RETRY_MAX_ELAPSED="1").wait_ready()
            try:
                faults.submit_all(env, recs)
                faults.wait_until(
                    lambda: faults.status_json(env)["failed"]["records"] == 1, 60, "failure"
                )
                outputs = [
                    faults.cli(env, "status").stdout,
                    faults.cli(env, "status", "--json").stdout,
                    faults.cli(env, "doctor", target.uri).stdout,
                ]
                target.proxy.set("refuse")  # connection errors carry URLs: check them too
                target.proxy.drop_connections()
                faults.cli(env, "retry")
                faults.wait_until(lambda: not faults.status_json(env)["online"], 60, "offline")
                outputs += [
                    faults.cli(env, "status").stdout,
                    faults.cli(env, "wait", "--timeout", "1").stderr,
                ]
            finally:
                d.stop()
            text = "\n".join(outputs) + d.output()
            for secret in ("wrong-Secret-123456", seaweedfs.secret_key):
                assert secret not in text
            for marker in ("Signature=", "X-Amz-Signature", "Credential=", "Authorization"):
                assert marker not in text, marker
            assert "access denied" in outputs[0].lower()
        finally:
            target.close()
