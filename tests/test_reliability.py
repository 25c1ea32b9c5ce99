"""Nothing acknowledged is ever lost: the fault matrix of tests/faults.py in its short
form, against the file backend and SeaweedFS (S3) behind a fault proxy. The long
form is ``python -m bench.faults``."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from artisync.protocol import Spool
from tests import faults
from tests.faults import SHORT, ChaosProxy, FileTarget, Result, S3Target, Target
from tests.harness import Conn, Env, run_py, short_tmpdir
from tests.records import artifact_record

TargetFactory = Callable[..., Target]


@pytest.fixture
def root() -> Iterator[Path]:
    with short_tmpdir() as d:
        yield d


@pytest.fixture
def make_target(request: pytest.FixtureRequest, root: Path) -> Iterator[TargetFactory]:
    made: list[Target] = []

    def make(name: str, chaos: bool = False) -> Target:
        if name == "file":
            target: Target = FileTarget(root)
        else:
            server = request.getfixturevalue("seaweedfs")
            proxy = ChaosProxy(("127.0.0.1", int(server.port)), rate=0.5) if chaos else None
            target = S3Target(server, proxy)
        made.append(target)
        return target

    yield make
    for target in made:
        target.close()


def _report(result: Result) -> None:
    print(
        f"{result.fault} [{result.backend}]: acknowledged {result.acknowledged}, "
        f"delivered {result.delivered}, verified {result.verified}, lost {result.lost}, "
        f"recovered in {result.recover_s or 0:.1f} s; {'; '.join(result.notes)}"
    )
    result.check()


BOTH = pytest.mark.parametrize("backend", ["file", "s3"])


@BOTH
def test_network_down_then_back(backend: str, make_target: TargetFactory, root: Path) -> None:
    _report(faults.network_down(SHORT, make_target(backend), root))


@BOTH
def test_flaky_network(backend: str, make_target: TargetFactory, root: Path) -> None:
    _report(faults.flaky_network(SHORT, make_target(backend, chaos=True), root))


@BOTH
def test_daemon_sigkilled_twenty_times(
    backend: str, make_target: TargetFactory, root: Path
) -> None:
    _report(faults.daemon_killed(SHORT, make_target(backend), root))


@BOTH
def test_trainer_sigkilled_mid_upload(backend: str, make_target: TargetFactory, root: Path) -> None:
    _report(faults.trainer_killed(SHORT, make_target(backend), root))


@BOTH
def test_training_run_without_daemon(backend: str, make_target: TargetFactory, root: Path) -> None:
    _report(faults.no_daemon(SHORT, make_target(backend), root))


@pytest.mark.parametrize(
    ("backend", "cause", "fix"),
    [("s3", "credentials", "retry"), ("s3", "bucket", "restart"), ("file", "readonly", "retry")],
)
def test_permanent_error_then_fix(
    backend: str, cause: str, fix: str, make_target: TargetFactory, root: Path
) -> None:
    if cause == "readonly" and not faults.can_mount():
        pytest.skip("a read-only storage folder needs a tmpfs mount (root with CAP_SYS_ADMIN)")
    _report(faults.permanent_errors(SHORT, make_target(backend), root, cause, fix))


@BOTH
def test_spool_quota(backend: str, make_target: TargetFactory, root: Path) -> None:
    _report(faults.spool_quota(SHORT, make_target(backend), root))


@BOTH
def test_multi_writer(backend: str, make_target: TargetFactory, root: Path) -> None:
    _report(faults.multi_writer(SHORT, make_target(backend), root))


# ------------------------------------------------------------ retries, precisely


def test_retry_after_is_honoured_and_one_failed_part_is_resent_alone(
    make_target: TargetFactory, root: Path
) -> None:
    target = make_target("s3", chaos=True)
    assert isinstance(target, S3Target) and isinstance(target.proxy, ChaosProxy)
    proxy = target.proxy
    proxy.chaos = False
    env = faults.make_env(root, target)
    spool = Spool(env.spool).ensure()
    tid = "c" * 32
    with faults.running(env, ARTISYNC_RETRY_MAX_ELAPSED="30"):
        # throttled twice (botocore's own attempt, then ours) with Retry-After: 2
        proxy.set("503", count=2, retry_after=2)
        proxy.drop_connections()
        rec = faults.artifact(spool, target.uri, b"throttled" * 100, tid, "t")
        assert faults.submit_all(env, [rec])
        faults.wait_until(lambda: faults.committed_count(env) == 1, 60, "the throttled upload")
        times = [t for t, _ in proxy.log]
        modes = [m for _, m in proxy.log]
        second = modes.index("503", modes.index("503") + 1)
        gap = times[second + 1] - times[second]
        assert gap >= 1.9, f"next attempt {gap:.2f} s after a Retry-After: 2 ({proxy.log})"
        # a multipart upload whose third part is cut off: only that part goes again
        data = os.urandom(17 * faults.MiB)  # parts of 5, 5, 5 and 2 MiB
        rec = faults.artifact(spool, target.uri, data, tid, "big")
        proxy.reset_stats()
        proxy.set("cut", count=1, cut_after=12 * faults.MiB)
        proxy.drop_connections()
        assert faults.submit_all(env, [rec])
        faults.wait_until(lambda: faults.committed_count(env) == 2, 120, "the multipart upload")
    sent = proxy.bytes_up
    assert target.sha256_of(faults.object_key(rec["sha256"])) == rec["sha256"]
    assert sent < len(data) + 5 * faults.MiB + faults.MiB, f"{sent} bytes sent for {len(data)}"
    assert not target.incomplete_uploads()


# ------------------------------------------------------------------ full disk


@pytest.fixture
def tiny_spool(root: Path) -> Iterator[Path]:
    if not faults.can_mount():
        pytest.skip("a full disk needs a small tmpfs mount (root with CAP_SYS_ADMIN)")
    mnt = root / "spool-disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


FULL_DISK = """
import os, sys
from artisync import Task, SpoolFull
t = Task.init(project_name="disk", task_name="full")
outcomes = []
for i in range(12):
    try:
        # a dict's size is not known before it is serialized: the disk check cannot
        # see it coming, the background write hits ENOSPC
        t.upload_artifact(f"d{i}", {"blob": "x" * 700_000, "i": i})
        outcomes.append("ok")
    except SpoolFull as exc:
        outcomes.append("full")
        print("raised:", exc, file=sys.stderr)
