"""CRC-32s of a file's 8 MiB spans, taken in the same pass as its SHA-256.

A large object goes to S3 as a multipart upload whose parts each carry a CRC-32
that the server checks against what it received. When those CRC-32s come from
the pass that computed the object's SHA-256 (its key), the server's check ties
what it stores to what was hashed, part by part: the upload reads the file once
and compares each part's CRC-32 with the one remembered, instead of hashing the
whole file again as it reads (a second SHA-256 pass: ~0.6 CPU-s a GiB, taken
from a machine whose CPU the upload, the server or the trainers need). A part
that changed since it was hashed fails locally, before it is sent.

The spans are remembered in this process only (the daemon hashes a blob shortly
before it uploads it), for the most recent :data:`_KEEP` blobs; an upload that
finds none (a restarted daemon, another part size) hashes as it reads, as before.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ._pieces import run_steps

CRC_SPAN = 8 * 1024 * 1024  # the default S3 part size: a span is a part
_KEEP = 256  # blobs whose spans are remembered (8 KiB of CRCs for a 64 GiB blob)
_READ = 4 * 1024 * 1024

_lock = threading.Lock()
_known: OrderedDict[str, tuple[int, ...]] = OrderedDict()


@functools.cache
def _crc32() -> Callable[[bytes | memoryview, int], int]:
    try:  # ISA-L's: 0.3 ms for 16 MiB against zlib's 2.5 (same values)
        from isal.isal_zlib import crc32
    except ImportError:  # installed without isal: zlib's, slower
        return zlib.crc32
    return crc32


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """``zlib.crc32``'s value, by the fastest implementation installed."""
    return _crc32()(data, value)


class SpanCrcs:
    """The CRC-32 of each :data:`CRC_SPAN` of a stream fed in pieces of any size."""

    def __init__(self) -> None:
        self._done: list[int] = []
        self._crc = 0
        self._filled = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        update = _crc32()
        while view:
            piece = view[: CRC_SPAN - self._filled]
            self._crc = update(piece, self._crc)
            self._filled += len(piece)
            if self._filled == CRC_SPAN:
                self._done.append(self._crc)
                self._crc, self._filled = 0, 0
            view = view[len(piece) :]

    def crcs(self) -> tuple[int, ...]:
        return (*self._done, self._crc) if self._filled else tuple(self._done)


def hash_file_spans(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, read once; the CRC-32 of each of its spans is
    remembered under the SHA-256 (see :func:`spans_of`). The CRC-32s are taken by a
    second thread (both release the GIL): the SHA-256 alone sets the pace."""
    h = hashlib.sha256()
    spans = SpanCrcs()
    size = 0
    with open(path, "rb") as f, ThreadPoolExecutor(1) as crcs:  # one worker: in order
        taken = []

        def step() -> bool:  # see protocol._pieces
            nonlocal size
            chunk = f.read(_READ)
            if not chunk:
                return False
            # the CRC thread is made by the first submit: at the priority of the
            # thread that runs this step then
            taken.append(crcs.submit(spans.update, chunk))
            h.update(chunk)
            size += len(chunk)
            return True

        run_steps(step)
        for done in taken:
            done.result()  # re-raised here, if any failed
    sha = h.hexdigest()
    remember(sha, spans.crcs())
    return sha, size


def remember(sha256: str, crcs: tuple[int, ...]) -> None:
    """Keep the spans of a blob of more than one span (a smaller one goes in one PUT)."""
    if len(crcs) < 2:
        return
    with _lock:
        _known[sha256] = crcs
        _known.move_to_end(sha256)
        while len(_known) > _KEEP:
            _known.popitem(last=False)


def spans_of(sha256: str, size: int) -> tuple[int, ...] | None:
    """The CRC-32 of each :data:`CRC_SPAN` of the blob ``sha256`` of ``size`` bytes, if
    this process hashed it with :func:`hash_file_spans` lately; else None."""
    with _lock:
        crcs = _known.get(sha256)
    if crcs is None or len(crcs) != max(1, -(-size // CRC_SPAN)):
        return None
    return crcs
