"""What the daemon wrote leaves the page cache once it is on disk and sent
(``protocol._page_cache``): the stored copy in a local folder and the spool's blob.
Counted with mincore(2) on the real files, after a real daemon stored them."""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
from pathlib import Path

from artisync.daemon.storage.file import FileStorage
from artisync.protocol import DROP_MIN, Spool, hash_file_spans
from tests.harness import DaemonProc, Env, stored_objects
from tests.test_storage_conformance import write_file

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mapping it touches none)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            pages = -(-size // mmap.PAGESIZE)
            vec = ctypes.create_string_buffer(pages)
            assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec.raw)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def test_resident_pages_counts_what_was_just_written(tmp_path: Path) -> None:
    f = tmp_path / "f"
    write_file(f, 3 * DROP_MIN, seed=3)
    assert resident_pages(f) == 3 * DROP_MIN // mmap.PAGESIZE


def test_a_big_stored_file_leaves_the_cache_and_a_small_one_stays(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "store")
    for name, size in (("big", 3 * DROP_MIN + 5), ("small", DROP_MIN // 2)):
        src = tmp_path / name
        write_file(src, size, seed=size)
        sha, _ = hash_file_spans(src)
        asyncio.run(storage.put(f"objects/{name}", src, size=size, sha256=sha))
    assert resident_pages(tmp_path / "store" / "objects" / "big") == 0
    assert (
        resident_pages(tmp_path / "store" / "objects" / "small") == DROP_MIN // 2 // mmap.PAGESIZE
    )


def test_a_file_reported_and_stored_leaves_no_page_cached_behind(env: Env) -> None:
    from artisync import Task

    src = env.root / "checkpoint.bin"
    sha = write_file(src, 4 * DROP_MIN, seed=11)
    d = DaemonProc(env).wait_ready()
    try:
        task = Task.init(project_name="cache", task_name="dropped")
        task.upload_artifact("checkpoint", str(src))
        task.flush(wait_for_uploads=True, timeout=60)
        task.close()
    finally:
        d.stop()
    assert stored_objects(env.storage) == {sha: 4 * DROP_MIN}
    (stored,) = (p for p in (env.storage / "objects").rglob(sha) if p.is_file())
    blob = Spool(env.spool).blob_path(sha)
    assert blob.is_file()  # kept for reads on this node, from disk
    assert (resident_pages(stored), resident_pages(blob)) == (0, 0)
    assert resident_pages(src) == 4 * DROP_MIN // mmap.PAGESIZE  # the trainer's file stays
