"""Path artifacts: a file, a folder, or the files a wildcard matches.

Every file is copied into the spool at snapshot time (``copy_file_range``: a
reflink or in-kernel copy where the filesystem allows it), so that rewriting
the original afterwards cannot change what is stored; hashing waits for
``write()``. Creating a file costs about as much as copying 64 KiB, so the
small files of a folder are appended to one pack temp file on the caller's
thread and split into their own temp files by ``write()``, in the background;
a file of ``PACK_MAX`` bytes or more gets its own temp file at once (copied
once, never twice). A folder or wildcard is stored as a tree: each file its own
content-addressed blob, plus a JSON listing blob, the tree's main blob::

    {"files": [{"path": "rel/posix/path", "sha256": "...", "size": 123}, ...], "version": 1}

sorted by path; paths are relative, POSIX, and never contain ``..``.

How a ``str`` is read (``pathlib.Path`` and other ``os.PathLike`` objects are
always paths):

1. An existing file or folder (after ``~`` expansion) is that file or folder,
   even when the string was meant as text: the file wins, as in ClearML.
2. Otherwise a string that *looks like a path* is one: if it holds a glob
   wildcard (``*``, ``?``, ``[``) it is a wildcard, which must match at least
   one file; if not, ``SerializationError("... does not exist")``.
3. Anything else is text.

A string looks like a path when it is one line of under 4096 characters, is
not a URL (``scheme://``), and either starts with ``/``, ``./``, ``../`` or
``~``; or contains a ``/`` and has no whitespace, or a ``/`` and an existing
parent folder; or has no whitespace and ends with a file-like suffix (a dot,
a letter, then up to nine letters/digits: ``results.csv``, ``*.jpg``). So
``"runs/a.csv"`` and ``"a.csv"`` must exist, while ``"train/val loss: 0.3"``,
``"why?"`` and ``"s3://bucket/key"`` are stored as text.

Wildcards follow ``glob.glob(recursive=True)``: ``**`` spans folders, ``*``
does not, hidden files match only explicitly. Stored paths are relative to the
pattern's base folder, the leading components without wildcards
(``data/*/x.png`` -> ``data``); a matched folder contributes all its files.
Only regular files are stored (symlinks to files are followed); other entries
(sockets, FIFOs, dangling links, symlinked folders) are skipped and counted
in the preview.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from artisync.protocol import IntegrityError, Spool, copy_file_fast

from ._serializers import (
    SerializationError,
    Snapshot,
    StoredPayload,
    human_size,
    make_snapshot,
    write_bytes_blob,
)

LISTING_VERSION = 1
PACK_MAX = 1024 * 1024  # smaller files of a tree share one temp file at snapshot time
_COPY_MAX = 1 << 30  # bytes per copy_file_range call
CHUNK = 1024 * 1024  # bytes per read where the kernel cannot copy
_MAX_PATH_STR = 4096
_MAGIC = re.compile(r"[*?[]")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_FILE_SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,9}\Z")
_HOME = re.compile(r"~[\w.-]*(/|\Z)")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4")


def looks_like_path(text: str) -> bool:
    """The rule in the module docstring (after the single-line/URL checks)."""
    if text.startswith(("/", "./", "../")) or _HOME.match(text):
        return True
    spaced = any(c.isspace() for c in text)
    if "/" in text:
        return not spaced or Path(text).expanduser().parent.is_dir()
    return not spaced and _FILE_SUFFIX.search(text) is not None


def _may_be_path(text: str) -> bool:
    return (
        0 < len(text) < _MAX_PATH_STR
        and not any(c in text for c in "\n\r\0")
        and _URL.match(text) is None
    )


def snapshot_path(obj: Any, spool: Spool, ext: str | None, pv: str | None) -> Snapshot | None:
    """A file/folder/wildcard snapshot, or None when ``obj`` is a str to store as text."""
    is_str = isinstance(obj, str)
    text = obj if is_str else os.fsdecode(os.fspath(obj))
    if is_str and not _may_be_path(text):
        return None
    path = Path(text).expanduser()
    try:
        st: os.stat_result | None = os.stat(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
            raise SerializationError(f"cannot access artifact path {text!r}: {exc}") from exc
        st = None
    pathish = not is_str or looks_like_path(text)
    if st is None and _MAGIC.search(text) and pathish:
        return _snap_wildcard(text, spool, ext, pv)
    if st is None and pathish:
        raise SerializationError(
            f"artifact path {text!r} does not exist (resolved to {path.absolute()}); to "
            "store the string itself, pass serialization_function=str.encode"
        )
    if st is None:
        return None
    if stat.S_ISREG(st.st_mode):
        return _snap_file(path, spool, ext, pv)
    if ext is not None:
        raise SerializationError(f"extension_name does not apply to folders ({text!r})")
    if stat.S_ISDIR(st.st_mode):
        files, skipped = _walk(str(path))
        name = os.path.basename(os.path.abspath(path)) or "/"
        return _snap_tree("folder", name, files, skipped, spool, pv)
    raise SerializationError(f"artifact path {text!r} is not a regular file or a folder")


def file_suffix(name: str) -> str:
    """``a.csv`` -> ``.csv``; ``a.tar.gz`` -> ``.tar.gz``; ``README`` -> ``""``."""
    stem, ext = os.path.splitext(name)
    if ext.lower() in _COMPRESSED:
        inner = os.path.splitext(stem)[1]
        if _FILE_SUFFIX.search(inner):
            return inner + ext
    return ext


def _copy_fd(fd: int, size: int, out_fd: int) -> int:
    """Copy an open file (``size`` bytes when opened) to the end of ``out_fd``, kernel-side
    where possible; returns the bytes copied. Raw descriptors: for a 64 KiB file,
    Python file objects would cost as much as the copy itself."""
    total = 0
    if size:  # st_size 0: empty, or a pseudo-file (/proc) whose bytes only read() gives
        try:
            while total < size:
                n = os.copy_file_range(fd, out_fd, size - total)
                if n == 0:
                    break
                total += n
            return total
        except OSError:
            pass  # cross-device on old kernels, or a filesystem that cannot: read and write
    while total < size or not size:
        chunk = os.read(fd, min(CHUNK, size - total) if size else CHUNK)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(out_fd, view) :]
        total += len(chunk)
    return total


def _copy_to_temp(src: str, spool: Spool) -> tuple[Path, int]:
    f, tmp = spool.open_temp()
    try:
        with f:
            fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return tmp, _copy_fd(fd, os.fstat(fd).st_size, f.fileno())
            finally:
                os.close(fd)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise SerializationError(f"cannot copy {src}: {exc}") from exc
        raise


def _commit_one(tmp: Path) -> Callable[[Spool], StoredPayload]:
    def write(spool: Spool) -> StoredPayload:
        sha, size = spool.commit_temp(tmp)
        return StoredPayload(sha, size, [(sha, size)])

    return write


def _snap_file(path: Path, spool: Spool, ext: str | None, pv: str | None) -> Snapshot:
    suffix = file_suffix(path.name)
    if ext is not None and ext != suffix.lower():
        raise SerializationError(
            f"a file is stored as it is: extension_name={ext!r} does not match {path.name!r}; "
            f"allowed: None or {suffix.lower() or '(no extension)'}"
        )
    tmp, size = _copy_to_temp(str(path), spool)
    return make_snapshot(
        "file",
        "file",
        suffix,
        pv or f"{path.name} - {human_size(size)}",
        _commit_one(tmp),
        [tmp],
        filename=path.name,
    )


# ------------------------------------------------------------------------------ trees


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _walk(root: str) -> tuple[dict[str, str], int]:
    """Regular files under ``root`` by relative POSIX path, and the count skipped.

    ``scandir`` knows most entries' types without a ``stat`` call; symlinks to
    files are followed, symlinks to folders are not (they count as skipped).
    """
    files: dict[str, str] = {}
    skipped = 0
    stack = [("", root)]
    while stack:
        prefix, folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            raise SerializationError(
                f"cannot read folder {exc.filename or folder}: {exc.strerror}"
            ) from exc
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((f"{prefix}{entry.name}/", entry.path))
                    continue
                if entry.is_file():
                    files[prefix + entry.name] = entry.path
                    continue
            except OSError:
                pass  # vanished, or a link we may not follow: skipped like a socket
            skipped += 1
    return files, skipped


def _glob_base(pattern: str) -> Path:
    lead: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if _MAGIC.search(part):
            break
        lead.append(part)
    return Path(*lead) if lead else Path(".")


def _snap_wildcard(pattern: str, spool: Spool, ext: str | None, pv: str | None) -> Snapshot:
    if ext is not None:
        raise SerializationError("extension_name does not apply to wildcard artifacts")
    expanded = os.path.expanduser(pattern)
    base = _glob_base(expanded)
    files: dict[str, str] = {}
    skipped = 0
    for match in sorted(glob.glob(expanded, recursive=True)):
        if os.path.isdir(match):
            sub, n = _walk(match)
            prefix = Path(os.path.relpath(match, base)).as_posix()
            files.update({f"{prefix}/{k}" if prefix != "." else k: v for k, v in sub.items()})
            skipped += n
        elif _regular(match):
            files[Path(os.path.relpath(match, base)).as_posix()] = match
        else:
            skipped += 1
    if not files:
        raise SerializationError(f"wildcard {pattern!r} matches no files")
    return _snap_tree("wildcard", pattern, files, skipped, spool, pv)


class _Entry(NamedTuple):
    rel: str  # path in the tree
    own: Path | None  # its own temp file; None: it is in the pack, at offset
    offset: int
    size: int


def _snap_tree(
    kind: str, label: str, files: dict[str, str], skipped: int, spool: Spool, pv: str | None
) -> Snapshot:
    order = sorted(files)
    for rel in order:
        try:
            check_rel_path(rel)
        except ValueError as exc:
            raise SerializationError(str(exc)) from None
    pack_file, pack = spool.open_temp()
    temps = [pack]
    entries: list[_Entry] = []
    try:
        with pack_file:
            offset = 0
            for rel in order:
                entry = _copy_into(files[rel], rel, spool, pack_file.fileno(), offset, temps)
                entries.append(entry)
                offset += entry.size if entry.own is None else 0
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    if pv is None:
        pv = _tree_preview(kind, label, [(e.rel, e.size) for e in entries], skipped)
    filename = None if kind == "wildcard" else label
    return make_snapshot(
        kind, "tree", "", pv, _tree_writer(pack, entries), temps, filename=filename
    )


def _copy_into(
    src: str, rel: str, spool: Spool, pack_fd: int, offset: int, temps: list[Path]
) -> _Entry:
    """Append a small file to the pack; give a large one its own temp file."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < PACK_MAX:
                return _Entry(rel, None, offset, _copy_fd(fd, size, pack_fd))
            f, tmp = spool.open_temp()
            temps.append(tmp)
            with f:
                return _Entry(rel, tmp, 0, _copy_fd(fd, size, f.fileno()))
        finally:
            os.close(fd)
    except OSError as exc:
        raise SerializationError(f"cannot copy {src}: {exc}") from exc


