"""The artifacts view: `artisync ui` against storage the real SDK and daemon filled.

A folder and S3 (SeaweedFS) are each filled by two runs of a trainer reporting
every artifact type through a real daemon, and a project of 55 small tasks;
`artisync ui` is then started as its own process with only storage access
(another spool, no daemon, another cache) and driven by a real headless Chromium
(selenium + Debian's chromium-driver): project -> task -> artifact, previews, a
verified download, the compare page, paging, and a pickle that must never be
unpickled. Plain HTTP requests check bad input, capped previews, an object
corrupted in storage, and where the server listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
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

from artisync.protocol import object_key
from tests.harness import DaemonProc, Env, run_py, short_tmpdir
from tests.storage_fixtures import Backend, _make

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
# the same rows in both runs, told apart by their metadata alone
t.upload_artifact("frame", frame, metadata={"split": "train", "seed": ord(variant)})
t.upload_artifact("config", {"lr": 0.1 if variant == "a" else 0.2, "layers": [64, 64]})
t.upload_artifact("config yaml", {"optimizer": "adam"}, extension_name=".yaml")
t.upload_artifact("frame csv", frame.head(600), extension_name=".csv.gz")
t.upload_artifact("weights", np.arange(12.0).reshape(3, 4))
t.upload_artifact("picture", Image.new("RGB", (64, 48), (200, 30, 30)))
t.upload_artifact("folder", data)
t.upload_artifact("bomb", Bomb())
t.upload_artifact("long text", "line of text\n" * 40_000)  # 520 KB: capped preview
t.upload_artifact("big frame", pd.DataFrame({"i": range(200_000)}))
if variant == "b":  # in one run only; big enough to be an object of its own (not inlined)
    t.upload_artifact("fragile", "fragile text\n" * 10_000)
logger = t.get_logger()
for i in range(300):
    logger.report_scalar("loss", "train", 1.0 / (i + 1), iteration=i)
    logger.report_scalar("loss", "val", 1.5 / (i + 1), iteration=i)
    if i == 149:
        logger.flush(wait=True)  # two chunks of the scalars: the chart joins them
tracked = pd.DataFrame({"x": [1, 2]})
t.register_artifact("tracked", tracked)
t.flush(wait_for_uploads=True)
tracked.loc[2] = [3]
t.close()
print(t.id)
"""

MANY = 55  # tasks of the project "many runs": more than a page (50)
MANY_TASKS = f"""
from artisync import Task
for i in range({MANY}):
    Task.init(project_name="many runs", task_name=f"run {{i:02d}}").close()
"""


@dataclass
class Filled:
    env: Env  # the trainers' world (its spool and daemon are gone once filled)
    backend: Backend
    config: str  # the TOML a reader needs for that storage
    tasks: dict[str, str]  # variant -> task id
    marker: Path

    @property
    def uri(self) -> str:
        return self.backend.uri


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


WAIT = "from artisync.cli import main; raise SystemExit(main(['wait', '--timeout', '90']))"


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
            run_py(env, MANY_TASKS, timeout=180)
            assert run_py(env, WAIT, timeout=120).returncode == 0
        finally:
            daemon.stop()
        yield Filled(env, backend, config, tasks, marker)


@dataclass
class Ui:
    """An `artisync ui` process; its stdout and stderr each kept in a file."""

    base: str
    port: int
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


@contextlib.contextmanager
def _ui(env: Env, *args: str, **extra_env: str) -> Iterator[Ui]:
    port = _free_port()
    out, err = env.root / f"ui-{port}.out", env.root / f"ui-{port}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "artisync.cli", "ui", "--port", str(port), *args],
            env=env.environ(**extra_env),
            stdout=stdout,
            stderr=stderr,
        )
    ui = Ui(f"http://127.0.0.1:{port}", port, proc, out, err)
    try:
        deadline = time.monotonic() + 30
        while _get_quiet(ui.base + "/") is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"artisync ui did not start: {err.read_text()}")
            time.sleep(0.1)
        yield ui
    finally:
        proc.terminate()
        proc.wait(10)


def _get_quiet(url: str) -> bytes | None:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(url, timeout=5) as r:
            return bytes(r.read())
    return None


