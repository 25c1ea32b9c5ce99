from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness import DaemonProc, Env, short_tmpdir

try:  # the storage servers' fixtures (SeaweedFS, fake-gcs-server, Azurite)
    from tests.storage_fixtures import *  # noqa: F403
except ImportError as exc:  # pragma: no cover - reported by the backend tests themselves
    if os.environ.get("ARTISYNC_REQUIRE_SERVERS") == "1":
        raise
    _fixtures_error = exc


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """An isolated spool/socket/storage, also applied to this process's environment."""
    from artisync._session import Session

    with short_tmpdir() as root:
        e = Env(root)
        for k in [k for k in os.environ if k.startswith("ARTISYNC_")]:
            monkeypatch.delenv(k)
        for k, v in e.vars.items():
            monkeypatch.setenv(k, v)
        Session.reset()
        _reset_tasks()
        yield e
        Session.reset()
        _reset_tasks()


def _reset_tasks() -> None:
    from artisync._task import Task

    Task._current = None
    Task._local.clear()
    if Task._tracker is not None:
        Task._tracker.items.clear()


@pytest.fixture
def daemon(env: Env) -> Iterator[DaemonProc]:
    d = DaemonProc(env).wait_ready()
    yield d
    d.stop()