def _tree_preview(kind: str, label: str, entries: list[tuple[str, int]], skipped: int) -> str:
    total = sum(n for _, n in entries)
    lines = [
        f"{kind} {label}: {len(entries)} files, {human_size(total)}"
        + (f" ({skipped} non-regular entries skipped)" if skipped else "")
    ]
    lines += [f"{rel} - {human_size(n)}" for rel, n in entries[:20]]
    if len(entries) > 20:
        lines.append(f"... and {len(entries) - 20} more")
    return "\n".join(lines)


def _tree_writer(pack: Path, entries: list[_Entry]) -> Callable[[Spool], StoredPayload]:
    def write(spool: Spool) -> StoredPayload:
        with open(pack, "rb") as f:
            committed = [
                (e.rel, *(spool.commit_temp(e.own) if e.own else _unpack(spool, f.fileno(), e)))
                for e in entries
            ]
        listing = [{"path": rel, "sha256": sha, "size": size} for rel, sha, size in committed]
        data = json.dumps(
            {"version": LISTING_VERSION, "files": listing}, sort_keys=True, separators=(",", ":")
        ).encode("ascii")
        main = write_bytes_blob(spool, data)
        blobs = [main, *dict.fromkeys((sha, size) for _, sha, size in committed)]
        return StoredPayload(main[0], sum(size for _, _, size in committed), blobs)

    return write


