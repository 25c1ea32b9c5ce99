"""A big file reported to this user's own daemon is copied by the daemon, under a
read lease it takes on the file (``daemon.leases``): what is stored is the file as
it was when ``upload_artifact`` returned, whatever the trainer does to it next.
Real daemons, real files, real leases (the kernel's), real SIGKILLs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from artisync import Task
from artisync._client import DaemonClient
from artisync._lease import PROBE_SHARE, Leaser
from artisync.daemon.leases import SETTLED_WHOLE
from artisync.protocol import InvalidMessage, Spool, load_settings, validate_record
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


def read_back(task_id: str, name: str) -> str:
    """The SHA-256 of an artifact file as ``get()`` gives it back."""
    return hashlib.sha256(
        Path(Task.get_task(task_id=task_id).artifacts[name].get()).read_bytes()
    ).hexdigest()


def test_a_file_leased_again_unchanged_is_its_stored_blob_and_a_changed_one_is_copied(
    env: Env,
) -> None:
    """The daemon remembers the hash of a file it copied under a lease; leased again
    with the same identity (ctime included, old enough), its blob stands for it: no
    copy, no hash. New bytes written in place with the mtime set back still change
    the ctime: that file is copied and stored as it now is."""
    src = env.root / "weights.bin"
    first = write_random(src, 64 * MIB, seed=11)  # an ask beats its copy, even when slow
    time.sleep(SETTLED_WHOLE + 0.2)  # only an identity this old vouches for its bytes
    d = DaemonProc(env).wait_ready()
    try:
        task = Task.init(project_name="leases", task_name="unchanged")
        task.upload_artifact("w1", str(src))
        task.flush(wait_for_uploads=True, timeout=120)  # encoded: its hash is known
        task.upload_artifact("w2", str(src))  # unchanged: its blob is the snapshot
        st = src.stat()
        second = overwrite(src, seed=12)  # right after the call: the blob is not written
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime back, ctime moves on
        time.sleep(SETTLED_WHOLE + 0.2)
        task.upload_artifact("w3", str(src))  # old enough, but not the ctime w1 had
        task.flush(wait_for_uploads=True, timeout=120)
        status = daemon_status(env)
        assert (status["leases"], status["leases_unchanged"]) == (3, 1)
        assert read_back(task.id, "w2") == first
        assert read_back(task.id, "w3") == second != first
        task.close()
    finally:
        d.stop()
    assert stored_objects(env.storage) == {first: 64 * MIB, second: 64 * MIB}


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


def reported_then_daemon_killed(env: Env, src: Path) -> Task:
    """Report a big file and SIGKILL the daemon as the call returns, before its copy
    (256 MiB: tens of milliseconds) landed."""
    d = DaemonProc(env).wait_ready()
    task = report("big", src)
    d.kill()
    d.wait_exit()
    assert list(Spool(env.spool).raw.iterdir()) == []  # the copy never landed
    return task


def test_a_daemon_killed_before_its_copy_copies_the_unchanged_file_at_its_next_start(
    env: Env,
) -> None:
    src = env.root / "big.bin"
    old = write_random(src, 256 * MIB, seed=8)
    task = reported_then_daemon_killed(env, src)
    read = Path(task.artifacts["big"].get())  # no daemon: from the unchanged file
    assert hashlib.sha256(read.read_bytes()).hexdigest() == old
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
    from artisync import UploadFailed, UploadTimeout

    src = env.root / "big.bin"
    write_random(src, 256 * MIB, seed=9)
    task = reported_then_daemon_killed(env, src)
    overwrite(src, seed=10)  # no lease holds it any more
    with pytest.raises(UploadTimeout):  # never the new bytes
        task.artifacts["big"].get()
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


def test_a_stopped_daemon_costs_one_short_wait_and_the_caller_copies(env: Env) -> None:
    """No answer within half a second: the SDK copies the file itself; the daemon,
    let go later, finds the caller's copy there and leaves it."""
    src = env.root / "checkpoint.pt"
    old = write_random(src, 2 * LEASE_MIN, seed=12)
    d = DaemonProc(env).wait_ready()
    try:
        task = Task.init(project_name="leases", task_name="stopped")
        os.kill(d.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            task.upload_artifact("ckpt", str(src))
            waited = time.monotonic() - t0
            overwrite(src, seed=13)  # no lease holds it: the caller's copy is the snapshot
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)
        task.flush(wait_for_uploads=True, timeout=120)
        task.close()
    finally:
        d.stop()
    assert waited < 5  # the half-second wait for the answer, not ack_timeout's 10 s
    assert stored_objects(env.storage) == {old: 2 * LEASE_MIN}


@contextlib.contextmanager
def lease_break_time(seconds: int) -> Iterator[None]:
    knob = Path("/proc/sys/fs/lease-break-time")
    before = knob.read_text()
    knob.write_text(str(seconds))
    try:
        yield
    finally:
        knob.write_text(before)


