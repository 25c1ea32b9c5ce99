"""The daemon's metrics, scraped by a real Prometheus server (Debian's package)
during an upload run and an outage, and read back through Prometheus' HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import faults
from tests.harness import DaemonProc, Env, run_py, short_tmpdir
from tests.servers import free_port

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def prometheus_bin() -> str:
    if PROMETHEUS is None:
        if os.environ.get("ARTISYNC_REQUIRE_SERVERS"):
            raise AssertionError("prometheus is missing (apt-get install prometheus)")
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    return PROMETHEUS


class Prometheus:
    """A real Prometheus server scraping one target every 0.5 s."""

    def __init__(self, binary: str, root: Path, target: str) -> None:
        self.port = free_port()
        cfg = root / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n"
            "scrape_configs:\n  - job_name: artisync\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = open(root / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        faults.wait_until(self._ready, 60, "prometheus ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> float | None:
        """The value of an instant query's single result (None: no result)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=5) as r:
            data: dict[str, Any] = json.load(r)
        result = data["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture
def world(prometheus_bin: str) -> Iterator[tuple[Env, faults.FileTarget, Prometheus, str]]:
    with short_tmpdir() as root:
        target = faults.FileTarget(root)
        env = faults.make_env(root, target)
        address = f"127.0.0.1:{free_port()}"
        prom = Prometheus(prometheus_bin, root, address)
        try:
            yield env, target, prom, address
        finally:
            prom.stop()


def test_prometheus_sees_the_uploads_and_the_outage(
    world: tuple[Env, faults.FileTarget, Prometheus, str],
) -> None:
    env, target, prom, address = world
    d = DaemonProc(env, ARTISYNC_METRICS=address, ARTISYNC_RETRY_MAX_ELAPSED="1").wait_ready()
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=5) as r:
            assert r.status == 200 and json.load(r)["serving"] is True
        report = """
            import sys
            from artisync import Task
            t = Task.init(project_name="metrics", task_name=sys.argv[1] if len(sys.argv) > 1 else "run")
            for i in range(10):
                t.upload_artifact(f"a{i}", {"i": i, "pad": "m" * 6000})
            t.flush()
            """
        run_py(env, report)
        committed = 'sum(artisync_records_committed_total{scheme="file"})'
        # 10 versions and the task's 2 events (started, closed)
        faults.wait_until(lambda: prom.query(committed) == 12, 60, "12 commits scraped")
        assert prom.query('sum(artisync_uploaded_bytes_total{scheme="file"})') == 10 * 6019
        assert prom.query("artisync_backlog_records") == 0
        online = f'artisync_destination_online{{destination="{target.uri}"}}'
        assert prom.query(online) == 1

        target.network(False)  # the mount goes away
        run_py(env, report)
        faults.wait_until(lambda: prom.query(online) == 0, 60, "offline scraped")
        assert prom.query("artisync_backlog_records") == 12  # waiting, not lost
        assert prom.query("artisync_oldest_waiting_timestamp_seconds") > 0
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=5) as r:
            body = json.load(r)
        assert r.status == 200 and body["destinations"][0]["online"] is False  # probing

        target.network(True)
        faults.wait_until(lambda: prom.query(online) == 1, 120, "online again scraped")
        faults.wait_until(lambda: prom.query(committed) == 24, 60, "24 commits scraped")
        assert prom.query("sum(artisync_storage_retries_total)") >= 1
        assert prom.query("sum(artisync_records_failed_total)") == 0
        assert prom.query(f"max_over_time(({online})[5m:500ms])") == 1
        assert prom.query(f"min_over_time(({online})[5m:500ms])") == 0
        assert faults.committed_count(env) == 24
    finally:
        d.stop()


def test_metrics_name_rules_and_zeros(
    world: tuple[Env, faults.FileTarget, Prometheus, str],
) -> None:
    env, _, _, address = world
    d = DaemonProc(env, ARTISYNC_METRICS=address).wait_ready()
    online = f'artisync_destination_online{{destination="{env.output_uri}"}} 1.0'
    try:
        deadline = time.monotonic() + 10
        while True:  # the configured destination is listed before any upload used it
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
                text = r.read().decode()
            if online in text or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        d.stop()
    assert online in text, text
    types = dict(ln.split()[2:4] for ln in text.splitlines() if ln.startswith("# TYPE "))
    assert types and all(n.startswith("artisync_") for n in types), types
    samples = {ln.split("{")[0].split()[0] for ln in text.splitlines() if ln[:1].isalpha()}
    for name, kind in types.items():
        if kind == "counter":
            assert name.endswith("_total") and name in samples, name
        elif kind == "histogram":
            assert name.endswith("_seconds"), name
    assert {n for n in types if "bytes" in n or "seconds" in n} >= {
        "artisync_backlog_bytes",
        "artisync_uploaded_bytes_total",
        "artisync_object_upload_seconds",
        "artisync_last_commit_timestamp_seconds",
    }, types
    # label values known in advance are there at 0 before anything happened
    for scheme in ("file", "s3", "gs", "azure"):
        for kind in ("artifact", "task"):
            line = f'artisync_records_committed_total{{kind="{kind}",scheme="{scheme}"}} 0.0'
            assert line in text, line
            assert line.replace("committed", "failed") in text
        assert f'artisync_uploaded_bytes_total{{scheme="{scheme}"}} 0.0' in text
        assert f'artisync_storage_retries_total{{scheme="{scheme}"}} 0.0' in text
    assert "artisync_failed_records 0.0" in text
    assert 'artisync_build_info{version="' in text


def test_readme_alert_rules_are_valid(prometheus_bin: str, tmp_path: Path) -> None:
    """The alert rules README offers pass Prometheus' own checker."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"```yaml\n(groups:.*?)```", readme, re.S)
    assert block is not None, "README has no alert rules"
    rules = tmp_path / "rules.yml"
    rules.write_text(block.group(1))
    promtool = Path(prometheus_bin).with_name("promtool")
    res = subprocess.run(
        [str(promtool), "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert res.returncode == 0 and "SUCCESS: 3 rules found" in res.stdout, res.stdout + res.stderr
