"""ClearML's StorageManager over the real backends and a real daemon: file and folder
round trips on a folder and on S3 (SeaweedFS), through the daemon and straight from
the caller (no daemon, autostart off); uploads that outlast an outage, and one that
outlasts its own process; keys that would leave their destination; archives; puts
compacted out of the journal; HTTP downloads that retry only what may heal."""

from __future__ import annotations

import hashlib
import http.server
import json
import sqlite3
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.harness import Conn, DaemonProc, Env, outbox_records, run_py, short_tmpdir
from tests.storage_fixtures import _make
from tests.test_system_service import REQUIRED, Node, node, why
from tests.users import ALICE

__all__ = ["node"]  # the system service's fixture (a shared daemon with real users)

ROUND_TRIP = """
import hashlib, os, sys
from pathlib import Path
from artisync import StorageManager as SM
base, other, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
src = work / "model.bin"
src.write_bytes(os.urandom(3 * 2**20))
assert SM.upload_file(str(src), f"{base}/models/model.bin") == f"{base}/models/model.bin"
assert SM.exists_file(f"{base}/models/model.bin") and not SM.exists_file(f"{base}/models/none")
assert SM.get_file_size_bytes(f"{base}/models/model.bin") == 3 * 2**20
copy = SM.get_local_copy(f"{base}/models/model.bin")
assert Path(copy).read_bytes() == src.read_bytes()
assert Path(copy).name.endswith("model.bin"), copy
folder = work / "data"
(folder / "sub").mkdir(parents=True)
(folder / "a.txt").write_text("a")
(folder / "skip.tmp").write_text("not this one")
(folder / "sub" / "b.csv").write_text("x,y\\n1,2\\n")
SM.upload_folder(str(folder), f"{other}/datasets/d1", match_wildcard="*.[tc][xs][tv]")
assert sorted(SM.list(f"{other}/datasets/d1")) == ["a.txt", "sub/b.csv"]
assert SM.list(f"{other}/datasets/d1", return_full_path=True)[0] == f"{other}/datasets/d1/a.txt"
out = SM.download_folder(f"{other}/datasets/d1", str(work / "back"))
assert (Path(out) / "sub" / "b.csv").read_text() == "x,y\\n1,2\\n"
only = SM.download_folder(f"{other}/datasets/d1", str(work / "csv"), match_wildcard="*.csv")
assert sorted(str(p.relative_to(only)) for p in Path(only).rglob("*") if p.is_file()) == [
    "sub/b.csv"
]
got = SM.download_file(f"{base}/models/model.bin", str(work / "dl"))
assert hashlib.sha256(Path(got).read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
print("ok")
"""


def _env(root: Path, backend, options) -> Env:  # type: ignore[no-untyped-def]
    env = Env(root, backend.uri)
    if backend.name != "file":
        lines = [f"[storage.{backend.name}]"] + [
            f"{k} = {json.dumps(v)}" for k, v in options.items()
        ]
        env.config.write_text("\n".join(lines) + "\n")
    return env


def _puts(env: Env) -> list[tuple[str, str]]:
    """(state, key) of every put the daemon journaled."""
    with sqlite3.connect(env.spool / "journal.db") as db:
        return sorted(
            (state, name)
            for state, name in db.execute("SELECT state, name FROM records WHERE kind='put'")
        )


def _wait_idle(env: Env, timeout: float = 90) -> None:
    with Conn(env.socket, timeout=timeout + 10) as c:
        c.hello()
        reply = c.call("wait", timeout=timeout)
        assert reply.get("ok") and reply["failed"] == 0, reply


