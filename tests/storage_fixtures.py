"""Storage fixtures: one real server per backend per session, a fresh bucket per test.

Import them into a conftest with ``from tests.storage_fixtures import *``.

- ``seaweedfs``, ``fake_gcs``, ``azurite``: session-scoped servers. A missing binary
  skips the test with install instructions, or fails it when
  ``ARTISYNC_REQUIRE_SERVERS=1`` (CI).
- ``backend``: parametrized over ``BACKENDS``; a :class:`Backend` whose bucket or
  container is new for this test and removed after it. Restrict it with
  ``@pytest.mark.parametrize("backend", ["s3", "azure"], indirect=True)``.
- ``storage_uri_factory``: ``factory(name) -> Backend``, for a test that wants a
  given backend (or several).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from artisync.daemon.storage.base import Storage, open_storage
from tests.servers import (
    INSTALL_HINTS,
    Azurite,
    FakeGCS,
    SeaweedFS,
    find_azurite,
    find_fake_gcs,
    find_weed,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "azurite",
    "backend",
    "fake_gcs",
    "missing_server",
    "seaweedfs",
    "storage_uri_factory",
]

BACKENDS = ["file", "s3", "gs", "azure"]
PREFIX = "pre/fix"  # every backend URI carries a prefix, so its handling is always tested


def missing_server(name: str) -> NoReturn:
    message = f"{name} not installed: {INSTALL_HINTS[name]}"
    if os.environ.get("ARTISYNC_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{message} (ARTISYNC_REQUIRE_SERVERS=1 forbids skipping)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    weed = find_weed() or missing_server("seaweedfs")
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), weed=weed) as server:
        yield server


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGCS]:
    binary = find_fake_gcs() or missing_server("fake-gcs-server")
    with FakeGCS(tmp_path_factory.mktemp("fakegcs"), binary=binary) as server:
        yield server


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    found = find_azurite() or missing_server("azurite")
    with Azurite(tmp_path_factory.mktemp("azurite"), node=found[0], main=found[1]) as server:
        yield server


@dataclass
class Backend:
    """A fresh destination on one backend: ``uri`` (with a prefix) and ``options``."""

    name: str
    bucket: str  # bucket, container, or the file root
    uri: str
    options: dict[str, Any]
    root_uri: str  # the same bucket without the prefix
    server: Any = None  # SeaweedFS / FakeGCS / Azurite, None for file

    @property
    def pair(self) -> tuple[str, dict[str, Any]]:
        return self.uri, dict(self.options)

    def open(self, uri: str | None = None, **overrides: Any) -> Storage:
        """A Storage for ``uri`` (default: this backend's); the caller closes it
        (``aclose()``) in the event loop that used it."""
        return open_storage(uri or self.uri, {**self.options, **overrides})

    @contextlib.asynccontextmanager
    async def opened(self, uri: str | None = None, **overrides: Any) -> AsyncIterator[Storage]:
        storage = self.open(uri, **overrides)
        try:
            yield storage
        finally:
            await storage.aclose()

    @property
    def target(self) -> tuple[str, int]:
        """Where a fault proxy should forward to."""
        return ("127.0.0.1", int(self.server.port))

    def options_via(self, endpoint: str) -> dict[str, Any]:
        """Options that reach the server through ``endpoint`` (e.g. a FaultProxy)."""
        if self.name == "azure":
            return {
                **self.options,
                "connection_string": self.server.connection_string(f"{endpoint}/devstoreaccount1"),
            }
        if self.name in ("s3", "gs"):
            return {**self.options, "endpoint_url": endpoint}
        raise ValueError(f"{self.name} has no network endpoint")

    def bad_credentials(self) -> dict[str, Any]:
        if self.name == "s3":
            return {**self.options, "secret_access_key": "wrong-secret"}
        if self.name == "azure":
            return {
                **self.options,
                "connection_string": self.server.connection_string(
                    key="d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
                ),
            }
        raise ValueError(f"{self.name} does not authenticate here")

    @property
    def missing_bucket_uri(self) -> str:
        return f"{self.name}://no-such-{secrets.token_hex(4)}/{PREFIX}"


def _unique() -> str:
    return f"at-{secrets.token_hex(6)}"  # valid S3 bucket / GCS bucket / Azure container


def _s3_admin(server: SeaweedFS, max_attempts: int = 1) -> Any:
    """A plain botocore client for setting up and inspecting buckets in tests."""
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": max_attempts}),
    )


def _s3_empty_and_delete(client: Any, bucket: str) -> None:
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    for up in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


def _make(name: str, request: pytest.FixtureRequest, tmp: Path) -> Backend:
    bucket = _unique()
    if name == "file":
        root = tmp / bucket
        return Backend(name, str(root), str(root / PREFIX), {"fsync": False}, str(root))
    if name == "s3":
        server = request.getfixturevalue("seaweedfs")
        admin = _s3_admin(server)
        admin.create_bucket(Bucket=bucket)

        def drop_bucket() -> None:
            _s3_empty_and_delete(admin, bucket)
            admin.close()

        request.addfinalizer(drop_bucket)
        options = {
            "endpoint_url": server.endpoint,
            "region": "us-east-1",
            "access_key_id": server.access_key,
            "secret_access_key": server.secret_key,
        }
    elif name == "gs":
        server = request.getfixturevalue("fake_gcs")
        server.create_bucket(bucket)
        request.addfinalizer(lambda: server.delete_bucket(bucket))
        options = {"endpoint_url": server.endpoint}
    elif name == "azure":
        from azure.storage.blob import BlobServiceClient

        server = request.getfixturevalue("azurite")
        service = BlobServiceClient.from_connection_string(
            server.connection_string(), api_version=server.api_version
        )
        service.create_container(bucket)

        def drop_container() -> None:
            service.delete_container(bucket)
            service.close()

        request.addfinalizer(drop_container)
        options = {
            "connection_string": server.connection_string(),
            "api_version": server.api_version,
        }
    else:
        raise ValueError(f"unknown backend {name!r}")
    scheme_root = f"{name}://{bucket}"
    return Backend(name, bucket, f"{scheme_root}/{PREFIX}", options, scheme_root, server)


@pytest.fixture
def storage_uri_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Backend]:
    def factory(name: str) -> Backend:
        return _make(name, request, tmp_path)

    return factory


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return _make(request.param, request, tmp_path)
