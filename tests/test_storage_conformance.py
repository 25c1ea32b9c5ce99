"""One conformance suite for every storage backend, against real servers on loopback:
file (a folder), s3 (SeaweedFS), gs (fake-gcs-server), azure (Azurite).

Faults are injected below our code with tests/faultproxy.py, never by mocking."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from artisync.daemon.storage.azure import AzureStorage
from artisync.daemon.storage.base import (
    AccessDenied,
    IntegrityError,
    NotFound,
    ObjectInfo,
    PermanentStorageError,
    Storage,
    TransientStorageError,
    open_storage,
)
from artisync.daemon.storage.file import FileStorage
from artisync.daemon.storage.gs import GSStorage
from artisync.daemon.storage.retry import RetryingStorage, RetryPolicy, retry_transient
from artisync.daemon.storage.s3 import S3Storage
from tests.faultproxy import FaultProxy
from tests.servers import FakeGCS, find_fake_gcs
from tests.storage_fixtures import Backend, missing_server

T = TypeVar("T")
MiB = 1024 * 1024
NETWORKED = ["s3", "gs", "azure"]

# Conformance, checked by mypy: each backend (and the retry wrapper) is a Storage.
_file: Storage = FileStorage("/nonexistent")
_s3: Storage = S3Storage("bucket")
_gs: Storage = GSStorage("bucket")
_azure: Storage = AzureStorage("container", client_args={})
_retrying: Storage = RetryingStorage(_file)

# Small parts, so multipart / block / chunked uploads are cheap to exercise.
SMALL_PARTS: dict[str, dict[str, Any]] = {
    "file": {},
    "s3": {"part_size": 5 * MiB, "multipart_threshold": 5 * MiB},  # S3's minimum part
    "gs": {"part_size": 256 * 1024, "multipart_threshold": 256 * 1024},  # GCS granule
    "azure": {"part_size": 256 * 1024, "multipart_threshold": 256 * 1024},
}
LARGE_SIZE = {"file": 3 * MiB, "s3": 11 * MiB + 123, "gs": MiB + 4321, "azure": MiB + 4321}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro, debug=True)


def write_file(path: Path, size: int, seed: int = 0) -> str:
    """Deterministic content that differs in every 64 KiB block; returns its sha256."""
    base = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    blocks = (base[:-8] + n.to_bytes(8, "big") for n in range(size // len(base) + 1))
    data = b"".join(blocks)[:size]  # a misplaced or repeated part cannot go unnoticed
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


async def keys(storage: Storage, prefix: str = "") -> list[str]:
    return [info.key async for info in storage.list(prefix)]


def test_every_backend_is_a_storage() -> None:
    for storage in (_file, _s3, _gs, _azure, _retrying):
        assert isinstance(storage, Storage)
    assert [s.scheme for s in (_file, _s3, _gs, _azure, _retrying)] == [
        "file",
        "s3",
        "gs",
        "azure",
        "file",
    ]


# -- the data path ----------------------------------------------------------------------


def test_put_head_get_round_trip(backend: Backend, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    digest = write_file(src, 200_000)

    async def go() -> None:
        async with backend.opened() as s:
            info = await s.put("objects/ab/x.bin", src, size=200_000, sha256=digest)
            assert info == ObjectInfo("objects/ab/x.bin", 200_000, digest)
            head = await s.head("objects/ab/x.bin")
            assert head is not None and head.size == 200_000
            if backend.name != "file":  # cloud backends record the sha256 with the object
                assert head.sha256 == digest
            dest = tmp_path / "out" / "x.bin"
            got = await s.get("objects/ab/x.bin", dest)
            assert (got.size, got.sha256) == (200_000, digest)
            assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
            assert os.listdir(dest.parent) == ["x.bin"]  # no temp file left behind
            assert await s.get_bytes("objects/ab/x.bin") == src.read_bytes()

    run(go())


def test_put_bytes_and_overwrite(backend: Backend) -> None:
    async def go() -> None:
        async with backend.opened() as s:
            first = await s.put_bytes("tasks/t1/task.json", b'{"v": 1}')
            assert first.sha256 == hashlib.sha256(b'{"v": 1}').hexdigest()
            await s.put_bytes("tasks/t1/task.json", b'{"v": 2, "more": true}')
            assert await s.get_bytes("tasks/t1/task.json") == b'{"v": 2, "more": true}'
            head = await s.head("tasks/t1/task.json")
            assert head is not None and head.size == len(b'{"v": 2, "more": true}')
            await s.put_bytes("empty", b"")
            assert await s.get_bytes("empty") == b""

    run(go())


def test_missing_key_head_none_get_not_found(backend: Backend, tmp_path: Path) -> None:
    async def go() -> None:
        async with backend.opened() as s:
            assert await s.head("nope/missing") is None
            with pytest.raises(NotFound):
                await s.get_bytes("nope/missing")
            with pytest.raises(NotFound):
                await s.get("nope/missing", tmp_path / "d" / "missing")
            assert not (tmp_path / "d" / "missing").exists()
            assert not (tmp_path / "d").exists() or os.listdir(tmp_path / "d") == []

    run(go())


def test_delete_removes_and_missing_key_is_success(backend: Backend) -> None:
    async def go() -> None:
        async with backend.opened() as s:
            await s.put_bytes("a/x", b"1")
            await s.put_bytes("a/y", b"2")
            await s.delete("a/x")
            assert await s.head("a/x") is None
            assert await keys(s, "a/") == ["a/y"]
            await s.delete("a/x")  # again: missing is fine
            await s.delete("never/was")

    run(go())


def test_delete_many_in_batches_missing_keys_are_success(backend: Backend) -> None:
    names = [f"m/{i:04d}" for i in range(1100)]  # more than one S3 batch (1,000)

    async def go() -> None:
        async with backend.opened() as s:
            gate = asyncio.Semaphore(32)

            async def put(n: str) -> None:
                async with gate:
                    await s.put_bytes(n, b"x")

            await asyncio.gather(*(put(n) for n in names), s.put_bytes("m-keep", b"k"))
            await s.delete_many([*names[:1050], "m/never", "other/never"])
            assert await keys(s, "m/") == names[1050:]
            await s.delete_many(names)  # again: those gone are fine
            assert await keys(s, "m") == ["m-keep"]
            await s.delete_many([])

    run(go())


def test_list_prefix_semantics_in_key_order(backend: Backend) -> None:
    names = ["a/b/2", "a/b/1", "a/bc", "a/c/1", "b", "ab"]

    async def go() -> None:
        async with backend.opened() as s:
            await asyncio.gather(*(s.put_bytes(n, n.encode()) for n in names))
            assert await keys(s) == sorted(names)
            assert await keys(s, "a/b") == ["a/b/1", "a/b/2", "a/bc"]
            assert await keys(s, "a/b/") == ["a/b/1", "a/b/2"]
            assert await keys(s, "a") == ["a/b/1", "a/b/2", "a/bc", "a/c/1", "ab"]
            assert await keys(s, "zz") == []
            sizes = {i.key: i.size async for i in s.list("a/c")}
            assert sizes == {"a/c/1": 5}

    run(go())


def test_list_pages_through_small_pages(backend: Backend) -> None:
    names = [f"many/{i:03d}" for i in range(23)]

    async def go() -> None:
        async with backend.opened(list_page_size=5) as s:
            await asyncio.gather(*(s.put_bytes(n, b"x") for n in names))
            await s.put_bytes("other", b"y")
            assert await keys(s, "many/") == names

    run(go())


def test_prefix_is_honoured_and_isolates(backend: Backend) -> None:
    async def go() -> None:
        async with (
            backend.opened() as s,
            backend.opened(backend.root_uri) as root,
            backend.opened(backend.root_uri + "/pre/other") as sibling,
        ):
            await s.put_bytes("k/1", b"inside")
            await sibling.put_bytes("k/2", b"beside")
            assert await keys(root) == ["pre/fix/k/1", "pre/other/k/2"]
            assert await root.get_bytes("pre/fix/k/1") == b"inside"
            assert await keys(s) == ["k/1"]
            assert await keys(sibling) == ["k/2"]
            assert await s.head("k/2") is None

    run(go())


@pytest.mark.parametrize("bad", ["../escape", "a/../b", "/abs", "a//b", "a\\b", "", "a/./b"])
def test_unsafe_keys_are_refused(backend: Backend, bad: str, tmp_path: Path) -> None:
    src = tmp_path / "f"
    digest = write_file(src, 10)

    async def go() -> None:
        async with backend.opened() as s:
            ops: list[Callable[[], Awaitable[object]]] = [
                lambda: s.put_bytes(bad, b"x"),
                lambda: s.head(bad),
                lambda: s.get_bytes(bad),
                lambda: s.delete(bad),
                lambda: s.put(bad, src, size=10, sha256=digest),
                lambda: s.get(bad, tmp_path / "o"),
            ]
            for op in ops:
                with pytest.raises(PermanentStorageError, match="unsafe|escape"):
                    await op()
            async with backend.opened(backend.root_uri) as root:
                assert await keys(root) == []  # nothing was written anywhere

    run(go())


# -- integrity --------------------------------------------------------------------------


def test_put_wrong_sha256_is_integrity_error_and_leaves_nothing(
    backend: Backend, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write_file(src, 70_000)

    async def go() -> None:
        async with backend.opened() as s:
            with pytest.raises(IntegrityError):
                await s.put("objects/x", src, size=70_000, sha256="0" * 64)
            assert await s.head("objects/x") is None
            with pytest.raises(IntegrityError):  # size disagrees with the file
                await s.put(
                    "objects/y",
                    src,
                    size=69_999,
                    sha256=hashlib.sha256(src.read_bytes()).hexdigest(),
                )
            assert await keys(s) == []

    run(go())


def test_put_bytes_with_a_wrong_sha256_is_integrity_error_and_leaves_nothing(
    backend: Backend,
) -> None:
    """Bytes sent with the hash they must have (a folder's member read from its pack):
    a mismatch is refused, by the server where it checks (S3), else by hashing."""
    data = os.urandom(70_000)
    right = hashlib.sha256(data).hexdigest()
    wrong = hashlib.sha256(data[:-1]).hexdigest()

    async def go() -> None:
        async with backend.opened() as s:
            with pytest.raises(IntegrityError):
                await s.put_bytes("objects/x", data, sha256=wrong)
            assert await keys(s) == []
            info = await s.put_bytes("objects/x", data, sha256=right)
            assert info.sha256 == right
            assert await s.get_bytes("objects/x") == data

    run(go())


def test_large_upload_in_parts_round_trips(backend: Backend, tmp_path: Path) -> None:
    size = LARGE_SIZE[backend.name]
    src = tmp_path / "big"
    digest = write_file(src, size, seed=7)

    async def go() -> None:
        async with backend.opened(**SMALL_PARTS[backend.name], part_concurrency=3) as s:
            await s.put("objects/big", src, size=size, sha256=digest)
            head = await s.head("objects/big")
            assert head is not None and head.size == size
            got = await s.get("objects/big", tmp_path / "back")
            assert got.sha256 == digest
            assert hashlib.sha256((tmp_path / "back").read_bytes()).hexdigest() == digest

    run(go())


def test_large_upload_with_wrong_sha256_commits_nothing(backend: Backend, tmp_path: Path) -> None:
    size = LARGE_SIZE[backend.name]
    src = tmp_path / "big"
    write_file(src, size, seed=8)

    async def go() -> None:
        async with backend.opened(**SMALL_PARTS[backend.name]) as s:
            with pytest.raises(IntegrityError):
                await s.put("objects/big", src, size=size, sha256="f" * 64)
            assert await s.head("objects/big") is None
            assert await keys(s) == []

    run(go())
    if backend.name == "s3":  # the multipart upload was aborted, not left to linger
        from tests.storage_fixtures import _s3_admin

        admin = _s3_admin(backend.server)
        assert admin.list_multipart_uploads(Bucket=backend.bucket).get("Uploads", []) == []
        admin.close()


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_a_lost_answer_to_starting_a_multipart_upload_leaves_no_upload_behind(
    backend: Backend, tmp_path: Path
) -> None:
    """The server starts an upload but its answer is lost: botocore asks again and gets
    a second upload id. The first, whose id nobody knows, must not stay (unfinished
    uploads are invisible, billed, and kept forever without a lifecycle rule)."""
    size = LARGE_SIZE[backend.name]
    src = tmp_path / "big"
    digest = write_file(src, size, seed=9)
    with FaultProxy(backend.target) as proxy:

        async def go() -> None:
            options = {**backend.options_via(proxy.endpoint), **SMALL_PARTS[backend.name]}
            async with backend.opened(**options) as s:
                proxy.lose_answer(b"?uploads ")  # POST /key?uploads: CreateMultipartUpload
                await s.put("objects/big", src, size=size, sha256=digest)
                got = await s.get("objects/big", tmp_path / "back")
                assert got.sha256 == digest

        run(go())
        assert proxy.faults == 1
    from tests.storage_fixtures import _s3_admin

    admin = _s3_admin(backend.server)
    assert admin.list_multipart_uploads(Bucket=backend.bucket).get("Uploads", []) == []
    admin.close()


# -- errors that need an operator --------------------------------------------------------


@pytest.mark.parametrize("backend", ["s3", "azure"], indirect=True)
def test_bad_credentials_are_access_denied(backend: Backend) -> None:
    async def go() -> None:
        async with backend.opened(**backend.bad_credentials()) as s:
            for op in (lambda: s.put_bytes("k", b"x"), lambda: s.get_bytes("k"), lambda: keys(s)):
                with pytest.raises(AccessDenied) as info:
                    await op()
                assert isinstance(info.value, PermanentStorageError)
                assert "credentials" in info.value.hint
                assert "wrong" not in str(info.value)  # never echo a secret

    run(go())


@pytest.mark.parametrize("backend", NETWORKED, indirect=True)
def test_missing_bucket_is_access_denied(backend: Backend, tmp_path: Path) -> None:
    src = tmp_path / "f"
    digest = write_file(src, 100)

    async def go() -> None:
        async with backend.opened(backend.missing_bucket_uri) as s:
            with pytest.raises(AccessDenied, match="does not exist"):
                await s.put_bytes("k", b"x")
            with pytest.raises(AccessDenied, match="does not exist"):
                await s.put("k", src, size=100, sha256=digest)
            with pytest.raises(AccessDenied):
                await keys(s)

    run(go())


@pytest.mark.parametrize("backend", NETWORKED, indirect=True)
def test_unreachable_endpoint_is_transient(backend: Backend) -> None:
    with FaultProxy(backend.target) as proxy:
        proxy.set("refuse")
        options = backend.options_via(proxy.endpoint)

        async def go() -> None:
            async with backend.opened(**options) as s:
                with pytest.raises(TransientStorageError, match="connect"):
                    await s.put_bytes("k", b"x")
                with pytest.raises(TransientStorageError):
                    await s.head("k")

        run(go())


# -- RetryingStorage through real faults ---------------------------------------------------


@pytest.mark.parametrize("backend", NETWORKED, indirect=True)
def test_retrying_storage_honours_retry_after_through_503s(backend: Backend) -> None:
    with FaultProxy(backend.target) as proxy:

        async def go() -> float:
            async with backend.opened(**backend.options_via(proxy.endpoint)) as inner:
                s = RetryingStorage(inner, RetryPolicy(initial=0.05, max_elapsed=30))
                proxy.set("503", count=2, retry_after=1)
                start = time.monotonic()
                await s.put_bytes("objects/r", b"retried")
                elapsed = time.monotonic() - start
                assert await inner.get_bytes("objects/r") == b"retried"
                return elapsed

        elapsed = run(go())
        assert proxy.faults == 2
        # the SDKs' own single retry does not wait for Retry-After, ours does at least once
        assert elapsed >= 1.0


def test_retrying_storage_does_not_retry_permanent_errors(storage_uri_factory: Any) -> None:
    backend = storage_uri_factory("s3")
    with FaultProxy(backend.target) as proxy:
        options = {**backend.bad_credentials(), "endpoint_url": proxy.endpoint}

        async def go() -> None:
            async with backend.opened(**options) as inner:
                s = RetryingStorage(inner, RetryPolicy(max_elapsed=30))
                start = time.monotonic()
                with pytest.raises(AccessDenied):
                    await s.put_bytes("k", b"x")
                assert time.monotonic() - start < 2

        run(go())
        assert proxy.connections == 1


def test_retrying_storage_gives_up_after_max_elapsed(storage_uri_factory: Any) -> None:
    backend = storage_uri_factory("s3")
    with FaultProxy(backend.target) as proxy:
        proxy.set("500")

        async def go() -> None:
            async with backend.opened(**backend.options_via(proxy.endpoint)) as inner:
                s = RetryingStorage(inner, RetryPolicy(initial=0.1, max_delay=0.3, max_elapsed=1.5))
                start = time.monotonic()
                with pytest.raises(TransientStorageError, match="InternalError"):
                    await s.get_bytes("k")
                assert 0.5 < time.monotonic() - start < 6

        run(go())
        assert proxy.faults >= 3


def test_retrying_storage_does_not_start_when_cancelled(tmp_path: Path) -> None:
    async def go() -> None:
        s = RetryingStorage(FileStorage(tmp_path))

        async def body() -> None:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # requested, not yet delivered: the write must not start
            await s.put_bytes("k", b"x")

        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(body())
        await asyncio.sleep(0.2)  # time for a stray worker thread to write

    run(go())
    assert not (tmp_path / "k").exists()


def test_a_cancellation_nobody_asked_for_is_a_dropped_connection() -> None:
    """An HTTP client that gives up on a connection the peer dropped may cancel its
    own future: the task awaiting it sees a CancelledError that no one sent it. That
    is a network error, retried; it must not end the daemon's worker (it once did,
    silently, leaving the record half-processed). A real cancellation goes through."""
    calls: list[int] = []

    async def attempt(n: int) -> str:
        calls.append(n)
        if n == 1:
            dropped = asyncio.get_running_loop().create_future()
            dropped.cancel()  # what the client does to its own request
            await dropped
        return "sent"

    async def stray() -> str:
        return await retry_transient(RetryPolicy(initial=0.01), attempt, on_retry=lambda *_: None)

    assert run(stray()) == "sent" and calls == [1, 2]

    async def cancelled() -> None:
        async def slow(n: int) -> None:
            await asyncio.sleep(30)

        task = asyncio.create_task(retry_transient(RetryPolicy(), slow, on_retry=lambda *_: None))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancelled())


@pytest.mark.parametrize("backend", ["s3", "azure"], indirect=True)
def test_retrying_list_recovers_before_first_item(backend: Backend) -> None:
    with FaultProxy(backend.target) as proxy:

        async def go() -> list[str]:
            async with backend.opened(**backend.options_via(proxy.endpoint)) as inner:
                await asyncio.gather(*(inner.put_bytes(f"l/{i}", b"x") for i in range(4)))
                proxy.drop_connections()
                proxy.set("close", count=3)
                s = RetryingStorage(inner, RetryPolicy(initial=0.05, max_elapsed=30))
                return await keys(s, "l/")

        assert run(go()) == [f"l/{i}" for i in range(4)]
        assert proxy.faults == 3


@pytest.mark.parametrize("backend", ["s3", "azure"], indirect=True)
def test_failed_part_is_resent_alone(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Connections cut in the middle of a part cost that part, never the parts that
    arrived: the first cut lands half-way through part 2, the next ones right after
    the request head, until aiohttp's and the SDK's single retries are used up and
    our own per-part retry has to step in."""
    size = LARGE_SIZE[backend.name]
    part = SMALL_PARTS[backend.name]["part_size"]
    src = tmp_path / "big"
    digest = write_file(src, size, seed=3)
    with FaultProxy(backend.target) as proxy:

        async def go() -> None:
            options = {
                **backend.options_via(proxy.endpoint),
                **SMALL_PARTS[backend.name],
                "part_concurrency": 1,
            }
            async with backend.opened(**options) as s:
                await s.head("warm-up")  # open the kept-alive connection
                proxy.drop_connections()
                proxy.reset_stats()
                proxy.set("cut", count=5, cut_after=[part + part // 2, 1024])
                await s.put("objects/big", src, size=size, sha256=digest)
                got = await s.get("objects/big", tmp_path / "back")
                assert got.sha256 == digest

        with caplog.at_level("WARNING", logger="artisync"):
            run(go())
        assert proxy.faults == 5
        assert "retrying the part" in caplog.text
        # everything once, the half part that was cut, and 4 x 1 KiB: a whole-upload
        # restart would have re-sent part 1 too
        assert size < proxy.bytes_up < size + part


def test_gs_chunked_upload_survives_cut_chunks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Resumable chunks go to the session URL, so the proxy is fake-gcs-server's external
    URL. Two cuts beat aiohttp's single retry; our chunk retry then asks the session how
    much it holds. (fake-gcs-server answers that status query by finishing the upload
    short, which we detect, delete, and retry as a whole; real GCS answers 308.)"""
    binary = find_fake_gcs() or missing_server("fake-gcs-server")
    size, chunk = MiB + 4321, 256 * 1024
    src = tmp_path / "big"
    digest = write_file(src, size, seed=5)
    with FaultProxy(("127.0.0.1", 1)) as proxy:
        with FakeGCS(tmp_path / "gcs", binary=binary, external_url=proxy.endpoint) as server:
            proxy.target = ("127.0.0.1", server.port)
            server.create_bucket("cut")

            async def go() -> None:
                options = {
                    "endpoint_url": proxy.endpoint,
                    "part_size": chunk,
                    "multipart_threshold": chunk,
                }
                async with Backend("gs", "cut", "gs://cut/p", options, "gs://cut").opened() as s:
                    proxy.set("cut", count=2, cut_after=chunk // 2)
                    await RetryingStorage(s, RetryPolicy(initial=0.05, max_elapsed=30)).put(
                        "objects/big", src, size=size, sha256=digest
                    )
                    got = await s.get("objects/big", tmp_path / "back")
                    assert got.sha256 == digest
                    assert await keys(s) == ["objects/big"]

            with caplog.at_level("WARNING", logger="artisync"):
                run(go())
            assert proxy.faults == 2
            assert "gcs chunk upload failed" in caplog.text


# -- configuration from the environment ----------------------------------------------------


def test_s3_takes_credentials_and_endpoint_from_the_environment(
    storage_uri_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = storage_uri_factory("s3")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", backend.server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", backend.server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", backend.server.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")

    async def go() -> None:
        s = open_storage(backend.uri, {})
        try:
            await s.put_bytes("env/k", b"from env")
            assert await s.get_bytes("env/k") == b"from env"
        finally:
            await s.aclose()

    run(go())


def test_gs_honours_storage_emulator_host(
    storage_uri_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = storage_uri_factory("gs")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", backend.server.endpoint)

    async def go() -> None:
        s = open_storage(backend.uri, {})
        try:
            await s.put_bytes("env/k", b"emulated")
            assert await s.get_bytes("env/k") == b"emulated"
        finally:
            await s.aclose()

    run(go())


def test_azure_takes_connection_string_from_the_environment(
    storage_uri_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = storage_uri_factory("azure")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", backend.server.connection_string())
    monkeypatch.setenv("AZURE_STORAGE_API_VERSION", backend.server.api_version)

    async def go() -> None:
        s = open_storage(backend.uri, {})
        try:
            await s.put_bytes("env/k", b"azure env")
            assert await s.get_bytes("env/k") == b"azure env"
        finally:
            await s.aclose()

    run(go())


def test_a_killed_batch_write_is_found_by_its_folder(tmp_path: Path) -> None:
    """A batch of versions is named at random, so a daemon killed while writing one
    leaves a temp file that no record's key names: a retried record of its task
    clears the task's batch folder of temp files older than this daemon's start
    (a younger one may be a live writer's), and touches nothing else."""

    from artisync.daemon.storage import open_storage
    from artisync.protocol import batch_key, batch_prefix

    task = "a" * 32
    st = open_storage(str(tmp_path / "store"), {})
    folder = tmp_path / "store" / batch_prefix(task)
    folder.mkdir(parents=True)
    name = Path(batch_key(task, 1.0, "0123456789abcdef")).name
    old, young, done = folder / f".{name}.4c2b.tmp", folder / f".{name}.77aa.tmp", folder / name
    for p in (old, young, done):
        p.write_bytes(b"{}")
    started = time.time()
    os.utime(old, (started - 60, started - 60))
    os.utime(done, (started - 60, started - 60))
    os.utime(young, (started + 1, started + 1))
    assert asyncio.run(st.abort_incomplete(batch_prefix(task), size=None, started=started)) == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted([young.name, done.name])
