"""The artifacts example end to end against real S3, GCS and Azure servers on loopback.

Each test runs the real daemon, SDK and CLI processes; the TOML config (or the
providers' own variables) carries the endpoints and credentials, as an
operator's would. Reading back happens in a fresh process that has only storage
access: another spool, no daemon socket, another cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import pickle
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from artisync.protocol import runs_prefix, task_key
from tests.harness import REPO, DaemonProc, Env, run_py, short_tmpdir
from tests.storage_fixtures import Backend

EXAMPLES = REPO / "examples"
SAMPLES = EXAMPLES / "data_samples"
CLOUD = ["s3", "gs", "azure"]
BAD_SECRET = "wrong-secret-c0ffee"

Factory = Callable[[str], Backend]


# -- helpers ---------------------------------------------------------------------------------
def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def toml_table(header: str, options: dict[str, Any]) -> str:
    lines = [header, *(f"{k} = {toml_value(v)}" for k, v in options.items())]
    return "\n".join(lines) + "\n\n"


def scheme_defaults(*backends: Backend) -> str:
    """``[storage.<scheme>]`` tables with each backend's endpoint and credentials."""
    return "".join(toml_table(f"[storage.{b.name}]", b.options) for b in backends)


@pytest.fixture
def world() -> Iterator[Env]:
    with short_tmpdir() as root:
        yield Env(root)


def cli(
    env: Env, *args: str, timeout: float = 60, **extra: str
) -> subprocess.CompletedProcess[str]:
    """``artisync ARGS`` in a subprocess with the env's settings."""
    code = "import sys; from artisync.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env.environ(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=env.root,
    )


def wait_committed(env: Env, daemon: DaemonProc, expect_failed: bool = False) -> None:
    out = cli(env, "wait", "--timeout", "45")
    assert out.returncode == (1 if expect_failed else 0), (
        f"{out.stdout}\n{out.stderr}\n{daemon.output()[-4000:]}"
    )


def run_example(env: Env, **extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, "artifacts_example.py"],
        env=env.environ(**extra),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXAMPLES,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def all_keys(backend: Backend, uri: str | None = None) -> list[str]:
    async def go() -> list[str]:
        async with backend.opened(uri) as st:
            return [info.key async for info in st.list("")]

    return asyncio.run(go())


def verify_objects(backend: Backend) -> int:
    """Download every object under ``objects/`` and check it hashes to its key."""

    async def go() -> int:
        n = 0
        async with backend.opened() as st:
            async for info in st.list("objects/sha256/"):
                data = await st.get_bytes(info.key)
                sha = info.key.rsplit("/", 1)[1]
                assert hashlib.sha256(data).hexdigest() == sha, info.key
                assert info.key == f"objects/sha256/{sha[:2]}/{sha}"
                n += 1
        return n

    return asyncio.run(go())


def read_back(env: Env, project: str, name: str, out: Path) -> dict[str, Any]:
    """From a fresh process with only storage access: every artifact's ``get()``, pickled."""
    proc = run_py(
        env,
        f"""
        import pickle
        from pathlib import Path
        import numpy as np
        from artisync import Task

        def files(folder):
            root = Path(folder)
            return {{str(p.relative_to(root)): p.read_bytes()
                     for p in root.rglob("*") if p.is_file()}}

        t = Task.get_task(project_name={project!r}, task_name={name!r})
        got = {{"task": [t.id, t.status, t.project, t.name], "names": sorted(t.artifacts)}}
        for n, a in t.artifacts.items():
            value = a.get()
            if a.type in ("folder", "wildcard") or a.format == "tree":
                value = files(value)
            elif a.type == "file":
                value = Path(value).read_bytes()
            elif hasattr(value, "getpixel"):
                value = (value.mode, value.size, np.asarray(value))
            got[n] = {{"value": value, "type": a.type, "meta": a.metadata, "hash": a.hash}}
        Path({str(out)!r}).write_bytes(pickle.dumps(got))
        """,
        ARTISYNC_SPOOL=str(env.root / "reader-spool"),
        ARTISYNC_SOCKET=str(env.root / "no-daemon.sock"),
        XDG_CACHE_HOME=str(env.root / "reader-cache"),
    )
    assert not (env.root / "reader-spool" / "blobs").exists()
    assert "Unclosed" not in proc.stderr, proc.stderr  # the reader closes its clients
    got: dict[str, Any] = pickle.loads(out.read_bytes())
    return got


