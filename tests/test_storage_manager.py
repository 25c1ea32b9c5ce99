"""ClearML's StorageManager over the real backends: a file and a folder round trip
on a folder and on S3 (SeaweedFS), and an upload that outlasts an outage."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.faultproxy import FaultProxy
from tests.harness import Env, run_py, short_tmpdir
from tests.storage_fixtures import _make

ROUND_TRIP = """
import hashlib, os, sys
from pathlib import Path
from artisync import StorageManager as SM
base, work = sys.argv[1], Path(sys.argv[2])
src = work / "model.bin"
src.write_bytes(os.urandom(3 * 2**20))
assert SM.upload_file(str(src), f"{base}/models/model.bin") == f"{base}/models/model.bin"
assert SM.exists_file(f"{base}/models/model.bin") and not SM.exists_file(f"{base}/models/none")
assert SM.get_file_size_bytes(f"{base}/models/model.bin") == 3 * 2**20
copy = SM.get_local_copy(f"{base}/models/model.bin")
assert Path(copy).read_bytes() == src.read_bytes()
folder = work / "data"
(folder / "sub").mkdir(parents=True)
(folder / "a.txt").write_text("a")
(folder / "sub" / "b.csv").write_text("x,y\\n1,2\\n")
SM.upload_folder(str(folder), f"{base}/datasets/d1")
assert sorted(SM.list(f"{base}/datasets/d1")) == ["a.txt", "sub/b.csv"]
assert SM.list(f"{base}/datasets/d1", return_full_path=True)[0] == f"{base}/datasets/d1/a.txt"
out = SM.download_folder(f"{base}/datasets/d1", str(work / "back"))
assert (Path(out) / "sub" / "b.csv").read_text() == "x,y\\n1,2\\n"
got = SM.download_file(f"{base}/models/model.bin", str(work / "dl"))
assert hashlib.sha256(Path(got).read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
print("ok")
"""


def _env(root, backend, options) -> Env:  # type: ignore[no-untyped-def]
    env = Env(root, backend.uri)
    if backend.name != "file":
        lines = [f"[storage.{backend.name}]"] + [
            f"{k} = {json.dumps(v)}" for k, v in options.items()
        ]
        env.config.write_text("\n".join(lines) + "\n")
    return env


@pytest.mark.parametrize("name", ["file", "s3"])
def test_file_and_folder_round_trip(name: str, request: pytest.FixtureRequest) -> None:
    with short_tmpdir() as root:
        backend = _make(name, request, root)
        env = _env(root, backend, backend.options)
        code = f"import sys; sys.argv = ['t', {backend.uri!r}, {str(root)!r}]\n" + ROUND_TRIP
        assert run_py(env, code).stdout.split()[-1] == "ok"


def test_upload_file_outlasts_an_outage(request: pytest.FixtureRequest) -> None:
    """The endpoint refuses connections for 4 s; upload_file returns once it is back."""
    with short_tmpdir() as root:
        backend = _make("s3", request, root)
        proxy = FaultProxy(backend.target).start()
        request.addfinalizer(proxy.stop)
        env = _env(root, backend, backend.options_via(proxy.endpoint))
        proxy.set("refuse")
        threading.Timer(4.0, proxy.set, ("pass",)).start()
        code = f"""
            import os, time
            from artisync import StorageManager
            src = {str(root / "f.bin")!r}
            open(src, "wb").write(os.urandom(100_000))
            t0 = time.monotonic()
            StorageManager.upload_file(src, {backend.uri + "/up/f.bin"!r})
            print(time.monotonic() - t0)
        """
        took = float(run_py(env, code, timeout=120).stdout.split()[-1])
        assert took >= 3.0  # it waited through the outage, it did not fail
        direct = (
            _env(root / "d", backend, backend.options) if (root / "d").mkdir() is None else None
        )
        assert direct is not None
        check = f"""
            from artisync import StorageManager
            print(StorageManager.get_file_size_bytes({backend.uri + "/up/f.bin"!r}))
        """
        assert run_py(direct, check).stdout.split()[-1] == "100000"
        time.sleep(0)
