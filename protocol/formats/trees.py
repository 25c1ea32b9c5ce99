"""Folders, and the files a wildcard matches: stored as trees.

Every file is copied into the spool at snapshot time, as a single file is
(see ``files``), but all into one raw snapshot, the *pack*: creating a file
costs about as much as copying 64 KiB, and the caller pays for the copies
only. The record's ``raw`` lists each file's path, offset and size in the
pack; the daemon's ``pack`` codec hashes each file (the small ones stay in the
pack, see ``_packed``). A tree is stored as each file its own content-addressed
object, plus a JSON listing blob, the tree's main blob::

    {"files": [{"path": "rel/posix/path", "sha256": "...", "size": 123}, ...], "version": 1}

sorted by path; paths are relative, POSIX, and never contain ``..``.

Wildcards follow ``glob.glob(recursive=True)``: ``**`` spans folders, ``*``
does not, hidden files match only explicitly. Stored paths are relative to the
pattern's base folder, the leading components without wildcards
(``data/*/x.png`` -> ``data``); a matched folder contributes all its files.
Only regular files are stored (symlinks to files are followed); other entries
(sockets, FIFOs, dangling links, symlinked folders) are skipped and counted
in the preview.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from artisync.protocol import IntegrityError, Spool, copy_file_fast, format_size

from . import _packed
from ._base import (
    Captured,
    Codec,
    Format,
    Request,
    SerializationError,
    StoredPayload,
)
from ._paths import CHUNK, WILDCARD, copy_fd, spool_full

LISTING_VERSION = 1
_SYNC_EACH_BELOW = 16  # files in a pack: fewer are fsynced one by one, more all at once
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def snapshot(obj: Any, req: Request) -> Captured | None:
    target = req.path
    if target is None or target.kind == "file":
        return None
    if target.kind == "wildcard":
        return _snap_wildcard(target.text, req)
    if req.ext is not None:
        raise SerializationError(f"extension_name does not apply to folders ({target.text!r})")
    if target.kind != "folder":
        raise SerializationError(f"artifact path {target.text!r} is not a regular file or a folder")
    files, skipped = _walk(str(target.path))
    name = os.path.basename(os.path.abspath(target.path)) or "/"
    return _snap_tree("folder", name, files, skipped, req)


def is_tree(type_: str, format_: str) -> bool:
    return type_ in ("folder", "wildcard") or format_ == "tree"


def load(type_: str, format_: str, path: Path, allow_pickle: bool) -> Any:
    raise SerializationError("folders and wildcards are read with materialize_tree()")


FORMAT = Format("tree", snapshot, is_tree, load)


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
        if WILDCARD.search(part):
            break
        lead.append(part)
    return Path(*lead) if lead else Path(".")


def _snap_wildcard(pattern: str, req: Request) -> Captured:
    if req.ext is not None:
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
    return _snap_tree("wildcard", pattern, files, skipped, req)


def _snap_tree(
    kind: str, label: str, files: dict[str, str], skipped: int, req: Request
) -> Captured:
    order = sorted(files)
    for rel in order:
        try:
            check_rel_path(rel)
        except ValueError as exc:
            raise SerializationError(str(exc)) from None
    entries: list[list[Any]] = []  # [path, offset, size]: the record's raw "files"
    pack = req.create()
    try:
        offset = 0
        for rel in order:
            size = _append(files[rel], pack)
            entries.append([rel, offset, size])
            offset += size
    except BaseException:
        req.raw.unlink(missing_ok=True)
        raise
    finally:
        os.close(pack)
    pv = req.preview
    if pv is None:
        pv = _tree_preview(kind, label, [(e[0], e[2]) for e in entries], skipped)
    filename = None if kind == "wildcard" else label
    raw = {"codec": "pack", "size": offset, "files": entries}
    return Captured(kind, "tree", "", raw, pv, filename=filename)


def _append(src: str, pack_fd: int) -> int:
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return copy_fd(fd, os.fstat(fd).st_size, pack_fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if spool_full(exc):
            raise  # the spool's fault, not the file's
        raise SerializationError(f"cannot copy {src}: {exc}") from exc


def _tree_preview(kind: str, label: str, entries: list[tuple[str, int]], skipped: int) -> str:
    total = sum(n for _, n in entries)
    lines = [
        f"{kind} {label}: {len(entries)} files, {format_size(total)}"
        + (f" ({skipped} non-regular entries skipped)" if skipped else "")
    ]
    lines += [f"{rel} - {format_size(n)}" for rel, n in entries[:20]]
    if len(entries) > 20:
        lines.append(f"... and {len(entries) - 20} more")
    return "\n".join(lines)


def pack_entries(rec: dict[str, Any]) -> list[tuple[str, int, int]]:
    """The (path, offset, size) entries of a pack, checked against its size."""
    raw = rec["raw"]
    try:
        entries = [(check_rel_path(p), int(o), int(n)) for p, o, n in raw["files"]]
    except (ValueError, TypeError, KeyError) as exc:
        raise SerializationError(f"raw pack of record {rec['record_id']}: {exc}") from exc
    end = 0
    for rel, offset, size in entries:
        if offset != end or size < 0:
            raise SerializationError(f"raw pack entry {rel!r} is out of place")
        end += size
    if end != raw["size"] or len({p for p, _, _ in entries}) != len(entries):
        raise SerializationError("raw pack entries do not add up to the pack")
    return entries


def _encode_pack(spool: Spool, rec: dict[str, Any], raw: Path) -> tuple[StoredPayload, None]:
    """Hash each member; the big ones get a blob file each, the others stay in the pack,
    kept as ``blobs/<listing>.pack`` (see :mod:`._packed`)."""
    entries = pack_entries(rec)
    # thousands of small files: an fsync each (and of the folder each time) would be
    # most of the cost; written unsynced, they are made durable at once below, before
    # the record says they are there (a crash before that encodes the pack again)
    sync = len(entries) < _SYNC_EACH_BELOW
    staged = _packed.stage(spool, raw)
    try:
        with open(staged, "rb") as f:
            committed = [
                (rel, *_unpack(spool, f.fileno(), o, n, sync))
                if n >= _packed.OWN_BLOB_FROM
                else (rel, _packed.hash_member(f.fileno(), o, n), n)
                for rel, o, n in entries
            ]
        listing = [{"path": rel, "sha256": sha, "size": size} for rel, sha, size in committed]
        data = json.dumps(
            {"version": LISTING_VERSION, "files": listing}, sort_keys=True, separators=(",", ":")
        ).encode("ascii")
        main = spool.write_blob_bytes(data, sync=sync)
        names = [main[0], *(sha for _, sha, n in committed if n >= _packed.OWN_BLOB_FROM)]
        if any(n < _packed.OWN_BLOB_FROM for _, _, n in committed):
            names.append(_packed.keep(spool, staged, main[0], sync))
        if not sync:
            spool.sync_blobs(names)
    finally:
        staged.unlink(missing_ok=True)
    blobs = [main, *dict.fromkeys((sha, size) for _, sha, size in committed)]
    return StoredPayload(main[0], sum(size for _, _, size in committed), blobs), None


def _unpack(spool: Spool, pack_fd: int, offset: int, size: int, sync: bool) -> tuple[str, int]:
    """Copy one file out of the pack into its own temp file, hashing it, and commit it."""
    h = hashlib.sha256()
    f, tmp = spool.open_temp()
    try:
        with f:
            done = 0
            while done < size:
                chunk = os.pread(pack_fd, min(CHUNK, size - done), offset + done)
                if not chunk:
                    raise IntegrityError(f"raw pack {pack_fd} is shorter than its entries")
                h.update(chunk)
                f.write(chunk)
                done += len(chunk)
        return spool.commit_temp(tmp, h.hexdigest(), sync=sync)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def materialize_pack(rec: dict[str, Any], raw: Path, dest_dir: Path) -> Path:
    """Recreate a tree from its raw pack (before the daemon encoded it)."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with open(raw, "rb") as f:
        for rel, offset, size in pack_entries(rec):
            target = root.joinpath(*rel.split("/"))
            _check_inside(target.parent, root, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            _check_inside(target.parent, root, rel)
            with open(target, "xb") as out:
                done = 0
                while done < size:
                    chunk = os.pread(f.fileno(), min(CHUNK, size - done), offset + done)
                    if not chunk:
                        raise IntegrityError(f"raw pack {raw.name} is shorter than its entries")
                    out.write(chunk)
                    done += len(chunk)
    return dest


def _load_pack(rec: dict[str, Any], raw: Path, allow_pickle: bool) -> Any:
    raise SerializationError("folders and wildcards are read with materialize_pack()")


CODEC = Codec("pack", _encode_pack, _load_pack)


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
