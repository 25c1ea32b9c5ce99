"""Artifact: one stored version, as ClearML's ``task.artifacts[name]`` shows it."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from artisync.protocol import object_key

# Given a sha256, return a local path holding exactly those bytes.
Locator = Callable[[str], Path]


class Artifact:
    """A stored (or being stored) artifact version.

    ``get()`` returns the object; ``get_local_copy()`` a local path. Both work
    in a process with no daemon and no spool, reading from storage.
    """

    def __init__(
        self,
        record: dict[str, Any],
        locator: Locator,
        *,
        pending: Any = None,
        allow_pickle: bool = False,
    ) -> None:
        self._record = record
        self._locator = locator
        self._pending = pending  # the writer job, until the payload is in the spool
        self._allow_pickle = allow_pickle  # the default of get(allow_pickle=None)

    # -- ClearML's attributes ----------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self._record["name"])

    def _settled(self) -> dict[str, Any]:
        if self._pending is not None:
            self._pending.wait()
            self._pending = None
        return self._record

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
        return str(self._settled().get("preview") or "")  # made by the writer thread

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
            return str(self._local_copy(extract_archive))
        except Exception:
            if raise_on_error:
                raise
            return None

    def _local_copy(self, extract_archive: bool) -> Path:
        from artisync.protocol.formats import materialize_tree

        rec = self._settled()
        main = self._locator(rec["sha256"])
        if rec["format"] != "tree":
            ext = rec.get("extension") or ""
            if not ext:
                return main
            named = main.parent / f"{main.name}{ext}"
            if not named.exists():
                _link_or_copy(main, named)
            return named
        folder = main.parent / f"{rec['sha256']}.d"
        if not folder.exists():
            tmp = main.parent / f"{rec['sha256']}.d.tmp{threading.get_ident()}"
            shutil.rmtree(tmp, ignore_errors=True)
            materialize_tree(main, self._locator, tmp)
            try:
                tmp.rename(folder)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # someone else finished first
        if extract_archive:
            return folder
        archive = main.parent / f"{rec['sha256']}.zip"
        if not archive.exists():
            made = shutil.make_archive(str(archive.with_suffix("")) + ".tmp", "zip", folder)
            Path(made).rename(archive)
        return archive

    def get(
        self,
        allow_pickle: bool | None = None,
        deserialization_function: Callable[[bytes], Any] | None = None,
        force_download: bool = False,
    ) -> Any:
        """The artifact as an object: DataFrame, dict, ndarray, Image, a local path...

        Pickled artifacts are refused unless ``allow_pickle=True`` (or the config
        setting ``allow_pickle``): unpickling runs arbitrary code.
        """
        from artisync.protocol.formats import load

        rec = self._settled()
        if rec["format"] == "tree":
            return str(self._local_copy(True))
        if allow_pickle is None:
            allow_pickle = self._allow_pickle
        path = self._locator(rec["sha256"])
        if rec["type"] == "file":
            return str(self._local_copy(True))
        return load(
            rec["type"],
            rec["format"],
            path,
            allow_pickle=allow_pickle,
            deserialization_function=deserialization_function,
        )


def _link_or_copy(src: Path, dst: Path) -> None:
    # a copy, not a hard link: a user editing the returned file must not alter the cache
    from artisync.protocol import copy_file_fast

    tmp = dst.with_name(f".{dst.name}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as out:
        copy_file_fast(src, out)
    tmp.replace(dst)
