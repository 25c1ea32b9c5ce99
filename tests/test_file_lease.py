"""A big file reported to this user's own daemon is copied by the daemon, under a
read lease it takes on the file (``daemon.leases``): what is stored is the file as
it was when ``upload_artifact`` returned, whatever the trainer does to it next.
Real daemons, real files, real leases (the kernel's), real SIGKILLs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from artisync import Task
from artisync.protocol import InvalidMessage, Spool, validate_record
from artisync.protocol.formats import LEASE_MIN
from tests.harness import DaemonProc, Env, daemon_status, stored_objects
from tests.records import record_for_blob

MIB = 1024 * 1024


def write_random(path: Path, size: int, seed: int) -> str:
    """Fill ``path`` with ``size`` pseudo-random bytes; their SHA-256."""
    data = hashlib.shake_256(seed.to_bytes(8, "little")).digest(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def overwrite(path: Path, seed: int) -> str:
    """Write new bytes over the file in place (open for writing: a lease makes it
    wait for the daemon's copy); their SHA-256."""
    size = path.stat().st_size
    data = hashlib.shake_256(seed.to_bytes(8, "little")).digest(size)
    with open(path, "r+b") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def report(name: str, path: Path) -> Task:
    task = Task.init(project_name="leases", task_name=name)
    task.upload_artifact(name, str(path))
    return task


def test_a_file_written_over_right_after_is_stored_as_reported(env: Env) -> None:
    src = env.root / "checkpoint.pt"
    old = write_random(src, 64 * MIB, seed=1)
    d = DaemonProc(env).wait_ready()
    try:
        task = report("ckpt", src)
        new = overwrite(src, seed=2)  # at once: waits for the daemon's copy
        task.flush(wait_for_uploads=True, timeout=120)
        task.close()
        assert daemon_status(env)["leases"] == 1  # copied by the daemon, not here
    finally:
        d.stop()
    assert stored_objects(env.storage) == {old: 64 * MIB}
    assert hashlib.sha256(src.read_bytes()).hexdigest() == new != old


@pytest.mark.parametrize("how", ["replaced", "removed"])
def test_a_file_replaced_or_removed_right_after_is_stored_as_reported(env: Env, how: str) -> None:
    src = env.root / "checkpoint.pt"
    old = write_random(src, 2 * LEASE_MIN, seed=3)
    d = DaemonProc(env).wait_ready()
    try:
        task = report("ckpt", src)
        if how == "replaced":  # torch.save to a temp file, then a rename: no waiting
            write_random(env.root / "next.pt", 2 * LEASE_MIN, seed=4)
            os.replace(env.root / "next.pt", src)
        else:
            src.unlink()
        task.flush(wait_for_uploads=True, timeout=120)
        task.close()
        assert daemon_status(env)["leases"] == 1
    finally:
        d.stop()
    assert stored_objects(env.storage) == {old: 2 * LEASE_MIN}


def test_a_file_open_for_writing_is_copied_by_the_caller(env: Env) -> None:
    """The kernel grants no read lease while a writer has the file open: the SDK
    copies it at the call, so what the writer does next is not stored."""
    src = env.root / "growing.bin"
    old = write_random(src, 2 * LEASE_MIN, seed=5)
    d = DaemonProc(env).wait_ready()
    try:
        with open(src, "r+b") as writer:
            task = report("growing", src)
            writer.write(b"x" * MIB)  # after the call returned
        task.flush(wait_for_uploads=True, timeout=120)
        task.close()
        assert daemon_status(env)["leases"] == 0
    finally:
        d.stop()
    assert stored_objects(env.storage) == {old: 2 * LEASE_MIN}


def test_with_leases_off_the_caller_copies(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTISYNC_FILE_LEASE", "0")
    src = env.root / "model.bin"
    old = write_random(src, 2 * LEASE_MIN, seed=6)
    d = DaemonProc(env).wait_ready()
    try:
        task = report("model", src)
        overwrite(src, seed=7)
        task.flush(wait_for_uploads=True, timeout=120)
        task.close()
        assert daemon_status(env)["leases"] == 0
    finally:
        d.stop()
    assert stored_objects(env.storage) == {old: 2 * LEASE_MIN}


def test_a_daemon_killed_before_its_copy_copies_the_unchanged_file_at_its_next_start(
    env: Env,
) -> None:
    src = env.root / "big.bin"
    old = write_random(src, 256 * MIB, seed=8)
    d = DaemonProc(env).wait_ready()
    task = report("big", src)
    d.kill()
    d.wait_exit()
    assert list(Spool(env.spool).raw.iterdir()) == []  # the copy never landed
    d = DaemonProc(env).wait_ready()
    try:
        task.flush(wait_for_uploads=True, timeout=120)
        task.close()
    finally:
        d.stop()
    assert stored_objects(env.storage) == {old: 256 * MIB}


def test_a_file_written_after_the_daemon_died_before_its_copy_is_refused_by_name(
    env: Env,
) -> None:
    from artisync import UploadFailed

    src = env.root / "big.bin"
    write_random(src, 256 * MIB, seed=9)
    d = DaemonProc(env).wait_ready()
    task = report("big", src)
    d.kill()
    d.wait_exit()
    assert list(Spool(env.spool).raw.iterdir()) == []
    overwrite(src, seed=10)  # no lease holds it any more
    d = DaemonProc(env).wait_ready()
    try:
        with pytest.raises(UploadFailed, match=r"big\.bin was not copied.*lost"):
            task.flush(wait_for_uploads=True, timeout=120)
        task.close()
    finally:
        d.stop()
    assert stored_objects(env.storage) == {}


def raw_record(raw: dict[str, object]) -> dict[str, object]:
    rec = record_for_blob("0" * 64, 9, "/tmp/storage", "a", "1" * 32)
    for field in ("sha256", "size", "blobs"):
        del rec[field]
    return {**rec, "type": "file", "format": "file", "raw": raw}


def test_a_leased_record_names_an_absolute_path_of_a_stored_file() -> None:
    ident = {"path": "/data/a.bin", "dev": 1, "ino": 2, "size": 9, "mtime_ns": 3, "ctime_ns": 4}
    ok = raw_record({"codec": "stored", "size": 9, "leased": ident})
    assert validate_record(ok) is ok
    bad = [
        {"codec": "stored", "size": 9, "leased": {**ident, "path": "a.bin"}},
        {"codec": "stored", "size": 8, "leased": ident},
        {"codec": "npy", "size": 9, "leased": ident},
        {"codec": "stored", "size": 9, "leased": {k: v for k, v in ident.items() if k != "ino"}},
    ]
    for raw in bad:
        with pytest.raises(InvalidMessage):
            validate_record(raw_record(raw))