@dataclass
class Served:
    base: str
    filled: Filled
    ui: Ui


@pytest.fixture(scope="module")
def served(filled: Filled) -> Iterator[Served]:
    """`artisync ui` in its own process, reading storage only: a world of its own."""
    with short_tmpdir() as root:
        reader = Env(root, filled.uri)
        reader.config.write_text(filled.config)
        with _ui(reader) as ui:
            yield Served(ui.base, filled, ui)


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def _project_url(s: Served, project: str = "view tests") -> str:
    return f"{s.base}/p/{quote(project, safe='')}"


def _artifact_url(s: Served, variant: str, name: str, tail: str = "") -> str:
    task = s.filled.tasks[variant]
    return f"{_project_url(s)}/t/{task}/a/{quote(name, safe='')}{tail}"


def _frame_rows(body: bytes) -> int:
    """Rows of the data table (table.frame) in a preview."""
    frame = body.split(b'<table class="frame">', 1)[1].split(b"</table>", 1)[0]
    return frame.split(b"<tbody>", 1)[1].count(b"<tr>")


# -- plain HTTP: bad input, limits, storage that lies, where it listens ------------------------
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
    # 520,000 bytes of text: the first 256 KiB, and a link to the rest
    status, _, body = _get(_artifact_url(served, "a", "long text", "/preview"))
    assert status == 200 and b"show all" in body
    shown = re.search(rb'<pre class="text">(.*?)</pre>', body, re.S)
    assert shown is not None and len(shown[1]) == 256 * 1024
    status, _, body = _get(_artifact_url(served, "a", "long text", "/preview?full=1"))
    shown = re.search(rb'<pre class="text">(.*?)</pre>', body, re.S)
    assert status == 200 and b"show all" not in body
    assert shown is not None and shown[1] == b"line of text\n" * 40_000
    # parquet, 200,000 rows: its shape from the footer, exactly 500 rows shown
    status, _, body = _get(_artifact_url(served, "a", "big frame", "/preview"))
    assert status == 200 and b"200,000 rows \xc3\x97 1 columns; showing the first 500" in body
    assert _frame_rows(body) == 500
    # a csv.gz frame of 600 rows: its first 500 (its length unknown without reading it all)
    status, _, body = _get(_artifact_url(served, "a", "frame csv", "/preview"))
    assert status == 200 and b"first 500 rows; showing the first 500" in body
    assert _frame_rows(body) == 500
    assert b"<th>499</th>" in body and b"<th>500</th>" not in body


def test_yaml_preview_shows_the_stored_text(served: Served) -> None:
    status, _, body = _get(_artifact_url(served, "a", "config yaml", "/preview"))
    # the preview's own element, not the record's summary (which says the same words)
    assert status == 200 and b'<pre class="text">optimizer: adam\n</pre>' in body


def test_downloads_are_attachments_except_images(served: Served) -> None:
    status, ctype, _ = _get(_artifact_url(served, "a", "config", "/download?inline=1"))
    assert status == 200 and ctype.startswith("application/json")
    with urllib.request.urlopen(_artifact_url(served, "a", "config", "/download?inline=1")) as r:
        assert r.headers["Content-Disposition"].startswith("attachment")
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    with urllib.request.urlopen(_artifact_url(served, "a", "picture", "/download?inline=1")) as r:
        assert r.headers["Content-Type"] == "image/png"
        assert r.headers["Content-Disposition"].startswith("inline")


def _replace_object(backend: Backend, sha256: str, data: bytes) -> bytes:
    """Put ``data`` where object ``sha256`` is stored; what was there before."""

    async def go() -> bytes:
        async with backend.opened() as st:
            before = await st.get_bytes(object_key(sha256))
            await st.put_bytes(object_key(sha256), data)
            return before

    return asyncio.run(go())


