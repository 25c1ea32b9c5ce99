"""``doctor()`` against real destinations: a folder, and SeaweedFS for S3."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from artisync.daemon.doctor import Check, doctor, format_checks
from tests.faultproxy import FaultProxy

STEPS = ["open", "write", "read", "list", "delete"]


def run_doctor(uri: str, options: dict[str, Any] | None = None) -> list[Check]:
    return asyncio.run(doctor(uri, options or {}), debug=True)


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may create files in; root ignores modes, so make it immutable."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if not chattr or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root and cannot make a folder immutable (chattr +i)")
    try:
        yield path
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_doctor_file_ok_and_leaves_nothing(tmp_path: Path) -> None:
    checks = run_doctor(str(tmp_path / "dest"))
    assert [c.name for c in checks] == STEPS
    assert all(c.ok for c in checks), format_checks(checks)
    assert "read back identical bytes" in checks[2].detail
    assert [p for p in (tmp_path / "dest").rglob("*") if p.is_file()] == []  # probe deleted
    report = format_checks(checks)
    assert report.splitlines()[-1] == "all checks passed"
    assert report.splitlines()[1].startswith("ok    write")


def test_doctor_file_read_only_folder_fails_with_a_reason(unwritable_dir: Path) -> None:
    checks = run_doctor(f"file://{unwritable_dir}")
    by_name = {c.name: c for c in checks}
    assert by_name["open"].ok
    assert not by_name["write"].ok
    assert "access denied" in by_name["write"].detail
    assert "owner and mode" in by_name["write"].detail
    assert [by_name[n].detail for n in ("read", "list", "delete")] == ["skipped: write failed"] * 3
    report = format_checks(checks)
    assert "FAIL  write" in report
    assert report.splitlines()[-1] == "4 of 5 checks failed: write, read, list, delete"


def test_doctor_bad_uri_is_one_failed_check() -> None:
    checks = run_doctor("ftp://host/x")
    assert len(checks) == 1 and not checks[0].ok
    assert "unknown storage scheme 'ftp'" in checks[0].detail


def test_doctor_s3_ok(storage_uri_factory: Any) -> None:
    backend = storage_uri_factory("s3")
    checks = run_doctor(backend.uri, backend.options)
    assert [c.name for c in checks] == STEPS
    assert all(c.ok for c in checks), format_checks(checks)
    assert checks[0].detail == f"s3 backend for {backend.uri}"

    async def leftovers() -> list[str]:
        async with backend.opened(backend.root_uri) as root:
            return [info.key async for info in root.list("")]

    assert asyncio.run(leftovers()) == []


def test_doctor_s3_bad_credentials(storage_uri_factory: Any) -> None:
    backend = storage_uri_factory("s3")
    checks = run_doctor(backend.uri, backend.bad_credentials())
    write = next(c for c in checks if c.name == "write")
    assert not write.ok
    assert write.detail.startswith("access denied")
    assert "check credentials" in write.detail
    assert "SignatureDoesNotMatch" in write.detail
    assert "wrong-secret" not in format_checks(checks)


def test_doctor_s3_missing_bucket(storage_uri_factory: Any) -> None:
    backend = storage_uri_factory("s3")
    checks = run_doctor(backend.missing_bucket_uri, backend.options)
    write = next(c for c in checks if c.name == "write")
    assert not write.ok
    assert write.detail.startswith("bucket 'no-such-")
    assert "does not exist" in write.detail


def test_doctor_s3_unreachable_endpoint(storage_uri_factory: Any) -> None:
    backend = storage_uri_factory("s3")
    with FaultProxy(backend.target) as proxy:
        proxy.set("refuse")
        checks = run_doctor(backend.uri, backend.options_via(proxy.endpoint))
    write = next(c for c in checks if c.name == "write")
    assert not write.ok
    assert f"cannot connect to endpoint {proxy.endpoint}" in write.detail