def _unpack(spool: Spool, pack_fd: int, entry: _Entry) -> tuple[str, int]:
    """Copy one file out of the pack into its own temp file, hashing it, and commit it."""
    h = hashlib.sha256()
    f, tmp = spool.open_temp()
    try:
        with f:
            done = 0
            while done < entry.size:
                chunk = os.pread(pack_fd, min(CHUNK, entry.size - done), entry.offset + done)
                if not chunk:
                    raise IntegrityError(f"spool temp file {tmp} is shorter than its entries")
                h.update(chunk)
                f.write(chunk)
                done += len(chunk)
        return spool.commit_temp(tmp, h.hexdigest())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_rel_path(rel: Any) -> str:
    """A relative POSIX path with no empty, ``.`` or ``..`` component, or ValueError."""
    if not isinstance(rel, str) or not rel or "\0" in rel or rel.startswith("/"):
        raise ValueError(f"unsafe path in tree: {rel!r}")
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise ValueError(f"unsafe path in tree: {rel!r}")
    return rel


# ------------------------------------------------------------------------ materialize


def read_listing(listing_path: Path) -> list[tuple[str, str, int]]:
    """The (path, sha256, size) entries of a listing blob, validated."""
    try:
        doc = json.loads(Path(listing_path).read_bytes())
        if not isinstance(doc, dict) or doc.get("version") != LISTING_VERSION:
            raise ValueError(f"not a version {LISTING_VERSION} tree listing")
        entries = [(check_rel_path(f["path"]), f["sha256"], f["size"]) for f in doc["files"]]
        for _, sha, size in entries:
            if not isinstance(sha, str) or not _SHA256.match(sha):
                raise ValueError(f"bad sha256 {sha!r}")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"bad size {size!r}")
        if len({p for p, _, _ in entries}) != len(entries):
            raise ValueError("duplicate paths")
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"tree listing {listing_path} is invalid: {exc}") from exc
    return entries