@pytest.mark.skipif(os.geteuid() != 0, reason="sets /proc/sys/fs/lease-break-time: root only")
def test_a_writer_the_kernel_let_through_after_the_break_time_is_refused_by_name(
    env: Env,
) -> None:
    """The daemon stopped mid-copy (SIGSTOP) for longer than the kernel's
    lease-break-time: the writer goes ahead, and the copy, torn, is refused."""
    from artisync import UploadFailed

    src = env.root / "big.bin"
    write_random(src, 256 * MIB, seed=14)
    d = DaemonProc(env).wait_ready()
    with lease_break_time(1):
        try:
            task = report("big", src)
            os.kill(d.proc.pid, signal.SIGSTOP)  # as the call returns: the copy under way
            try:
                t0 = time.monotonic()
                overwrite(src, seed=15)  # waits for the kernel to break the lease
                waited = time.monotonic() - t0
            finally:
                os.kill(d.proc.pid, signal.SIGCONT)
            with pytest.raises(UploadFailed, match=r"big\.bin was not copied.*written"):
                task.flush(wait_for_uploads=True, timeout=120)
            task.close()
        finally:
            d.stop()
    assert waited > 0.5  # the lease held the writer until the kernel broke it
    assert stored_objects(env.storage) == {}


def test_a_record_naming_a_file_the_daemon_never_leased_is_refused(env: Env) -> None:
    """A record's path is its writer's word: a daemon started later copies a file from
    its path only if it leased that very file (its ledger says so)."""
    from artisync._versions import origin
    from artisync.protocol import new_artifact_record
    from artisync.protocol.formats import file_identity

    secret = env.root / "secret.bin"
    write_random(secret, 2 * LEASE_MIN, seed=16)
    task = Task.init(project_name="leases", task_name="forged")  # no daemon: the outbox
    rec = new_artifact_record(
        task_id=task.id,
        dest=task.output_uri,
        name="forged",
        type="file",
        format="file",
        extension=".bin",
        metadata=None,
        delete_after=None,
        origin=origin(),
    )
    size = secret.stat().st_size
    rec["raw"] = {
        "codec": "stored",
        "size": size,
        "leased": file_identity(str(secret), secret.stat()),
    }
    spool = Spool(env.spool)
    spool.append_outbox(dict(rec))
    spool.close_outbox_log()
    task.close()
    d = DaemonProc(env).wait_ready()
    try:
        deadline = time.monotonic() + 30
        while not (items := daemon_status(env)["rejected"]["items"]):
            assert time.monotonic() < deadline, "the forged record was neither refused nor stored"
            time.sleep(0.1)
    finally:
        d.stop()
    assert [i["reason"] for i in items] == [
        f"the file {secret} was not copied into the spool under the daemon's read lease: "
        "this daemon never leased it. This version is lost; report the file again"
    ]
    assert stored_objects(env.storage) == {}


def ways_taken(leaser: Leaser, files: int, size: int, ask_s: float, copy_s: float) -> str:
    """The way ``leaser`` takes for each of ``files`` files of ``size`` bytes, when
    an answer takes ``ask_s`` and a copy ``copy_s``: "a" asked, "c" copied."""
    ways = ""
    for _ in range(files):
        if leaser.cheaper_here(size):
            leaser.copied(size, copy_s)
            ways += "c"
        else:
            leaser.answered(ask_s)
            ways += "a"
    return ways


@pytest.mark.parametrize(("ask_units", "copy_units"), [(1, 4), (8, 4)])
def test_the_other_way_is_tried_once_the_way_taken_cost_sixteen_tries_of_it(
    tmp_path: Path, ask_units: int, copy_units: int
) -> None:
    """Whichever way is cheaper is taken, and the other is tried only once the way
    taken has cost PROBE_SHARE times what a try of it costs: a process that asks
    for 16 MiB files does not copy one every 16th file. (Times in 1/1024 s: sums
    of them are exact.)"""
    client = DaemonClient(load_settings({"HOME": str(tmp_path)}))
    leaser = Leaser(client)
    size, ask_s, copy_s = 16 * MIB, ask_units / 1024, copy_units / 1024
    for _ in range(3):  # what copies cost, measured before
        leaser.copied(size, copy_s)
    ways = ways_taken(leaser, 400, size, ask_s, copy_s)
    cheap, dear = ("a", "c") if ask_units < copy_units else ("c", "a")
    assert ways[0] == "a"  # the first file asks: no answer measured yet
    assert ways.count(dear) >= 4, ways
    # between two tries, the cheap way ran until, with the try, it had cost 16 tries
    runs = [len(run) for run in ways[1:].split(dear)]
    cheap_units, dear_units = sorted((ask_units, copy_units))
    assert set(runs[1:-1]) == {(PROBE_SHARE - 1) * dear_units // cheap_units}, ways