def secrets_of(backend: Backend) -> list[str]:
    if backend.name == "s3":
        return [backend.options["secret_access_key"]]
    if backend.name == "azure":
        return [backend.options["connection_string"].split("AccountKey=")[1].split(";")[0]]
    return []


def sample_files(pattern: str = "*") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(SAMPLES.glob(pattern)) if p.is_file()}


def expected_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    df = pd.DataFrame(
        {"num_legs": [2, 4, 8, 0], "num_wings": [2, 0, 0, 0], "num_specimen_seen": [10, 2, 1, 8]},
        index=["falcon", "dog", "spider", "fish"],
    )
    final = df.copy()
    final.loc["ant"] = [6, 0, 100]
    return df, final


# -- the example, end to end -----------------------------------------------------------------
@pytest.mark.parametrize("scheme", CLOUD)
def test_artifacts_example_round_trips_through_cloud_storage(
    scheme: str, storage_uri_factory: Factory, world: Env
) -> None:
    backend = storage_uri_factory(scheme)
    world.config.write_text(scheme_defaults(backend))
    world.vars["ARTISYNC_OUTPUT_URI"] = backend.uri
    daemon = DaemonProc(world).wait_ready()
    try:
        stdout = run_example(world)
        wait_committed(world, daemon)
    finally:
        daemon.stop()
    assert f"-> {backend.uri}" in stdout
    for secret in secrets_of(backend):
        assert secret not in daemon.output() + stdout

    # every object in the bucket is intact, and the records point at them
    keys = all_keys(backend)
    assert verify_objects(backend) >= 7
    (index,) = [k for k in keys if k.startswith(runs_prefix("examples", "artifacts example"))]
    task_id = index.rsplit("-", 1)[1]
    assert task_key(task_id) in keys
    assert not any(k.startswith("_artisync") for k in keys)
    verify = run_py(
        world,
        f"import runpy, sys; sys.argv = ['v', 'examples', 'artifacts example']; "
        f"runpy.run_path({str(EXAMPLES / 'verify_storage.py')!r}, run_name='__main__')",
        ARTISYNC_SOCKET=str(world.root / "no-daemon.sock"),
        ARTISYNC_SPOOL=str(world.root / "verify-spool"),
        XDG_CACHE_HOME=str(world.root / "verify-cache"),
    )
    assert "8 artifacts, all verified" in verify.stdout, verify.stdout

    got = read_back(world, "examples", "artifacts example", world.root / "got.pickle")
    assert got["task"] == [task_id, "completed", "examples", "artifacts example"]
    assert got["names"] == sorted(
        [
            "train",
            "Pandas",
            "local file",
            "dictionary",
            "Numpy Eye",
            "pillow_image",
            "local folder",
            "wildcard jpegs",
        ]
    )
    df, final = expected_frames()
    pd.testing.assert_frame_equal(got["Pandas"]["value"], df)
    pd.testing.assert_frame_equal(got["train"]["value"], final)
    assert got["train"]["meta"] == {"counting": "legs", "max legs": 69}
    assert got["dictionary"]["value"] == df.to_dict()
    np.testing.assert_array_equal(got["Numpy Eye"]["value"], np.eye(100, 100))
    assert got["Numpy Eye"]["value"].dtype == np.eye(1).dtype
    with Image.open(SAMPLES / "dancing.jpg") as im:
        mode, size, pixels = got["pillow_image"]["value"]
        assert (mode, size) == (im.mode, im.size)
        np.testing.assert_array_equal(pixels, np.asarray(im))
    assert got["local file"]["value"] == (SAMPLES / "dancing.jpg").read_bytes()
    assert got["local folder"]["value"] == sample_files()
    assert got["wildcard jpegs"]["value"] == sample_files("*.jpg")
    for name in got["names"]:
        assert len(got[name]["hash"]) == 64


