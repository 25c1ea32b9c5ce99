"""The artifacts view: `artisync ui` against storage the real SDK and daemon filled.

A folder and S3 (SeaweedFS) are each filled by two runs of a trainer reporting
every artifact type through a real daemon; `artisync ui` is then started as its
own process with only storage access (another spool, no daemon, another cache)
and driven by a real headless Chromium (selenium + Debian's chromium-driver):
project -> task -> artifact, previews, a verified download, the compare page,
and a pickle that must never be unpickled. Plain HTTP requests check bad input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.harness import DaemonProc, Env, run_py, short_tmpdir
from tests.storage_fixtures import _make

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = os.environ.get("ARTISYNC_UI_SCREENSHOTS")  # a folder: the README's screenshots

TRAINER = r"""
import os, sys
import numpy as np, pandas as pd
from PIL import Image
from artisync import Task

variant, data, marker = sys.argv[1], sys.argv[2], sys.argv[3]

class Bomb:
    # unpickling this creates `marker`: the view must never do it
    def __reduce__(self):
        return (os.mkdir, (marker,))

t = Task.init(project_name="view tests", task_name=f"run {variant}")
frame = pd.DataFrame({"step": range(1000), "loss": [1.0 / (i + 1) for i in range(1000)]})
t.upload_artifact("frame", frame, metadata={"split": "train"})
t.upload_artifact("config", {"lr": 0.1 if variant == "a" else 0.2, "layers": [64, 64]})
t.upload_artifact("config yaml", {"optimizer": "adam"}, extension_name=".yaml")
t.upload_artifact("frame csv", frame.head(600), extension_name=".csv.gz")
t.upload_artifact("weights", np.arange(12.0).reshape(3, 4))
t.upload_artifact("picture", Image.new("RGB", (64, 48), (200, 30, 30)))
t.upload_artifact("folder", data)
t.upload_artifact("bomb", Bomb())
t.upload_artifact("long text", "line of text\n" * 40_000)  # 520 KB: capped preview
t.upload_artifact("big frame", pd.DataFrame({"i": range(200_000)}))
logger = t.get_logger()
for i in range(300):
    logger.report_scalar("loss", "train", 1.0 / (i + 1), iteration=i)
    logger.report_scalar("loss", "val", 1.5 / (i + 1), iteration=i)