def test_a_corrupt_object_is_refused(served: Served) -> None:
    """Storage hands back other bytes than were stored: download and preview say so,
    and not one of those bytes is sent."""
    status, _, page = _get(_artifact_url(served, "b", "fragile"))
    sha = re.search(rb"<code>([0-9a-f]{64})</code>", page)
    assert status == 200 and sha is not None
    bad = b"NOT WHAT WAS STORED\n" * 1000
    good = _replace_object(served.filled.backend, sha[1].decode(), bad)
    assert good == b"fragile text\n" * 10_000
    try:
        with short_tmpdir() as root:  # a fresh server: nothing of it cached yet
            reader = Env(root, served.filled.uri)
            reader.config.write_text(served.filled.config)
            with _ui(reader) as ui:
                url = _artifact_url(Served(ui.base, served.filled, ui), "b", "fragile")
                status, ctype, body = _get(url + "/download")
                assert (status, ctype.split(";")[0]) == (502, "text/html")
                assert b"stored object does not match its SHA-256" in body
                assert b"NOT WHAT" not in body and b"Traceback" not in body
                status, _, body = _get(url + "/preview")
                assert status == 502 and b"stored object does not match its SHA-256" in body
                assert b"NOT WHAT" not in body
    finally:
        _replace_object(served.filled.backend, sha[1].decode(), good)


def test_compare_shows_at_most_8_tasks_and_says_so(served: Served) -> None:
    status, _, page = _get(_project_url(served, "many runs"))
    ids = re.findall(rb'name="t" value="([0-9A-Za-z_-]+)"', page)
    assert status == 200 and len(ids) == 50
    query = "&".join(f"t={i.decode()}" for i in ids[:9])
    status, _, body = _get(f"{served.base}/compare?{query}")
    assert status == 200 and b"Compare 8 tasks" in body
    assert body.count(b'<th><a href="/p/many%20runs/t/') == 8
    assert b"Only the first 8 of the 9 tasks asked for are compared" in body
    # the same task twice is one task
    status, _, body = _get(f"{served.base}/compare?t={ids[0].decode()}&t={ids[0].decode()}")
    assert status == 400


def test_a_page_number_must_be_a_number(served: Served) -> None:
    status, _, body = _get(_project_url(served, "many runs") + "?page=x")
    assert status == 400 and b"page must be a number" in body


