"""A large S3 upload reads its file once: each part is checked against the CRC-32
taken in the pass that hashed the file (``artisync.protocol.hash_file_spans``), and
the server checks the same CRC-32 against what it received. Real SeaweedFS."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from artisync.daemon.storage.base import IntegrityError
from artisync.protocol import CRC_SPAN, hash_file_spans, spans_of
from tests.storage_fixtures import Backend, _s3_admin
from tests.test_storage_conformance import write_file

SIZE = 2 * CRC_SPAN + 12_345  # three parts of the default size, the last one short


def _unfinished(backend: Backend) -> list[object]:
    admin = _s3_admin(backend.server)
    try:
        return list(admin.list_multipart_uploads(Bucket=backend.bucket).get("Uploads", []))
    finally:
        admin.close()


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_a_file_hashed_in_spans_goes_up_whole(backend: Backend, tmp_path: Path) -> None:
    src = tmp_path / "big"
    write_file(src, SIZE, seed=1)
    sha, size = hash_file_spans(src)
    assert (sha, size) == (hashlib.sha256(src.read_bytes()).hexdigest(), SIZE)
    spans = spans_of(sha, size)
    assert spans is not None and len(spans) == 3

    async def go() -> None:
        async with backend.opened() as s:
            await s.put("objects/big", src, size=size, sha256=sha)
            got = await s.get("objects/big", tmp_path / "back")
            assert (got.sha256, got.size) == (sha, size)

    asyncio.run(go())
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_a_part_changed_after_hashing_is_refused_and_nothing_is_stored(
    backend: Backend, tmp_path: Path
) -> None:
    """The upload no longer hashes the whole file as it reads: a byte of the second
    part changed since the hashing pass must still be caught, and the object not
    stored (nor its multipart upload left behind)."""
    src = tmp_path / "big"
    write_file(src, SIZE, seed=2)
    sha, size = hash_file_spans(src)
    with src.open("r+b") as f:  # same size, one byte of part 2 different
        f.seek(CRC_SPAN + 1000)
        byte = f.read(1)
        f.seek(CRC_SPAN + 1000)
        f.write(bytes([byte[0] ^ 0xFF]))

    async def go() -> None:
        async with backend.opened() as s:
            with pytest.raises(IntegrityError, match="part 2 changed since the file was hashed"):
                await s.put("objects/big", src, size=size, sha256=sha)
            assert await s.head("objects/big") is None

    asyncio.run(go())
    assert _unfinished(backend) == []


def test_span_crcs_fed_in_any_pieces_are_each_spans_crc32(tmp_path: Path) -> None:
    import random
    import zlib

    from artisync.protocol import SpanCrcs

    data = random.Random(3).randbytes(3 * CRC_SPAN + 777)
    expected = tuple(zlib.crc32(data[i : i + CRC_SPAN]) for i in range(0, len(data), CRC_SPAN))
    spans = SpanCrcs()
    pos, rng = 0, random.Random(4)
    while pos < len(data):  # pieces that straddle span boundaries, and tiny ones
        n = rng.choice([1, 7, 65_536, CRC_SPAN - 5, CRC_SPAN + 9])
        spans.update(data[pos : pos + n])
        pos += n
    assert spans.crcs() == expected and len(expected) == 4


def test_an_encoded_blob_remembers_the_spans_of_the_bytes_it_wrote(tmp_path: Path) -> None:
    """An encoder's output (parquet, npz...) is hashed as it is written; its spans are
    those of the committed blob, so that its upload need not hash it again."""
    import zlib

    from artisync.protocol import Spool
    from artisync.protocol.formats._base import encode_to_blob

    spool = Spool(tmp_path / "spool").ensure()
    chunk = hashlib.sha256(b"x").digest() * 4096  # 128 KiB
    sha, size = encode_to_blob(spool, lambda f: [f.write(chunk) for _ in range(150)])
    blob = spool.blob_path(sha).read_bytes()
    assert size == len(blob) == 150 * len(chunk)
    expected = tuple(zlib.crc32(blob[i : i + CRC_SPAN]) for i in range(0, size, CRC_SPAN))
    assert spans_of(sha, size) == expected


def test_the_fast_crc32_gives_zlibs_values() -> None:
    import os
    import zlib

    from artisync.protocol import crc32

    data = os.urandom(3 * 1024 * 1024 + 7)
    view = memoryview(data)
    assert crc32(data) == zlib.crc32(data)
    assert crc32(view[5:], crc32(view[:5])) == zlib.crc32(data)  # continued, in pieces
    assert crc32(b"") == 0 and crc32(b"", 1234) == 1234