@pytest.mark.parametrize(
    ("name", "via"), [("file", "daemon"), ("s3", "daemon"), ("file", "direct")]
)
def test_file_and_folder_round_trip(name: str, via: str, request: pytest.FixtureRequest) -> None:
    with short_tmpdir() as root:
        backend = _make(name, request, root)
        env = _env(root, backend, backend.options)
        daemon = DaemonProc(env).wait_ready() if via == "daemon" else None
        try:
            other = backend.root_uri + "/elsewhere"  # not under the default destination
            argv = [backend.uri, other, str(root)]
            code = f"import sys; sys.argv = ['t', *{argv!r}]\n" + ROUND_TRIP
            assert run_py(env, code).stdout.split()[-1] == "ok"
        finally:
            if daemon is not None:
                daemon.stop()
        if via == "daemon":  # it went through the spool and the journal
            assert _puts(env) == sorted(
                [
                    ("committed", f"{backend.uri}/models/model.bin"),
                    ("committed", f"{other}/datasets/d1/a.txt"),
                    ("committed", f"{other}/datasets/d1/sub/b.csv"),
                ]
            )
        else:
            assert not (env.spool / "journal.db").exists()


@pytest.mark.parametrize("via", ["direct", "daemon"])
def test_upload_file_outlasts_an_outage(via: str, request: pytest.FixtureRequest) -> None:
    """The endpoint refuses connections for 4 s; upload_file returns once it is back,
    whether the daemon uploads it or (no daemon, autostart off) the caller does."""
    with short_tmpdir() as root:
        backend = _make("s3", request, root)
        proxy = FaultProxy(backend.target).start()
        request.addfinalizer(proxy.stop)
        env = _env(root, backend, backend.options_via(proxy.endpoint))
        daemon = DaemonProc(env).wait_ready() if via == "daemon" else None
        if daemon is not None:
            request.addfinalizer(daemon.stop)
        proxy.set("refuse")
        threading.Timer(4.0, proxy.set, ("pass",)).start()
        code = f"""
            import os, time
            from artisync import StorageManager
            src = {str(root / "f.bin")!r}
            open(src, "wb").write(os.urandom(100_000))
            t0 = time.monotonic()
            StorageManager.upload_file(src, {backend.uri + "/up/f.bin"!r})
            print(time.monotonic() - t0)
        """
        took = float(run_py(env, code, timeout=120).stdout.split()[-1])
        assert took >= 3.0  # it waited through the outage, it did not fail
        (root / "d").mkdir()
        direct = _env(root / "d", backend, backend.options)
        check = f"""
            from artisync import StorageManager
            print(StorageManager.get_file_size_bytes({backend.uri + "/up/f.bin"!r}))
        """
        assert run_py(direct, check).stdout.split()[-1] == "100000"


def test_upload_without_waiting_outlives_the_outage_and_its_process(
    request: pytest.FixtureRequest,
) -> None:
    """S3 is down; upload_file(wait_for_upload=False) returns at once, three times for
    one URL (a checkpoint rewritten), the process deletes its files and exits; the
    server comes back and the newest bytes land at the URL."""
    with short_tmpdir() as root:
        backend = _make("s3", request, root)
        proxy = FaultProxy(backend.target).start()
        request.addfinalizer(proxy.stop)
        env = _env(root, backend, backend.options_via(proxy.endpoint))
        daemon = DaemonProc(env).wait_ready()
        request.addfinalizer(daemon.stop)
        proxy.set("refuse")
        url = backend.uri + "/ckpt/latest.bin"
        code = f"""
            import hashlib, os, time
            from artisync import StorageManager
            src = {str(root / "latest.bin")!r}
            t0 = time.monotonic()
            for i in range(3):
                data = os.urandom(300_000)
                open(src, "wb").write(data)
                StorageManager.upload_file(src, {url!r}, wait_for_upload=False)
            os.remove(src)  # the spool has its own copies
            print(time.monotonic() - t0, hashlib.sha256(data).hexdigest())
        """
        took, digest = run_py(env, code, timeout=60).stdout.split()[-2:]
        assert float(took) < 10  # it did not wait for the storage
        time.sleep(1.0)  # the process is gone, the storage still down
        assert [state for state, _ in _puts(env)] != ["committed"] * 3
        proxy.set("pass")
        _wait_idle(env)
        assert [state for state, _ in _puts(env)] == ["committed"] * 3
        (root / "d").mkdir()
        direct = _env(root / "d", backend, backend.options)
        back = run_py(
            direct, f"from artisync import StorageManager as S; print(S.get_local_copy({url!r}))"
        )
        got = Path(back.stdout.split()[-1]).read_bytes()
        assert hashlib.sha256(got).hexdigest() == digest  # the newest of the three