def _listening(port: int) -> set[str]:
    """The addresses a TCP socket listens on at ``port``, as the kernel reports them."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = b"".join(
                        bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, len(addr), 8)
                    )
                    found.add(socket.inet_ntop(family, raw))
    return found


def test_the_default_binds_loopback_only(served: Served) -> None:
    assert _listening(served.ui.port) == {"127.0.0.1"}
    assert b"WARNING" not in served.ui.stderr.read_bytes()


def test_another_host_warns_and_uri_overrides_the_configured_one(filled: Filled) -> None:
    with short_tmpdir() as root:
        (root / "empty").mkdir()
        env = Env(root, (root / "empty").as_uri())  # configured: an empty folder
        env.config.write_text(filled.config)
        with _ui(env, "--host", "0.0.0.0", "--uri", filled.uri) as ui:
            assert _listening(ui.port) == {"0.0.0.0"}
            status, _, body = _get(ui.base + "/")  # reached through loopback too
            assert status == 200 and b'href="/p/view%20tests"' in body
            assert filled.uri.encode() in body  # the storage named in the header
        warning = ui.stderr.read_text()
        assert "WARNING: serving on 0.0.0.0" in warning and "no authentication" in warning
        assert "WARNING" not in ui.stdout.read_text()
        with _ui(env) as ui:  # without --uri: the configured, empty, destination
            status, _, body = _get(ui.base + "/")
            assert status == 200 and b"No tasks in" in body and b"view%20tests" not in body


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


def _until(driver: Any, check: Any, timeout: float = 30) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # a check may read a page that is being replaced: then it is asked again
    wait = WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(lambda _: check())


def _text(element: Any) -> str:
    return str(element.get_attribute("textContent"))


def _shot(driver: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / name))


def _task_names(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr")
    return [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]


def test_browse_project_task_artifact(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(served.base + "/")
    # wait, not find: the driver may hand back control before the new page is the one shown
    _click(d, "ul.projects a[href='/p/view%20tests']")
    _wait(d, "table.tasks tbody")
    assert _task_names(d) == ["run b", "run a"]
    # artifact counts arrive lazily (htmx): 13 in run b (its "fragile"), 12 in run a
    _until(
        d, lambda: [c.text for c in d.find_elements(By.CSS_SELECTOR, "td.count")] == ["13", "12"]
    )
    # a click on a column's header sorts the page by it
    d.find_element(By.XPATH, "//table[contains(@class, 'tasks')]//th[text()='Name']").click()
    assert _task_names(d) == ["run a", "run b"]
    d.find_element(By.LINK_TEXT, "run a").click()
    # the DataFrame's first rows (its preview loaded lazily), the image loaded, the JSON
    frame = _wait(d, 'tr[data-name="frame"] table.frame tbody')
    first = [c.text for c in frame.find_elements(By.TAG_NAME, "tr")[0].find_elements(By.XPATH, "*")]
    assert first == ["0", "0", "1"]
    img = _wait(d, "img.thumb")
    _until(d, lambda: d.execute_script("return arguments[0].naturalWidth", img))
    assert d.execute_script("return arguments[0].naturalWidth", img) == 64
    # the JSON pretty-printed by its preview (the stored summary is on one line)
    config = _wait(d, 'tr[data-name="config"] td.preview pre.text')
    assert '{\n  "lr": 0.1,\n  "layers": [\n    64,\n    64\n  ]\n}' in _text(config)
    _shot(d, "ui-task.png")


def test_artifact_previews(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    # a DataFrame: shape, 500 rows, its metadata
    d.get(_artifact_url(served, "a", "frame"))
    _wait(d, "#preview table.frame")
    assert "1,000 rows × 2 columns" in d.find_element(By.CSS_SELECTOR, "#preview .shape").text
    assert len(d.find_elements(By.CSS_SELECTOR, "#preview table.frame tbody tr")) == 500
    assert '"split": "train"' in d.find_element(By.CSS_SELECTOR, "table.facts").text
    # an array: shape, dtype, min/max/mean, its head
    d.get(_artifact_url(served, "a", "weights"))
    array = _wait(d, "#preview .array")
    assert array.find_element(By.TAG_NAME, "p").text == (
        "array: shape [3, 4], float64; min 0, max 11, mean 5.5"
    )
    assert _text(array.find_element(By.TAG_NAME, "pre")).startswith("[[ 0.  1.  2.  3.]")
    # the Logger's scalars: a line chart, a line per series
    d.get(_artifact_url(served, "a", "scalars"))
    chart = _wait(d, "#preview figure.chart")
    assert "loss" in chart.text and len(chart.find_elements(By.CSS_SELECTOR, "polyline")) == 2
    assert "(600 points; iterations 0–299," in chart.text, chart.text  # both chunks
    _shot(d, "ui-scalars.png")
    # long text: the first 256 KiB, then "show all" swaps in all 520,000 bytes
    d.get(_artifact_url(served, "a", "long text"))
    assert len(_text(_wait(d, "#preview pre.text"))) == 256 * 1024
    d.find_element(By.LINK_TEXT, "show all").click()
    _until(d, lambda: not d.find_elements(By.LINK_TEXT, "show all"))
    assert _text(d.find_element(By.CSS_SELECTOR, "#preview pre.text")) == "line of text\n" * 40_000


def test_each_version_keeps_its_own_shape(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(_artifact_url(served, "a", "tracked"))
    _wait(d, "#preview table.frame")
    rows = d.find_elements(By.CSS_SELECTOR, "table.versions tbody tr")
    versions = [(r.get_attribute("data-record"), r.find_elements(By.TAG_NAME, "td")) for r in rows]
    # newest first: the frame as closed (3 rows), then as it was registered (2)
    assert [cells[0].text for _, cells in versions] == ["2", "1"]
    assert "3 rows x 1 columns" in versions[0][1][4].text
    assert "2 rows x 1 columns" in versions[1][1][4].text
    assert "current" in rows[0].get_attribute("class")
    for (record, _), n in zip(versions, (3, 2), strict=True):
        d.get(_artifact_url(served, "a", "tracked", f"?v={record}"))
        shape = _wait(d, "#preview .shape")
        assert shape.text.startswith(f"{n} rows × 1 columns"), shape.text
        assert len(d.find_elements(By.CSS_SELECTOR, "#preview table.frame tbody tr")) == n


def test_folder_members_preview(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(_artifact_url(served, "a", "folder"))
    listing = _wait(d, "#preview table.tree")
    rows = {
        r.find_element(By.TAG_NAME, "a").text: r
        for r in listing.find_elements(By.CSS_SELECTOR, "tbody tr")
    }
    assert sorted(rows) == ["notes.txt", "sub/dot.png", "sub/table.csv"]
    rows["notes.txt"].find_element(By.CSS_SELECTOR, "a[hx-get]").click()
    text = _wait(d, ".member pre.text")
    assert _text(text) == "hello from the folder\n"
    rows["sub/table.csv"].find_element(By.CSS_SELECTOR, "a[hx-get]").click()
    table = _wait(d, ".member table.frame")
    head = [c.text for c in table.find_elements(By.CSS_SELECTOR, "thead th")]
    cells = [
        [c.text for c in r.find_elements(By.XPATH, "*")]
        for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]
    assert head == ["", "a\nint64", "b\nint64"] and cells == [["0", "1", "2"], ["1", "3", "4"]]
    rows["sub/dot.png"].find_element(By.CSS_SELECTOR, "a[hx-get]").click()
    member = _wait(d, ".member img")
    _until(d, lambda: d.execute_script("return arguments[0].naturalWidth", member) == 20)


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
    d.get(_project_url(served))
    for box in _wait(d, "table.tasks").find_elements(By.CSS_SELECTOR, "input[type=checkbox]"):
        box.click()
    d.find_element(By.ID, "compare").click()
    table = _wait(d, "table.compare")
    assert not d.find_elements(By.ID, "capped")
    rows = {
        r.find_element(By.TAG_NAME, "th").text: r
        for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    }
    assert "differs" in rows["config differs"].get_attribute("class")
    assert rows["picture"].get_attribute("class") == "same"
    # the same rows, other metadata: the row is the same, its metadata highlighted
    frame = rows["frame"]
    assert frame.get_attribute("class") == "same"
    metas = frame.find_elements(By.CSS_SELECTOR, "td .meta")
    assert [m.get_attribute("class") for m in metas] == ["meta differs", "meta differs"]
    assert ['"seed": 98' in metas[0].text, '"seed": 97' in metas[1].text] == [True, True]
    # in run b only (the first column: the project page's order, newest first)
    cells = rows["fragile differs"].find_elements(By.TAG_NAME, "td")
    assert [c.get_attribute("class") for c in cells] == ["cell differs", "missing"]
    assert cells[1].text == "—"
    _shot(d, "ui-compare.png")


def test_older_pages_follow_the_newest(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(_project_url(served, "many runs"))
    _wait(d, "table.tasks tbody")
    newest = [f"run {i:02d}" for i in range(MANY - 1, -1, -1)]
    assert _task_names(d) == newest[:50]
    assert not d.find_elements(By.CSS_SELECTOR, "a[rel=prev]")
    _click(d, "a[rel=next]")
    _until(d, lambda: _task_names(d) == newest[50:])
    assert d.current_url.endswith("?page=2")
    assert not d.find_elements(By.CSS_SELECTOR, "a[rel=next]")
    _click(d, "a[rel=prev]")
    _until(d, lambda: _task_names(d) == newest[:50])
    assert d.current_url.endswith("?page=1")


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


# -- pending uploads -----------------------------------------------------------------------------
STORED_THEN_OFFLINE = """
import sys
from artisync import Task
t = Task.init(project_name="pending view", task_name="stored run")
t.upload_artifact("cfg", {"epochs": 3})
t.flush(wait_for_uploads=True)
print(t.id, flush=True)
sys.stdin.readline()  # storage is out of reach from here on
t.upload_artifact("cfg", {"epochs": 4})
t.upload_artifact("notes", "only in the spool so far")
t.close()
print("closed", flush=True)
"""

OFFLINE = """
from artisync import Task
t = Task.init(project_name="offline view", task_name="offline run")
t.upload_artifact("cfg", {"epochs": 3})
t.close()
print(t.id)
"""


def _pending_badges(body: bytes) -> int:
    return body.count(b'<span class="pending">pending upload</span>')


def test_pending_uploads_show_beside_storage(request: pytest.FixtureRequest) -> None:
    """Accepted by this node's daemon, not uploaded (its S3 endpoint refuses
    connections): the view, which reads S3 directly, shows a new version of an
    artifact in storage, a new artifact, and a project of pending tasks alone,
    each marked pending upload; once the endpoint is back, as stored."""
    from tests.faultproxy import FaultProxy

    with short_tmpdir() as root:
        backend = _make("s3", request, root)
        proxy = FaultProxy(backend.target).start()
        request.addfinalizer(proxy.stop)
        env = Env(root, backend.uri)
        env.config.write_text(_toml("s3", backend.options_via(proxy.endpoint)))
        direct = root / "direct.toml"
        direct.write_text(_toml("s3", backend.options))
        daemon = DaemonProc(env).wait_ready()
        try:
            run = subprocess.Popen(
                [sys.executable, "-c", STORED_THEN_OFFLINE],
                env=env.environ(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert run.stdout is not None and run.stdin is not None
            stored_id = run.stdout.readline().strip()
            proxy.set("refuse")
            proxy.drop_connections()
            run.stdin.write("\n")
            run.stdin.flush()
            assert run.stdout.readline().strip() == "closed" and run.wait(60) == 0
            offline_id = run_py(env, OFFLINE).stdout.split()[-1]
            with _ui(env, ARTISYNC_CONFIG=str(direct)) as ui:
                _check_pending(ui.base, stored_id, offline_id)
                proxy.set("pass")
                run_py(env, WAIT, timeout=120)
                _check_uploaded(ui.base, stored_id)
        finally:
            daemon.stop()


def _check_pending(base: str, stored_id: str, offline_id: str) -> None:
    # a project of pending tasks alone is listed, marked; one in storage is not marked
    status, _, body = _get(base + "/")
    assert status == 200
    assert b'<a href="/p/pending%20view">pending view</a></li>' in body
    assert b'<a href="/p/offline%20view">offline view</a> <span class="pending">' in body
    status, _, body = _get(base + "/p/offline%20view")
    assert status == 200 and b"offline run" in body and _pending_badges(body) == 1
    status, _, body = _get(f"{base}/p/offline%20view/t/{offline_id}")
    assert status == 200 and b"Pending upload (1)" in body and b"Artifacts (0)" in body
    # the stored task: cfg's first version in storage; its second and "notes", pending
    task_url = f"{base}/p/pending%20view/t/{stored_id}"
    status, _, body = _get(task_url)
    assert status == 200 and b"Artifacts (1)" in body and b"Pending upload (2)" in body
    links = dict(re.findall(rb'href="[^"]*/a/(\w+)\?v=(\w+)">\1</a> <span class="pending">', body))
    assert sorted(links) == [b"cfg", b"notes"]
    # cfg's page: both versions, the pending one marked; the stored one shown by default
    status, _, body = _get(f"{task_url}/a/cfg")
    assert status == 200 and b"Versions (2)" in body and b'id="download"' in body
    assert _pending_badges(body) == 1
    pending_cfg = links[b"cfg"].decode()
    assert re.search(rf'class=" pending" data-record="{pending_cfg}"'.encode(), body)
    status, _, body = _get(f"{task_url}/a/cfg?v={pending_cfg}")
    assert status == 200 and b'id="pending-note"' in body and b'id="download"' not in body
    status, _, body = _get(f"{task_url}/a/cfg/download?v={pending_cfg}")
    assert status == 404 and b"in storage" in body
    # an artifact that is only pending has a page too, not a 404
    status, _, body = _get(f"{task_url}/a/notes")
    assert status == 200 and b"Versions (1)" in body and b'id="pending-note"' in body


def _check_uploaded(base: str, stored_id: str) -> None:
    status, _, body = _get(base + "/")
    assert status == 200 and _pending_badges(body) == 0 and b"offline view" in body
    task_url = f"{base}/p/pending%20view/t/{stored_id}"
    status, _, body = _get(task_url)
    assert status == 200 and b"Pending upload" not in body
    assert b'data-name="cfg"' in body and b"Artifacts (2)" in body
    status, _, body = _get(f"{task_url}/a/cfg")
    assert status == 200 and b"Versions (2)" in body and _pending_badges(body) == 0
    status, _, body = _get(f"{task_url}/a/notes")
    assert status == 200 and b'id="download"' in body
