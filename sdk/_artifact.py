"""Artifact: one stored version, as ClearML's ``task.artifacts[name]`` shows it; and
:class:`ChunkedTable`, a table stored a chunk (a version) at a time."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from artisync.protocol import (
    ArtisyncError,
    IntegrityError,
    Spool,
    is_raw,
    new_id,
    object_key,
)

from ._cache import cached, forget, touch
from ._errors import UploadTimeout

# Given a sha256, return a local path holding exactly those bytes.
Locator = Callable[[str], Path]
# Given a record id and how long to wait, the record once encoded (None: no daemon)
Resolver = Callable[[str, float], dict[str, Any] | None]

ENCODE_WAIT = 30.0  # seconds a caller asking for the hash waits for the daemon to encode

# Every version of an artifact, oldest first (any process's): set by the logger module,
# which can look them up (this module sits below the lookups)
find_versions: Callable[[Artifact], list[Artifact]] | None = None


class Artifact:
    """A stored (or being stored) artifact version.

    ``get()`` returns the object; ``get_local_copy()`` a local path. Both work
    in a process with no daemon and no spool, reading from storage, and on the
    node before the daemon has encoded the artifact, from its raw snapshot.
    """

    def __init__(
        self,
        record: dict[str, Any],
        locator: Locator,
        *,
        spool: Spool | None = None,
        resolve: Resolver | None = None,
        allow_pickle: bool = False,
    ) -> None:
        self._record = record
        self._locator = locator
        self._spool = spool  # where the raw snapshot is, until the daemon encodes it
        self._resolve = resolve
        self._allow_pickle = allow_pickle  # the default of get(allow_pickle=None)

    # -- ClearML's attributes ----------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self._record["name"])

    def _settled(self, wait: float = ENCODE_WAIT) -> dict[str, Any]:
        """The record once encoded (its hash known), from the daemon if need be.

        :raises UploadTimeout: not encoded within ``wait``, or no daemon to ask."""
        if is_raw(self._record):
            done = self._resolve(self._record["record_id"], wait) if self._resolve else None
            if done is None or is_raw(done):
                raise UploadTimeout(
                    f"artifact {self.name!r} is not encoded yet (is the daemon running? see "
                    "`artisync status`); get() reads it from the spool meanwhile"
                )
            self._record = {**self._record, **done}
        return self._record

    def _raw_path(self) -> Path | None:
        if not is_raw(self._record) or self._spool is None:
            return None
        return self._spool.raw_path(self._record["record_id"])

    @property
    def type(self) -> str:
        return str(self._record["type"])

    @property
    def hash(self) -> str:
        return str(self._settled()["sha256"])

    @property
    def size(self) -> int:
        return int(self._settled()["size"])

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._record.get("metadata") or {})

    @property
    def preview(self) -> str:
        if self._record.get("preview"):
            return str(self._record["preview"])
        return str(self._settled().get("preview") or "")  # made by the daemon

    @property
    def timestamp(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(float(self._record["created"]))

    @property
    def url(self) -> str:
        rec = self._settled()
        return f"{rec['dest'].rstrip('/')}/{object_key(rec['sha256'])}"

    @property
    def format(self) -> str:
        return str(self._record["format"])

    @property
    def record(self) -> dict[str, Any]:
        return dict(self._settled())

    def __repr__(self) -> str:
        return f"<Artifact {self.name!r} {self.type}/{self.format}>"

    # -- retrieval -----------------------------------------------------------------------
    def get_local_copy(
        self,
        extract_archive: bool = True,
        raise_on_error: bool = False,
        force_download: bool = False,
    ) -> str | None:
        """A local path with the artifact's bytes (a folder for folders and wildcards).

        ``extract_archive=False`` on a folder returns a zip of it, as ClearML does.
        """
        try:
            if force_download:
                self._forget()
            return str(self._local_copy(extract_archive))
        except Exception:
            if raise_on_error:
                raise
            return None

    def _forget(self) -> None:
        """``force_download``: this version's objects leave the local cache first."""
        if is_raw(self._record):
            try:
                self._settled(wait=0.0)  # encoded already? Then its objects may be cached
            except UploadTimeout:
                return  # not encoded yet: read from the spool, nothing of it is cached
        rec = self._record
        shas = [str(b[0]) for b in rec.get("blobs") or []]
        if isinstance(rec.get("sha256"), str):
            shas.append(rec["sha256"])
        forget(shas)

    def _local_copy(self, extract_archive: bool) -> Path:
        from artisync.protocol.formats import materialize_tree

        raw = self._raw_path()
        if raw is not None:
            try:
                self._settled(wait=5.0)  # files and folders encode fast: hashing only
            except UploadTimeout:
                copy = self._copy_of_raw(raw)  # no daemon: a copy made here
                if copy is not None and (extract_archive or not copy.is_dir()):
                    return copy
                if copy is not None:  # a folder asked for as a zip, as ClearML gives it
                    return Path(shutil.make_archive(str(copy), "zip", copy))
        rec = self._settled()
        main = self._locator(rec["sha256"])
        if rec["format"] != "tree":
            ext = rec.get("extension") or ""
            if not ext:
                return main
            named = main.parent / f"{main.name}{ext}"
            if not touch(named):
                _link_or_copy(main, named)
            return named
        folder = main.parent / f"{rec['sha256']}.d"
        if not touch(folder):  # a hit is a use: the cache evicts the least recently used
            tmp = main.parent / f"{rec['sha256']}.d.tmp{threading.get_ident()}"
            shutil.rmtree(tmp, ignore_errors=True)
            materialize_tree(main, self._member_locator(main, rec["sha256"]), tmp)
            try:
                tmp.rename(folder)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # someone else finished first
        if extract_archive:
            return folder
        archive = main.parent / f"{rec['sha256']}.zip"
        if not touch(archive):
            made = shutil.make_archive(str(archive.with_suffix("")) + ".tmp", "zip", folder)
            Path(made).rename(archive)
        return archive

    def _member_locator(self, listing: Path, listing_sha: str) -> Locator:
        """A folder's small members stay in its pack in the spool until it is committed
        (see ``protocol.formats``): read from there meanwhile (checked by their hash),
        the others (and all, once the pack is collected) as any object."""
        from artisync.protocol.formats import in_pack, pack_name, read_listing, read_member

        pack = None if self._spool is None else self._spool.blob_path(pack_name(listing_sha))
        if pack is None or not pack.is_file():
            return self._locator
        members = in_pack(read_listing(listing))

        def locate(sha: str) -> Path:
            where = members.get(sha)
            if where is not None:
                offset, size = where
                # collected (so in storage), not ours to read, or torn by a power loss
                with contextlib.suppress(OSError, IntegrityError):
                    data = read_member(pack, offset, size, sha)
                    return cached(sha, lambda tmp: tmp.write_bytes(data))
            return Path(self._locator(sha))

        return locate

    def get(
        self,
        allow_pickle: bool | None = None,
        deserialization_function: Callable[[bytes], Any] | None = None,
        force_download: bool = False,
    ) -> Any:
        """The artifact as an object: DataFrame, dict, ndarray, Image, a local path...
        A chunk of a :class:`ChunkedTable`: the table up to it.

        Pickled artifacts are refused unless ``allow_pickle=True`` (or the config
        setting ``allow_pickle``): unpickling runs arbitrary code.
        """
        if force_download:
            self._forget()
        if "chunk_of" in (self._record.get("metadata") or {}) and not deserialization_function:
            return _joined(self, force_download)
        return self._get_one(allow_pickle, deserialization_function)

    def _get_one(
        self, allow_pickle: bool | None, deserialization_function: Callable[[bytes], Any] | None
    ) -> Any:
        from artisync.protocol.formats import load, load_raw

        if allow_pickle is None:
            allow_pickle = self._allow_pickle
        raw = self._raw_path()
        if raw is not None and self._record["format"] != "tree" and self._record["type"] != "file":
            try:
                spec = self._record["raw"]
                if deserialization_function is not None and spec["codec"] == "stored":
                    data = spec.get("data")
                    return deserialization_function(raw.read_bytes() if data is None else data)
                if deserialization_function is None:
                    obj = load_raw(self._record, raw, allow_pickle=allow_pickle)
                    # still there once read: it was not recycled, so not written over
                    # while read (protocol._recycle); else it was encoded meanwhile
                    if spec.get("data") is not None or raw.exists():
                        return obj
            except FileNotFoundError:
                pass  # encoded meanwhile: read the stored form
        if self._record["format"] == "tree" or self._record["type"] == "file":
            return str(self._local_copy(True))
        rec = self._settled()
        path = self._locator(rec["sha256"])
        return load(
            rec["type"],
            rec["format"],
            path,
            allow_pickle=allow_pickle,
            deserialization_function=deserialization_function,
        )

    def _copy_of_raw(self, raw: Path) -> Path | None:
        """A file or folder made from the raw snapshot (no daemon has encoded it)."""
        from artisync.protocol.formats import copy_leased, materialize_pack

        rec = self._record
        folder = Path(tempfile.mkdtemp(prefix="artisync-"))
        try:
            if rec["format"] == "tree":
                return materialize_pack(rec, raw, folder / "tree")
            if rec["type"] == "file":
                named = folder / f"artifact{rec.get('extension') or ''}"
                data, leased = rec["raw"].get("data"), rec["raw"].get("leased")
                if data is None and leased is not None and not raw.exists():
                    if not copy_leased(leased, named):  # the daemon's copy never landed,
                        raise FileNotFoundError(raw)  # and the file changed since
                elif data is None:
                    _link_or_copy(raw, named)
                    if not raw.exists():  # encoded and recycled while copied
                        raise FileNotFoundError(raw)
                else:
                    named.write_bytes(data)
                return named
        except FileNotFoundError:  # encoded meanwhile
            pass
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _link_or_copy(src: Path, dst: Path) -> None:
    # a copy, not a hard link: a user editing the returned file must not alter the cache
    from artisync.protocol import copy_file_fast

    tmp = dst.with_name(f".{dst.name}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as out:
        copy_file_fast(src, out)
    tmp.replace(dst)


class ChunkedTable:
    """A table (a dict of columns) stored as chunks: each a version of artifact ``name``
    holding the rows appended since the chunk before, so storing costs the new rows only.
    A chunk's metadata: ``chunk_of`` (this table's id), ``chunk`` (0, 1, ...) and ``rows``
    (up to it). Its ``get()`` joins chunks 0 to it, in order (``get_local_copy()``: its own
    rows). Append to :attr:`rows` from any thread; one thread at a time calls :meth:`store`.
    """

    def __init__(self, name: str, columns: tuple[str, ...]) -> None:
        self.name, self.columns, self.id = name, columns, new_id()
        self.rows: collections.deque[tuple[Any, ...]] = collections.deque()
        self.chunk = 0  # the next chunk's number
        self.total = 0  # rows stored so far

    def store(self, task: Any, **metadata: Any) -> bool:
        """The rows waiting as the next chunk, through ``task.upload_artifact``; if that
        raises, they stay queued for the next call. False if no row waits."""
        q = self.rows
        rows = [q.popleft() for _ in range(len(q))]  # appends may go on meanwhile
        if not rows:
            return False
        cols = dict(zip(self.columns, map(list, zip(*rows, strict=True)), strict=True))
        total = self.total + len(rows)
        meta = {"chunk_of": self.id, "chunk": self.chunk, "rows": total, **metadata}
        first = ", ".join(sorted(set(map(str, cols[self.columns[0]])))[:10])
        preview = f"{self.name}: rows {self.total + 1}-{total} of {first}"
        try:
            task.upload_artifact(self.name, cols, metadata=meta, preview=preview)
        except BaseException:
            q.extendleft(reversed(rows))
            raise
        self.chunk, self.total = self.chunk + 1, total
        with _chunks_lock:
            _chunks.setdefault(self.id, []).append(task.artifacts[self.name])
        return True


_chunks: dict[str, list[Artifact]] = {}  # chunk_of -> the chunks this process stored
_chunks_lock = threading.Lock()


def _joined(art: Artifact, force_download: bool) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for part in _chunks_upto(art):
        if force_download and part is not art:
            part._forget()
        for column, values in part._get_one(False, None).items():
            out.setdefault(column, []).extend(values)
    return out


def _chunks_upto(art: Artifact) -> list[Artifact]:
    of, upto = str(art.metadata["chunk_of"]), int(art.metadata["chunk"])
    with _chunks_lock:
        mine = _chunks.get(of, [])[: upto + 1]
    if len(mine) == upto + 1:
        return mine
    found: dict[int, Artifact] = {}
    for version in find_versions(art) if find_versions else []:
        if version.metadata.get("chunk_of") == of:
            found.setdefault(int(version.metadata["chunk"]), version)
    missing = [i for i in range(upto + 1) if i not in found]
    if missing:
        raise ArtisyncError(
            f"{art.name!r}: chunks {missing[:10]} of {upto + 1} are missing (pruned by "
            "keep_versions?); artifact.get_local_copy() has a chunk's own rows"
        )
    return [found[i] for i in range(upto + 1)]