def materialize_tree(
    listing_path: Path, fetch: Callable[[str], Path], dest_dir: Path, *, link: bool = False
) -> Path:
    """Recreate a tree under ``dest_dir`` and return ``dest_dir``.

    ``fetch(sha256)`` returns the local path of that blob. Files are copied
    (a reflink where the filesystem allows it). With ``link=True`` they are
    hard-linked to the fetched blobs when possible, which is only safe if
    nobody writes to the materialized files: a write would change the blob.

    :raises IntegrityError: the listing is malformed, a path would leave
        ``dest_dir``, or a fetched blob has the wrong size.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    for rel, sha, size in read_listing(listing_path):
        target = root.joinpath(*rel.split("/"))
        _check_inside(target.parent, root, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        _check_inside(target.parent, root, rel)  # a symlink may have raced the mkdir
        _place(Path(fetch(sha)), target, size, link)
    return dest


def _check_inside(folder: Path, root: Path, rel: str) -> None:
    if not folder.resolve().is_relative_to(root):
        raise IntegrityError(f"tree path {rel!r} leaves the destination folder {root}")


def _place(src: Path, target: Path, size: int, link: bool) -> None:
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
    try:
        if not (link and _try_link(src, tmp)):
            with open(tmp, "xb") as out:
                copy_file_fast(src, out)
        actual = tmp.stat().st_size
        if actual != size:
            raise IntegrityError(f"blob {src} has {actual} bytes, the listing says {size}")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _try_link(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst)
    except OSError:
        return False
    return True