try:
    t.flush()
    outcomes.append("flushed")
except SpoolFull as exc:
    outcomes.append("flush-full")
    print("raised:", exc, file=sys.stderr)
print(" ".join(outcomes))
"""


def test_full_disk_is_a_clear_error_never_a_silent_drop(root: Path, tiny_spool: Path) -> None:
    env = Env(root)
    env.vars["ARTISYNC_SPOOL"] = str(tiny_spool / "spool")
    env.spool = tiny_spool / "spool"
    # while the trainer runs, nothing can be uploaded (a file where the destination
    # folder should be), so nothing in the spool can be freed and the disk stays full
    env.storage.write_text("not a folder")
    with faults.running(env) as d:
        # the daemon's own journal shares the full disk: it must refuse, not crash
        out = run_py(env, FULL_DISK, timeout=120, ARTISYNC_SPOOL_WAIT_TIMEOUT="3")
        outcomes = out.stdout.split()
        assert "full" in outcomes or "flush-full" in outcomes, out.stdout + out.stderr
        said = re.search(r"not stored: .*(disk is full|free)", out.stderr, re.I)
        assert said, out.stderr
        assert d.proc.poll() is None, d.output()[-2000:]
        env.storage.unlink()  # the destination is back: what failed for it goes again
        faults.cli(env, "retry")
        # every record that was taken is whole, and gets delivered once there is room
        stored = outcomes.count("ok")
        faults.wait_until(
            lambda: (
                faults.journal(env, "SELECT count(*) FROM records WHERE state!='committed'")[0][0]
                == 0
            ),
            120,
            "delivery",
        )
        with Conn(env.socket) as c:
            c.hello()
            assert c.call("status")["ok"]
    committed = faults.journal(env, "SELECT count(*) FROM records WHERE kind='artifact'")[0][0]
    assert committed <= stored
    rows = faults.journal(env, "SELECT body FROM records WHERE kind='artifact'")
    import msgpack

    for (body,) in rows:
        rec = msgpack.unpackb(body)
        obj = env.storage / faults.object_key(rec["sha256"])
        assert hashlib.sha256(obj.read_bytes()).hexdigest() == rec["sha256"]
    assert not list((env.spool / "tmp").iterdir())


def test_daemon_refuses_records_when_its_journal_disk_is_full(root: Path, tiny_spool: Path) -> None:
    env = Env(root)
    env.vars["ARTISYNC_SPOOL"] = str(tiny_spool / "spool")
    env.spool = tiny_spool / "spool"
    spool = Spool(env.spool).ensure()
    recs = [artifact_record(spool, str(env.storage), os.urandom(5000)) for _ in range(3)]
    filler = tiny_spool / "filler"
    with faults.running(env) as d:
        with open(filler, "wb") as f:  # fill the disk to the last block
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        refused = []
        with Conn(env.socket) as c:
            c.hello()
            for i in range(200):  # until the journal's free pages are used up
                r = c.call("submit", record=_task(env, i))
                if not r["ok"]:
                    refused.append(r)
                    break
            assert refused and refused[0]["error"] == "journal", refused
            assert "full" in refused[0]["message"]
        assert d.proc.poll() is None
        filler.unlink()
        with Conn(env.socket) as c:
            c.hello()
            for rec in recs:
                assert c.call("submit", record=rec)["ok"]
            assert c.call("wait", timeout=60)["ok"]
    for rec in recs:
        assert (env.storage / faults.object_key(rec["sha256"])).is_file()


def _task(env: Env, i: int) -> dict:
    rec = faults.task_event(str(env.storage), f"{i:032x}")
    rec["comment"] = "x" * 20_000  # journal pages fill up quickly
    return rec


@BOTH
def test_a_folder_through_a_flaky_network_arrives_whole(
    backend: str, make_target: TargetFactory, root: Path
) -> None:
    """A folder's members are sent while the rest are still being unpacked, ahead of
    their record: under random faults some of those early sends fail, and the record's
    own send must still deliver every member (and report nothing missing)."""
    target = make_target(backend, chaos=True)
    env = faults.make_env(root, target)
    folder = root / "members"
    folder.mkdir()
    expected = {}
    for i in range(400):
        data = os.urandom(1000 + 97 * i)
        (folder / f"m{i:03d}.bin").write_bytes(data)
        expected[hashlib.sha256(data).hexdigest()] = len(data)
    with faults.running(env, ARTISYNC_RETRY_MAX_ELAPSED="20", ARTISYNC_OFFLINE_MAX_BACKOFF="4"):
        run_py(
            env,
            f"""
            from artisync import Task
            task = Task.init(project_name="faults", task_name="folder", output_uri={target.uri!r})
            task.upload_artifact("members", artifact_object={str(folder)!r})
            task.flush(wait_for_uploads=True)
            task.close()
            """,
            timeout=240,
        )
    missing = [sha for sha in expected if target.sha256_of(faults.object_key(sha)) != sha]
    assert not missing, f"{len(missing)} of 400 members missing after the folder committed"
    if isinstance(target, S3Target) and isinstance(target.proxy, ChaosProxy):
        assert target.proxy.faults > 0
    faults.assert_no_leftovers(env, target)