def test_upload_with_no_daemon_waits_in_the_outbox(request: pytest.FixtureRequest) -> None:
    """No daemon, autostart off: wait_for_upload=False leaves the file in the spool's
    outbox (no thread in the caller); the next daemon uploads it."""
    with short_tmpdir() as root:
        backend = _make("file", request, root)
        env = _env(root, backend, backend.options)
        url = f"{backend.uri}/late/f.bin"
        code = f"""
            import os
            from artisync import StorageManager
            open("f.bin", "wb").write(b"x" * 200_000)
            StorageManager.upload_file("f.bin", {url!r}, wait_for_upload=False)
            os.remove("f.bin")
        """
        run_py(env, code)
        assert [r["kind"] for r in outbox_records(env.spool)] == ["put"]
        assert not Path(url).exists()
        daemon = DaemonProc(env).wait_ready()
        try:
            _wait_idle(env)
        finally:
            daemon.stop()
        assert Path(url).read_bytes() == b"x" * 200_000


def test_a_key_that_would_leave_its_destination_is_refused(
    request: pytest.FixtureRequest,
) -> None:
    with short_tmpdir() as root:
        backend = _make("file", request, root)
        env = _env(root, backend, backend.options)
        daemon = DaemonProc(env).wait_ready()
        request.addfinalizer(daemon.stop)
        base = backend.uri
        code = f"""
            from artisync import StorageManager
            open("f.bin", "wb").write(b"data")
            for url in [
                {base + "/a/../../escaped.bin"!r},
                {base + "/tasks/" + "a" * 32 + "/task.json"!r},
                {base + "/prune/sweeping/fake.json"!r},  # would hold every writer back
            ]:
                for wait in (True, False):
                    try:
                        StorageManager.upload_file("f.bin", url, wait_for_upload=wait)
                        print("ACCEPTED", url)
                    except ValueError as exc:
                        print("refused:", exc)
        """
        lines = run_py(env, code).stdout.splitlines()
        assert len(lines) == 6 and all(line.startswith("refused:") for line in lines), lines
        assert "'..'" in lines[0] and "must stay under its destination" in lines[0]
        assert "artisync's own layout" in lines[2] and "artisync's own layout" in lines[4]
        # the daemon holds a record sent past the SDK to the same rules
        record = {
            "kind": "put",
            "record_id": "1" * 32,
            "task_id": "2" * 32,
            "created": time.time(),
            "dest": base,
            "host": "h",
            "user": "u",
            "pid": 1,
            "key": "../escaped.bin",
            "raw": {"codec": "stored", "size": 4, "data": b"data"},
        }
        with Conn(env.socket) as c:
            c.hello()
            reply = c.call("submit", record=record)
        assert not reply["ok"] and "'..'" in reply["message"], reply
        assert not list(Path(root).rglob("escaped.bin"))
        assert _puts(env) == []


def test_get_local_copy_extracts_archives_only(request: pytest.FixtureRequest) -> None:
    """data.csv.gz comes back as it is; a .tar.gz is extracted; both live in the local
    object cache (the one cache_limit bounds)."""
    with short_tmpdir() as root:
        backend = _make("file", request, root)
        env = _env(root, backend, backend.options)
        store = Path(backend.uri)
        store.mkdir(parents=True)
        (store / "data.csv.gz").write_bytes(b"\x1f\x8b not really gzip")
        (root / "inner.txt").write_text("inside")
        with tarfile.open(store / "bundle.tar.gz", "w:gz") as tar:
            tar.add(root / "inner.txt", arcname="inner.txt")
        code = f"""
            from artisync import StorageManager as SM
            print(SM.get_local_copy({str(store / "data.csv.gz")!r}))
            print(SM.get_local_copy({str(store / "bundle.tar.gz")!r}))
            print(SM.get_local_copy({str(store / "bundle.tar.gz")!r}, extract_archive=False))
        """
        gz, extracted, bundle = map(Path, run_py(env, code).stdout.split())
        cache = root / "cache" / "artisync" / "objects"
        assert gz.parent == cache and gz.name.endswith(".data.csv.gz")
        assert gz.read_bytes() == b"\x1f\x8b not really gzip"
        assert extracted.parent == cache and (extracted / "inner.txt").read_text() == "inside"
        assert bundle.parent == cache and bundle.name.endswith(".bundle.tar.gz")


