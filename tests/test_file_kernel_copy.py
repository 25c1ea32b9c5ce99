"""A big file to a ``file`` destination: copied by the kernel and checked span by span
against the CRC-32s taken when it was hashed (``daemon.storage.file``). Real files; the
fallback across filesystems goes through a real tmpfs."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from artisync.daemon.storage.base import IntegrityError
from artisync.daemon.storage.file import FileStorage
from artisync.protocol import CRC_SPAN, hash_file_spans
from tests.test_storage_conformance import write_file

SIZE = 2 * CRC_SPAN + 12_345  # three spans, the last one short
SHM = Path("/dev/shm")


def _flip(path: Path, at: int) -> None:
    """One byte different, the size the same."""
    with path.open("r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def _put(root: Path, src: Path, sha: str, size: int) -> None:
    asyncio.run(FileStorage(root).put("objects/big", src, size=size, sha256=sha))


def _stored(root: Path) -> list[str]:
    return (
        sorted(p.name for p in (root / "objects").iterdir()) if (root / "objects").exists() else []
    )


def test_a_file_hashed_in_spans_is_stored_whole(tmp_path: Path) -> None:
    src = tmp_path / "big"
    write_file(src, SIZE, seed=1)
    sha, size = hash_file_spans(src)
    _put(tmp_path / "store", src, sha, size)
    got = (tmp_path / "store" / "objects" / "big").read_bytes()
    assert hashlib.sha256(got).hexdigest() == sha and got == src.read_bytes()


def test_a_span_changed_after_hashing_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    """The copy is not hashed again: the span check must catch a changed byte, and
    neither the object nor its temp file stays."""
    src = tmp_path / "big"
    write_file(src, SIZE, seed=2)
    sha, size = hash_file_spans(src)
    _flip(src, CRC_SPAN + 1000)
    with pytest.raises(IntegrityError, match="span 2 changed since the file was hashed"):
        _put(tmp_path / "store", src, sha, size)
    assert _stored(tmp_path / "store") == []


def test_a_file_cut_short_after_hashing_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "big"
    write_file(src, SIZE, seed=3)
    sha, size = hash_file_spans(src)
    with src.open("r+b") as f:
        f.truncate(SIZE - 100)
    with pytest.raises(IntegrityError, match=f"{SIZE - 100} bytes, expected {SIZE}"):
        _put(tmp_path / "store", src, sha, size)
    assert _stored(tmp_path / "store") == []


@pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm: a tmpfs, another filesystem")
def test_across_filesystems_it_is_read_and_hashed_here(tmp_path: Path) -> None:
    """No kernel copy from one filesystem to another: the object is read, hashed and
    written by the backend, so a changed byte fails the SHA-256, not a span check."""
    src = SHM / f"artisync-test-{tmp_path.name}"
    try:
        write_file(src, SIZE, seed=4)
        sha, size = hash_file_spans(src)
        assert src.stat().st_dev != tmp_path.stat().st_dev
        _put(tmp_path / "store", src, sha, size)
        assert (tmp_path / "store" / "objects" / "big").read_bytes() == src.read_bytes()
        _flip(src, 10)
        with pytest.raises(IntegrityError, match="source does not match: sha256"):
            _put(tmp_path / "other", src, sha, size)
        assert _stored(tmp_path / "other") == []
    finally:
        src.unlink(missing_ok=True)