# -- the providers' own environment, no TOML -------------------------------------------------
def provider_env(backend: Backend, world: Env) -> dict[str, str]:
    """What a user who has these set for other tools would have, and nothing else."""
    if backend.name == "s3":
        return {
            "AWS_ENDPOINT_URL_S3": backend.server.endpoint,
            "AWS_ACCESS_KEY_ID": backend.server.access_key,
            "AWS_SECRET_ACCESS_KEY": backend.server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(world.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(world.root / "no-aws-credentials"),
        }
    if backend.name == "gs":
        return {"STORAGE_EMULATOR_HOST": backend.server.endpoint}
    return {
        "AZURE_STORAGE_CONNECTION_STRING": backend.server.connection_string(),
        "AZURE_STORAGE_API_VERSION": backend.server.api_version,
    }


@pytest.mark.parametrize("scheme", CLOUD)
def test_provider_environment_alone_is_enough(
    scheme: str, storage_uri_factory: Factory, world: Env
) -> None:
    """Daemon, reader, ``ls``, ``get`` and ``doctor`` with an empty config file and only
    the provider's standard variables."""
    backend = storage_uri_factory(scheme)
    penv = provider_env(backend, world)
    world.vars["ARTISYNC_OUTPUT_URI"] = backend.uri
    daemon = DaemonProc(world, **penv).wait_ready()
    try:
        run_py(
            world,
            """
            import numpy as np
            from artisync import Task
            t = Task.init(project_name="env only", task_name="run 1")
            t.upload_artifact("cfg", {"lr": 0.1, "layers": [3, 4]})
            t.upload_artifact("weights", np.arange(20.0).reshape(4, 5))
            t.close()
            """,
            **penv,
        )
        wait_committed(world, daemon)
    finally:
        daemon.stop()
    reader = {
        "ARTISYNC_SPOOL": str(world.root / "reader-spool"),
        "ARTISYNC_SOCKET": str(world.root / "no-daemon.sock"),
        "XDG_CACHE_HOME": str(world.root / "reader-cache"),
        **penv,
    }
    out = run_py(
        world,
        """
        from artisync import Task
        t = Task.get_task(project_name="env only", task_name="run 1")
        print(t.artifacts["cfg"].get(), t.artifacts["weights"].get().sum())
        """,
        **reader,
    )
    assert out.stdout.split("\n")[0] == "{'lr': 0.1, 'layers': [3, 4]} 190.0"
    assert "Unclosed" not in out.stderr, out.stderr

    ls = cli(world, "ls", "env only", "run 1", **reader)
    assert ls.returncode == 0, ls.stderr
    assert [line.split("\t")[0] for line in ls.stdout.splitlines()[1:]] == ["cfg", "weights"]
    projects = cli(world, "ls", **reader)
    assert projects.stdout.split("\n")[0] == "env only", projects
    dest = world.root / "cfg.json"
    got = cli(world, "get", "env only/run 1/cfg", "-o", str(dest), **reader)
    assert got.returncode == 0, got.stderr
    assert json.loads(dest.read_text()) == {"lr": 0.1, "layers": [3, 4]}
    doctor = cli(world, "doctor", **reader)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    for proc in (ls, projects, got, doctor):
        assert "Unclosed" not in proc.stderr, proc.stderr


# -- per-task destinations -------------------------------------------------------------------
def test_each_task_lands_in_its_own_destination(storage_uri_factory: Factory, world: Env) -> None:
    s3, azure = storage_uri_factory("s3"), storage_uri_factory("azure")
    folder = world.root / "folder-store"
    world.config.write_text(scheme_defaults(s3, azure))
    world.vars["ARTISYNC_OUTPUT_URI"] = str(folder)  # the default: a plain folder
    daemon = DaemonProc(world).wait_ready()
    try:
        out = run_py(
            world,
            f"""
            from artisync import Task
            ids = []
            for name, uri in [("to-s3", {s3.uri!r}), ("to-azure", {azure.uri!r}),
                              ("to-default", None)]:
                t = Task.init(project_name="dests", task_name=name, output_uri=uri)
                t.upload_artifact("which", {{"task": name, "pad": "x" * 5000}})  # an object
                t.close()
                ids.append(t.id)
            print(" ".join(ids))
            """,
        )
        wait_committed(world, daemon)
    finally:
        daemon.stop()
    s3_id, azure_id, file_id = out.stdout.split()
    s3_keys, azure_keys = all_keys(s3), all_keys(azure)
    file_keys = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    for keys, mine in ((s3_keys, s3_id), (azure_keys, azure_id), (file_keys, file_id)):
        tasks = {k.split("/")[1] for k in keys if k.startswith("tasks/")}
        assert tasks == {mine}, keys
        assert task_key(mine) in keys
        assert sum(k.startswith("objects/") for k in keys) == 1

    # and each is found where it went, from a process with only storage access
    reader = run_py(
        world,
        f"""
        from artisync import Task
        for name, uri in [("to-s3", {s3.uri!r}), ("to-azure", {azure.uri!r}),
                          ("to-default", None)]:
            t = Task.get_task(project_name="dests", task_name=name, output_uri=uri)
            print(t.id, t.artifacts["which"].get()["task"])
        """,
        ARTISYNC_SPOOL=str(world.root / "reader-spool"),
        ARTISYNC_SOCKET=str(world.root / "no-daemon.sock"),
        XDG_CACHE_HOME=str(world.root / "reader-cache"),
    )
    assert reader.stdout.split() == [s3_id, "to-s3", azure_id, "to-azure", file_id, "to-default"]


# -- credentials per bucket ------------------------------------------------------------------
def test_override_matches_whole_buckets_and_path_segments() -> None:
    from artisync.daemon.config import load_config
    from artisync.protocol import load_settings

    with short_tmpdir() as root:
        config = root / "c.toml"
        config.write_text(
            toml_table("[storage.s3]", {"region": "r0", "part_size": 6})
            + toml_table("[[storage.override]]", {"match": "s3://data", "region": "r1"})
            + toml_table("[[storage.override]]", {"match": "s3://data/runs/", "region": "r2"})
            + toml_table("[[storage.override]]", {"match": "/mnt/shared", "fsync": False})
        )
        cfg = load_config(load_settings({"ARTISYNC_CONFIG": str(config), "HOME": str(root)}))
    region = {
        "s3://data": "r1",
        "s3://data/": "r1",
        "s3://data/other": "r1",
        "s3://data/runs": "r2",
        "s3://data/runs/a": "r2",
        "s3://data/runs-old": "r1",
        "s3://data-old/runs": "r0",
        "s3://dat": "r0",
    }
    for uri, expected in region.items():
        assert cfg.options_for(uri) == {"region": expected, "part_size": 6}, uri
    assert cfg.options_for("/mnt/shared/x") == {"fsync": False}
    assert cfg.options_for("/mnt/shared2") == {}
    assert cfg.options_for("gs://data") == {}


def test_credentials_per_bucket_from_overrides(storage_uri_factory: Factory, world: Env) -> None:
    """Three buckets on one endpoint: one uses the scheme's default credentials, one an
    override with other (valid) credentials, one an override with a bad secret. The
    bad one's name is a string prefix of the default one's, so a match must stop at
    the bucket's end. The bad one's records fail with a reason, the others are
    delivered, and no secret shows up in status or the daemon's log."""
    bad = storage_uri_factory("s3")
    server = bad.server
    from tests.storage_fixtures import _s3_admin, _s3_empty_and_delete

    admin = _s3_admin(server)
    plain_bucket, other_bucket = f"{bad.bucket}-plain", f"{bad.bucket}x-other"
    for bucket in (plain_bucket, other_bucket):
        admin.create_bucket(Bucket=bucket)
    try:
        creds = {"access_key_id": server.access_key, "secret_access_key": server.secret_key}
        world.config.write_text(
            toml_table(
                "[storage.s3]", {"endpoint_url": server.endpoint, "region": "us-east-1", **creds}
            )
            + toml_table(
                "[[storage.override]]",
                {"match": bad.root_uri, **creds, "secret_access_key": BAD_SECRET},
            )
            + toml_table(
                "[[storage.override]]",
                {"match": f"s3://{other_bucket}/", **creds, "part_size": 5 * 1024 * 1024},
            )
        )
        targets = {
            "bad": bad.uri,
            "plain": f"s3://{plain_bucket}/runs",
            "other": f"s3://{other_bucket}",
        }
        daemon = DaemonProc(world).wait_ready()
        try:
            out = run_py(
                world,
                f"""
                from artisync import Task
                for name, uri in {targets!r}.items():
                    t = Task.init(project_name="creds", task_name=name, output_uri=uri)
                    t.upload_artifact("payload", {{"n": name, "pad": "x" * 5000}})  # an object
                    t.close()
                    print(name, t.id)
                """,
            )
            wait_committed(world, daemon, expect_failed=True)
            status = cli(world, "status", "--json")
        finally:
            daemon.stop()
        ids = dict(line.split() for line in out.stdout.splitlines())
        assert status.returncode == 1, status.stderr
        st = json.loads(status.stdout)
        failed = st["failed"]["items"]
        assert failed and {item["dest"] for item in failed} == {targets["bad"]}, failed
        assert {item["task_id"] for item in failed} == {ids["bad"]}
        for item in failed:
            assert "access denied" in item["reason"], item
            assert "check credentials" in item["reason"], item
        assert st["failed"]["records"] == len(failed) >= 2
        for name in ("plain", "other"):
            keys = [
                o["Key"]
                for o in admin.list_objects_v2(Bucket=targets[name].split("/")[2])["Contents"]
            ]
            prefix = "runs/" if name == "plain" else ""
            assert f"{prefix}{task_key(ids[name])}" in keys, keys
            assert sum(k.startswith(f"{prefix}objects/") for k in keys) == 1
        assert admin.list_objects_v2(Bucket=bad.bucket).get("KeyCount", 0) == 0
        shown = status.stdout + daemon.output()
        assert BAD_SECRET not in shown and server.secret_key not in shown
    finally:
        for bucket in (plain_bucket, other_bucket):
            _s3_empty_and_delete(admin, bucket)
        admin.close()


# -- the service's part-count limit ----------------------------------------------------------
@pytest.mark.parametrize("scheme", ["s3", "azure"])
def test_parts_grow_to_stay_within_the_services_part_limit(
    scheme: str, storage_uri_factory: Factory, tmp_path: Path
) -> None:
    """S3 allows 10,000 parts, Azure 50,000 blocks: with the default 8 MiB parts an
    80 GB checkpoint would fail. Shown here with the limit lowered to 2 parts."""
    backend = storage_uri_factory(scheme)
    part = (5 if scheme == "s3" else 1) * 1024 * 1024
    size = 2 * part + 1234  # three parts at the configured size
    data = hashlib.sha256(b"seed").digest() * (size // 32 + 1)
    src = tmp_path / "big"
    src.write_bytes(data[:size])
    digest = hashlib.sha256(data[:size]).hexdigest()

    async def go() -> None:
        async with backend.opened(part_size=part, multipart_threshold=part) as st:
            st.max_parts = 2  # type: ignore[attr-defined]
            await st.put("objects/big", src, size=size, sha256=digest)
            got = await st.get("objects/big", tmp_path / "back")
            assert got.sha256 == digest

    asyncio.run(go())
    name = f"{backend.uri.split('/', 3)[3]}/objects/big"
    if scheme == "s3":
        from tests.storage_fixtures import _s3_admin

        admin = _s3_admin(backend.server)
        etag = admin.head_object(Bucket=backend.bucket, Key=name)["ETag"]
        admin.close()
        assert etag.strip('"').endswith("-2"), etag
    else:
        from azure.storage.blob import BlobClient

        blob = BlobClient.from_connection_string(
            backend.options["connection_string"],
            backend.bucket,
            name,
            api_version=backend.options["api_version"],
        )
        committed, _ = blob.get_block_list("committed")
        blob.close()
        assert len(committed) == 2


# -- artisync doctor -------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", CLOUD)
def test_doctor_cli_passes_for_a_good_destination(
    scheme: str, storage_uri_factory: Factory, world: Env
) -> None:
    backend = storage_uri_factory(scheme)
    world.config.write_text(scheme_defaults(backend))
    out = cli(world, "doctor", backend.uri)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert out.stdout.splitlines()[-1] == "all checks passed"
    for step in ("open", "write", "read", "list", "delete"):
        assert re.search(rf"^ok +{step} ", out.stdout, re.M), out.stdout
    assert all_keys(backend, backend.root_uri) == []  # the probe was cleaned up


@pytest.mark.parametrize("style", ["account_key", "key_without_name", "sas_token"])
def test_doctor_cli_azure_credential_styles(
    style: str, storage_uri_factory: Factory, world: Env
) -> None:
    """Besides a connection string: account URL with a shared key (the account name
    given, or read from the URL), or with a SAS token."""
    import datetime as dt

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from tests.servers import AZURITE_KEY

    backend = storage_uri_factory("azure")
    options: dict[str, Any] = {
        "account_url": backend.server.endpoint,
        "api_version": backend.server.api_version,
    }
    if style == "account_key":
        options.update(account_name="devstoreaccount1", account_key=AZURITE_KEY)
    elif style == "key_without_name":
        options.update(account_key=AZURITE_KEY)
    else:
        options["sas_token"] = generate_container_sas(
            "devstoreaccount1",
            backend.bucket,
            account_key=AZURITE_KEY,
            permission=ContainerSasPermissions(
                read=True, write=True, delete=True, list=True, add=True, create=True
            ),
            expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        )
    world.config.write_text(toml_table("[storage.azure]", options))
    out = cli(world, "doctor", backend.uri)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert AZURITE_KEY not in out.stdout + out.stderr


@pytest.mark.parametrize("scheme", ["s3", "azure"])  # fake-gcs-server does not authenticate
def test_doctor_cli_fails_clearly_on_bad_credentials(
    scheme: str, storage_uri_factory: Factory, world: Env
) -> None:
    backend = storage_uri_factory(scheme)
    bad = backend.bad_credentials()
    world.config.write_text(toml_table(f"[storage.{scheme}]", bad))
    out = cli(world, "doctor", backend.uri)
    assert out.returncode == 1, f"{out.stdout}\n{out.stderr}"
    assert re.search(r"^FAIL +write +access denied", out.stdout, re.M), out.stdout
    assert "check credentials" in out.stdout
    for secret in secrets_of(Backend(scheme, "", "", bad, "")):
        assert secret not in out.stdout + out.stderr


def test_doctor_cli_flags_an_unknown_option(storage_uri_factory: Factory, world: Env) -> None:
    backend = storage_uri_factory("s3")
    options = {**backend.options, "endpoint": backend.options["endpoint_url"]}  # a typo
    world.config.write_text(toml_table("[storage.s3]", options))
    out = cli(world, "doctor", backend.uri)
    assert out.returncode == 1, f"{out.stdout}\n{out.stderr}"
    assert re.search(r"^FAIL +options +unknown option\(s\) endpoint; s3 reads: ", out.stdout, re.M)
    assert "endpoint_url" in out.stdout and "all checks passed" not in out.stdout
    assert "ignoring unknown s3 storage option(s) endpoint" in out.stderr
    assert backend.options["secret_access_key"] not in out.stdout + out.stderr


@pytest.mark.parametrize("scheme", CLOUD)
def test_doctor_cli_fails_clearly_on_a_missing_bucket(
    scheme: str, storage_uri_factory: Factory, world: Env
) -> None:
    backend = storage_uri_factory(scheme)
    world.config.write_text(scheme_defaults(backend))
    uri = backend.missing_bucket_uri
    out = cli(world, "doctor", uri)
    assert out.returncode == 1, f"{out.stdout}\n{out.stderr}"
    bucket = uri.split("/")[2]
    kind = "container" if scheme == "azure" else "bucket"
    line = rf"^FAIL +write +{kind} '{bucket}' does not exist.*create the {kind} or fix the URI"
    assert re.search(line, out.stdout, re.M), out.stdout


# -- warming up at start ----------------------------------------------------------------------
def _status(env: Env) -> dict[str, Any]:
    proc = cli(env, "status", "--json")
    st: dict[str, Any] = json.loads(proc.stdout)
    return st


def _until_warm(env: Env, within: float) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + within
    while not (st := _status(env)).get("warm"):
        assert time.monotonic() < deadline, f"not warm after {within} s: {st}"
        time.sleep(0.2)
    return st


def test_a_started_daemon_opens_its_destination_before_any_record_needs_it(
    storage_uri_factory: Factory, world: Env
) -> None:
    """Its backend loaded and its client open (a first look for prune's sweeps, a real
    request), so that the first record does not wait on them; ``status`` says ``warm``.
    A destination it cannot reach does not hold it up."""
    from tests.faultproxy import FaultProxy

    backend = storage_uri_factory("s3")
    with FaultProxy(backend.target) as proxy:
        proxy.hold(b"sweeping", 0.0)  # only marks when the look arrives
        world.config.write_text(toml_table("[storage.s3]", backend.options_via(proxy.endpoint)))
        world.vars["ARTISYNC_OUTPUT_URI"] = backend.uri
        daemon = DaemonProc(world).wait_ready()
        try:
            assert proxy.held.wait(30), "no request reached the destination at start"
            st = _until_warm(world, 30)
            assert [d["uri"] for d in st["destinations"]] == [backend.uri]
            assert st["backlog"]["records"] == 0  # nothing asked for it
        finally:
            daemon.stop()

    unreachable = {**backend.options, "endpoint_url": "http://127.0.0.1:9"}
    world.config.write_text(toml_table("[storage.s3]", unreachable))
    daemon = DaemonProc(world).wait_ready()
    try:
        _until_warm(world, 30)
    finally:
        daemon.stop()
