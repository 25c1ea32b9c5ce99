"""StorageManager's uploads through the spool and the daemon.

Each file becomes a *put* record: the file is copied into the spool (the kernel
copy file artifacts use) and its record written into the outbox, or handed to a
shared daemon, before the call returns; so the upload survives the network being
down and this process exiting, as an artifact does. The daemon hashes the copy
and writes it at its URL, verified against its SHA-256, retrying through outages.
The records of one call share one id (their journal ``task_id``): waiting for
them waits for nothing else, and a failure of another call fails none of them.
"""

from __future__ import annotations

import errno
from pathlib import Path

from artisync.protocol import new_id, new_put_record, put_target

from ._client import DaemonError, DaemonUnavailable
from ._errors import UploadFailed
from ._handover import RawHolder, Refused
from ._quota import SpoolFull
from ._session import Session, origin

FAILED_SHOWN = 5  # failed puts of one call named in its error


def through_daemon(session: Session, wait: bool) -> bool:
    """Go through the spool? Always when not waiting (the outbox keeps it for a daemon
    to come); when waiting, only if a daemon answers or will (autostart): else the
    caller uploads itself.

    :raises NotAllowed, UntrustedDaemon, UnsafeFolder: see DaemonClient.connect."""
    return not wait or session.daemon_expected()


def targets(session: Session, urls: list[str], base: str | None = None) -> list[tuple[str, str]]:
    """(destination, key) of the object at each URL: under the default destination
    when it is inside it (the daemon's storage client and its state are then that
    destination's), else under ``base`` (a folder's URL), else under its parent.

    :raises ValueError: a URL is not an object's, or its key would leave its
        destination or enter artisync's own layout."""
    default = session.default_output_uri().rstrip("/")
    out = []
    for url in urls:
        for dest in (default, (base or url.rpartition("/")[0]).rstrip("/")):
            if dest and url.startswith(dest + "/"):
                out.append((dest, checked(dest, url[len(dest) + 1 :], url)))
                break
        else:
            raise ValueError(f"not an object's URL: {url!r} (e.g. s3://bucket/path/file.bin)")
    return out


def checked(dest: str, key: str, url: str) -> str:
    """``key`` under ``dest``, held to the rules the daemon holds a put to.

    :raises ValueError: naming ``url`` and the rule it breaks."""
    try:
        put_target(dest, key)
    except ValueError as exc:
        raise ValueError(f"cannot upload to {url!r}: {exc}") from None
    return key


def put(session: Session, files: list[tuple[Path, str, str]], wait: bool, what: str) -> None:
    """Put each (local file, destination, key) into the spool; with ``wait``, return
    once the daemon has committed them all.

    :raises SpoolFull: no room in the spool (the files stored so far stay there).
    :raises Refused: a shared daemon refused one (its destination is not allowed).
    :raises UploadFailed: with ``wait``: one failed, or the daemon refused it.
    :raises UploadTimeout: with ``wait``: not committed within ``wait_timeout``; they
        stay in the spool and are uploaded when a daemon runs."""
    call = new_id()
    ids = [_store(session, call, src, dest, key) for src, dest, key in files]
    if not wait:
        return
    try:
        session.wait_committed(call, None, what=what)
    except UploadFailed as exc:
        reasons = _failures(session, ids)
        raise UploadFailed("; ".join(reasons) if reasons else str(exc)) from None


def _store(session: Session, call: str, src: Path, dest: str, key: str) -> str:
    """Snapshot one file and write its record, as an artifact's; its record id."""
    from artisync.protocol.formats import snapshot

    from ._lease import leasing

    what = f"upload to {dest}/{key}"
    session.reserve_space(src, what)  # may raise SpoolFull
    spool = session.spool
    record_id = new_id()
    holder = RawHolder(session, spool, record_id) if session.shared else None
    try:
        cap = snapshot(
            src,
            spool,
            record_id,
            opener=None if holder is None else holder.open,
            lease=leasing(session, record_id),
            auto_pickle=False,  # a file, or nothing
            room=lambda n: session.quota.check_disk(spool, n, what),
        )
    except BaseException as exc:
        if holder is not None:
            holder.close()
        full = _spool_full(exc, what)
        if full is None:
            raise
        raise full from exc
    record = new_put_record(record_id=record_id, task_id=call, dest=dest, key=key, origin=origin())
    record["raw"] = cap.raw
    try:
        session.store(dict(record), holder)
    except Refused as exc:
        spool.raw_path(record_id).unlink(missing_ok=True)
        raise Refused(f"{what} refused: {exc}") from None
    except BaseException as exc:
        spool.raw_path(record_id).unlink(missing_ok=True)
        full = _spool_full(exc, what)
        if full is None:
            raise
        raise full from exc
    return record_id


def _spool_full(exc: BaseException, what: str) -> SpoolFull | None:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolFull(f"{what} NOT stored: the spool's disk is full ({exc})")
    return None


def _failures(session: Session, record_ids: list[str]) -> list[str]:
    """Why the failed ones failed, as the daemon says (the first few)."""
    out: list[str] = []
    for record_id in record_ids:
        try:
            reply = session.request({"op": "record", "record_id": record_id, "wait": 0})
        except (DaemonUnavailable, DaemonError):
            continue
        if reply.get("state") == "failed":
            body = reply["record"]
            url = f"{str(body['dest']).rstrip('/')}/{body['key']}"
            out.append(f"upload to {url} failed: {reply.get('reason')}")
            if len(out) >= FAILED_SHOWN:
                break
    return out