tracked = pd.DataFrame({"x": [1, 2]})
t.register_artifact("tracked", tracked)
t.flush(wait_for_uploads=True)
tracked.loc[2] = [3]
t.close()
print(t.id)
"""


@dataclass
class Filled:
    env: Env  # the trainers' world (its spool and daemon are gone once filled)
    uri: str
    config: str  # the TOML a reader needs for that storage
    tasks: dict[str, str]  # variant -> task id
    marker: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(name: str, options: dict[str, Any]) -> str:
    if name == "file":
        return ""
    lines = [f"[storage.{name}]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", params=["file", "s3"])
def filled(request: pytest.FixtureRequest) -> Iterator[Filled]:
    with short_tmpdir() as root:
        backend = _make(request.param, request, root)
        (root / "trainer").mkdir()
        env = Env(root / "trainer", backend.uri)
        config = _toml(backend.name, backend.options)
        env.config.write_text(config)
        data = root / "data"
        (data / "sub").mkdir(parents=True)
        (data / "notes.txt").write_text("hello from the folder\n")
        (data / "sub" / "table.csv").write_text("a,b\n1,2\n3,4\n")
        from PIL import Image

        Image.new("RGB", (20, 10), (0, 90, 200)).save(data / "sub" / "dot.png")
        marker = root / "unpickled"
        daemon = DaemonProc(env).wait_ready()
        tasks = {}
        try:
            for variant in ("a", "b"):
                code = (
                    f"import sys; sys.argv = ['t', {variant!r}, {str(data)!r}, {str(marker)!r}]\n"
                )
                out = run_py(env, code + TRAINER, timeout=180)
                tasks[variant] = out.stdout.split()[-1]
            wait = run_py(
                env,
                "from artisync.cli import main; raise SystemExit(main(['wait', '--timeout', '90']))",
            )
            assert wait.returncode == 0
        finally:
            daemon.stop()
        yield Filled(env, backend.uri, config, tasks, marker)


@dataclass
class Served:
    base: str
    filled: Filled


@pytest.fixture(scope="module")
def served(filled: Filled) -> Iterator[Served]:
    """`artisync ui` in its own process, reading storage only: a world of its own."""
    with short_tmpdir() as root:
        reader = Env(root, filled.uri)
        reader.config.write_text(filled.config)
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "artisync.cli", "ui", "--port", str(port)],
            env=reader.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(base + "/", timeout=5).read()
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"artisync ui did not start: {proc.communicate()[0]}")
                time.sleep(0.1)
            yield Served(base, filled)
        finally:
            proc.terminate()
            proc.wait(10)


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def _artifact_url(s: Served, variant: str, name: str, tail: str = "") -> str:
    task = s.filled.tasks[variant]
    return f"{s.base}/p/{quote('view tests', safe='')}/t/{task}/a/{quote(name, safe='')}{tail}"


# -- plain HTTP: bad input -------------------------------------------------------------------
def test_unknown_things_are_404_pages(served: Served) -> None:
    task = served.filled.tasks["a"]
    project = quote("view tests", safe="")
    for path in (
        "/p/no%20such%20project",
        f"/p/{project}/t/0123456789abcdef0123456789abcdef",
        f"/p/other/t/{task}",  # the task exists, in another project
        f"/p/{project}/t/{task}/a/nothing",
    ):
        status, ctype, body = _get(served.base + path)
        assert status == 404, path
        assert ctype.startswith("text/html") and b"404" in body, path


def test_names_cannot_escape(served: Served) -> None:
    task = served.filled.tasks["a"]
    project = quote("view tests", safe="")
    for path in (
        f"/p/{project}/t/..%2F..%2Fetc",
        f"/p/{project}/t/{task}/a/..%2F..%2Fconfig",
        f"/p/{project}/t/{task}/a/folder/files/..%2F..%2F..%2Fetc%2Fpasswd",
        f"/p/{project}/t/{task}/a/folder/files/%2Fetc%2Fpasswd",
        f"/p/{project}/t/{task}/a/folder/files/sub/..%2F..%2Fnotes.txt",
    ):
        status, _, body = _get(served.base + path)
        assert status == 404, path
        assert b"root:" not in body
    # what the folder does hold is served, byte for byte
    status, _, body = _get(_artifact_url(served, "a", "folder", "/files/notes.txt"))
    assert (status, body) == (200, b"hello from the folder\n")


def test_previews_are_capped(served: Served) -> None:
    status, _, body = _get(_artifact_url(served, "a", "long text", "/preview"))
    assert status == 200 and b"show all" in body
    assert len(body) < 300_000  # 256 KiB of the 520 KB text, not all of it
    status, _, body = _get(_artifact_url(served, "a", "big frame", "/preview"))
    assert status == 200 and b"200,000 rows" in body
    assert body.count(b"<tr>") <= 500 + 10  # 500 rows shown, plus headers and the summary
    # a csv.gz frame: its first 500 rows (its size unknown without reading it all)
    status, _, body = _get(_artifact_url(served, "a", "frame csv", "/preview"))
    assert status == 200 and b"first 500 rows" in body and b"<th>499</th>" in body
    assert b"<th>500</th>" not in body
    status, _, body = _get(_artifact_url(served, "a", "config yaml", "/preview"))
    assert status == 200 and b"optimizer: adam" in body


def test_downloads_are_attachments_except_images(served: Served) -> None:
    status, ctype, _ = _get(_artifact_url(served, "a", "config", "/download?inline=1"))
    assert status == 200 and ctype.startswith("application/json")
    with urllib.request.urlopen(_artifact_url(served, "a", "config", "/download?inline=1")) as r:
        assert r.headers["Content-Disposition"].startswith("attachment")
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    with urllib.request.urlopen(_artifact_url(served, "a", "picture", "/download?inline=1")) as r:
        assert r.headers["Content-Type"] == "image/png"
        assert r.headers["Content-Disposition"].startswith("inline")


# -- the browser ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        message = "Debian's chromium and chromium-driver are needed (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    with short_tmpdir() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def _wait(driver: Any, css: str, timeout: float = 30) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _click(driver: Any, css: str, timeout: float = 30) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(ec.element_to_be_clickable((By.CSS_SELECTOR, css))).click()


def _shot(driver: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / name))


def test_browse_project_task_artifact(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    d.get(served.base + "/")
    # wait, not find: the driver may hand back control before the new page is the one shown
    _click(d, "ul.projects a[href='/p/view%20tests']")
    rows = _wait(d, "table.tasks tbody").find_elements(By.TAG_NAME, "tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == ["run b", "run a"]
    # artifact counts arrive lazily (htmx): 12 artifacts in each run
    WebDriverWait(d, 30).until(
        lambda drv: [c.text for c in drv.find_elements(By.CSS_SELECTOR, "td.count")] == ["12", "12"]
    )
    # a click on a column's header sorts the page by it
    d.find_element(By.XPATH, "//table[contains(@class, 'tasks')]//th[text()='Name']").click()
    names = [
        r.find_elements(By.TAG_NAME, "td")[1].text
        for r in d.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr")
    ]
    assert names == ["run a", "run b"]
    d.find_element(By.LINK_TEXT, "run a").click()
    # the DataFrame's first rows (its preview loaded lazily), the image loaded, the JSON
    frame = _wait(d, 'tr[data-name="frame"] table.frame tbody')
    first = [c.text for c in frame.find_elements(By.TAG_NAME, "tr")[0].find_elements(By.XPATH, "*")]
    assert first == ["0", "0", "1"]
    img = _wait(d, "img.thumb")
    WebDriverWait(d, 30).until(lambda _: d.execute_script("return arguments[0].naturalWidth", img))
    assert d.execute_script("return arguments[0].naturalWidth", img) == 64
    WebDriverWait(d, 30).until(lambda _: '"lr": 0.1' in d.page_source)
    _shot(d, "ui-task.png")
    # one artifact: shape, 500 rows, its summary; the registered frame's two versions
    d.get(_artifact_url(served, "a", "frame"))
    _wait(d, "#preview table.frame")
    assert "1,000 rows × 2 columns" in d.find_element(By.CSS_SELECTOR, "#preview .shape").text
    assert len(d.find_elements(By.CSS_SELECTOR, "#preview table.frame tbody tr")) == 500
    assert "train" in d.find_element(By.CSS_SELECTOR, "table.facts").text  # metadata
    # the Logger's scalars: a line chart, a line per series
    d.get(_artifact_url(served, "a", "scalars"))
    chart = _wait(d, "#preview figure.chart")
    assert "loss" in chart.text and len(chart.find_elements(By.CSS_SELECTOR, "polyline")) == 2
    _shot(d, "ui-scalars.png")
    d.get(_artifact_url(served, "a", "tracked"))
    _wait(d, "#preview table.frame")
    assert len(d.find_elements(By.CSS_SELECTOR, "table.versions tbody tr")) == 2
    # the folder: its listing, and a member's preview by extension
    d.get(_artifact_url(served, "a", "folder"))
    listing = _wait(d, "#preview table.tree").text
    assert "notes.txt" in listing and "sub/table.csv" in listing and "sub/dot.png" in listing
    d.find_element(By.CSS_SELECTOR, "#preview table.tree tbody tr:nth-child(2) a[hx-get]").click()
    member = _wait(d, ".member img")
    WebDriverWait(d, 30).until(
        lambda _: d.execute_script("return arguments[0].naturalWidth", member)
    )


def test_download_matches_its_sha256(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(_artifact_url(served, "a", "weights"))
    _wait(d, "#preview .array")
    sha = d.find_element(By.CSS_SELECTOR, "table.facts code").text
    href = d.find_element(By.ID, "download").get_attribute("href")
    with urllib.request.urlopen(href) as r:
        data = r.read()
    assert hashlib.sha256(data).hexdigest() == sha
    # and it is what the SDK itself reads back
    code = f"""
        from artisync import Task
        t = Task.get_task(task_id={served.filled.tasks["a"]!r})
        print(t.artifacts['weights'].hash)
    """
    assert run_py(served.filled.env, code).stdout.split()[-1] == sha


def test_compare_two_tasks(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(served.base + "/p/" + quote("view tests", safe=""))
    for box in _wait(d, "table.tasks").find_elements(By.CSS_SELECTOR, "input[type=checkbox]"):
        box.click()
    d.find_element(By.ID, "compare").click()
    table = _wait(d, "table.compare")
    rows = {
        r.find_element(By.TAG_NAME, "th").text: r
        for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    }
    assert "differs" in rows["config differs"].get_attribute("class")
    assert rows["picture"].get_attribute("class") == "same"
    assert len(rows["frame"].find_elements(By.TAG_NAME, "td")) == 2
    _shot(d, "ui-compare.png")


def test_a_pickle_is_never_unpickled(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(_artifact_url(served, "a", "bomb"))
    text = _wait(d, "#preview p.none").text
    assert "never unpickled" in text
    d.get(served.base + f"/p/{quote('view tests', safe='')}/t/{served.filled.tasks['a']}")
    _wait(d, 'tr[data-name="frame"] table.frame')
    status, _, _ = _get(_artifact_url(served, "a", "bomb", "/download"))
    assert status == 200
    assert not served.filled.marker.exists()
    assert not d.find_elements(By.CSS_SELECTOR, ".error")


def test_pending_uploads_show_beside_storage(request: pytest.FixtureRequest) -> None:
    """Accepted by this node's daemon, not uploaded (its S3 endpoint refuses
    connections): the view, which reads S3 directly, shows the task and its
    artifact as pending upload; once the endpoint is back, as stored."""
    from tests.faultproxy import FaultProxy

    with short_tmpdir() as root:
        backend = _make("s3", request, root)
        proxy = FaultProxy(backend.target).start()
        request.addfinalizer(proxy.stop)
        proxy.set("refuse")
        env = Env(root, backend.uri)
        env.config.write_text(_toml("s3", backend.options_via(proxy.endpoint)))
        direct = root / "direct.toml"
        direct.write_text(_toml("s3", backend.options))
        daemon = DaemonProc(env).wait_ready()
        ui = None
        log = (root / "ui.log").open("w")
        try:
            code = """
                from artisync import Task
                t = Task.init(project_name="pending view", task_name="offline run")
                t.upload_artifact("cfg", {"epochs": 3})
                t.close()
                print(t.id)
            """
            task_id = run_py(env, code).stdout.split()[-1]
            port = _free_port()
            ui = subprocess.Popen(
                [sys.executable, "-m", "artisync.cli", "ui", "--port", str(port)],
                env=env.environ(ARTISYNC_CONFIG=str(direct)),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while _get_quiet(base + "/") is None and time.monotonic() < deadline:
                time.sleep(0.1)
            status, _, body = _get(base + "/p/" + quote("pending view", safe=""))
            assert status == 200 and b"offline run" in body and b"pending upload" in body
            task_url = f"{base}/p/{quote('pending view', safe='')}/t/{task_id}"
            status, _, body = _get(task_url)
            assert status == 200 and b"Pending upload (1)" in body and b"cfg" in body
            proxy.set("pass")
            wait = (
                "from artisync.cli import main; raise SystemExit(main(['wait', '--timeout', '90']))"
            )
            run_py(env, wait, timeout=120)
            status, _, body = _get(task_url)
            assert status == 200, (root / "ui.log").read_text()
            assert b"Pending upload" not in body
            assert b'data-name="cfg"' in body and b"Artifacts (1)" in body
        finally:
            if ui is not None:
                ui.terminate()
                ui.wait(10)
            log.close()
            daemon.stop()


def _get_quiet(url: str) -> bytes | None:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(url, timeout=5) as r:
            return bytes(r.read())
    return None