@pytest.mark.skipif(why is not None and not REQUIRED, reason=str(why))
def test_a_shared_daemon_takes_puts_to_allowed_destinations_only(node: Node) -> None:
    alice = node.trainer(ALICE)
    res = alice.py(
        f"""
        import os
        from artisync import StorageManager
        open("f.bin", "wb").write(os.urandom(100_000))
        StorageManager.upload_file("f.bin", {str(node.storage / "shared" / "f.bin")!r})
        print("stored")
        try:
            StorageManager.upload_file("f.bin", {str(node.base / "elsewhere" / "f.bin")!r})
            print("ACCEPTED")
        except Exception as exc:
            print("refused:", type(exc).__name__, exc)
        """
    )
    lines = res.stdout.splitlines()
    assert lines[0] == "stored", res.stdout + res.stderr
    assert lines[1].startswith("refused: Refused") and "allowed_destinations" in lines[1]
    assert (node.storage / "shared" / "f.bin").read_bytes() == (alice.home / "f.bin").read_bytes()
    assert not (node.base / "elsewhere").exists()


def test_committed_puts_are_compacted_and_still_counted(request: pytest.FixtureRequest) -> None:
    """Past ``journal_keep`` committed puts leave the journal (marking no task), and
    status still counts them as committed."""
    with short_tmpdir() as root:
        backend = _make("file", request, root)
        env = _env(root, backend, backend.options)
        daemon = DaemonProc(env).wait_ready()
        try:
            code = f"""
                from artisync import StorageManager
                open("f.bin", "wb").write(b"x" * 100_000)
                for i in range(2):
                    StorageManager.upload_file("f.bin", {backend.uri + "/f.bin"!r})
            """
            run_py(env, code)
            assert [state for state, _ in _puts(env)] == ["committed"] * 2
        finally:
            daemon.stop()
        time.sleep(1.5)
        daemon = DaemonProc(env, ARTISYNC_JOURNAL_KEEP="1").wait_ready()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _puts(env):
                time.sleep(0.2)
            with Conn(env.socket) as c:
                c.hello()
                status = c.call("status")["status"]
        finally:
            daemon.stop()
        assert _puts(env) == []
        assert status["committed"]["records"] == 2, status
        with sqlite3.connect(env.spool / "journal.db") as db:
            assert db.execute("SELECT count(*) FROM compacted").fetchone()[0] == 0


class _Flaky(http.server.BaseHTTPRequestHandler):
    """/flaky answers 503 twice (Retry-After: 0), then its bytes; /secret 403; else 404."""

    hits: dict[str, int] = {}

    def do_GET(self) -> None:
        n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        status = {"/flaky/data.bin": 503 if n <= 2 else 200, "/secret/x.bin": 403}
        code = status.get(self.path, 404)
        self.send_response(code)
        body = b"payload" if code == 200 else b""
        self.send_header("Content-Length", str(len(body)))
        if code == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_http_downloads_retry_only_what_may_heal() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with short_tmpdir() as root:
            env = Env(root)
            base = f"http://127.0.0.1:{server.server_address[1]}"
            code = f"""
                import time
                from artisync import StorageManager as SM
                print(open(SM.get_local_copy({base + "/flaky/data.bin"!r}), "rb").read())
                for path in ("/secret/x.bin", "/gone/x.bin"):
                    t0 = time.monotonic()
                    try:
                        SM.download_file({base!r} + path, "dl")
                    except Exception as exc:
                        print(type(exc).__name__, round(time.monotonic() - t0))
            """
            out = run_py(env, code, ARTISYNC_WAIT_TIMEOUT="60").stdout.split()
        assert out == ["b'payload'", "AccessDenied", "0", "NotFound", "0"], out
        assert _Flaky.hits["/flaky/data.bin"] == 3 and _Flaky.hits["/secret/x.bin"] == 1
    finally:
        server.shutdown()
