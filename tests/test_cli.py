"""The command line, run as users run it: separate processes against a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from artisync.protocol import Spool
from tests.harness import Conn, DaemonProc, Env, run_py
from tests.records import artifact_record


def cli(
    env: Env, *args: str, timeout: float = 60, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "artisync.cli", *args],
        env=env.environ(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _produce(env: Env) -> None:
    run_py(
        env,
        """
        import numpy as np
        from artisync import Task
        t = Task.init(project_name="cli proj", task_name="run/1")
        t.upload_artifact("eye", np.eye(3))
        t.upload_artifact("notes", {"lr": 0.1})
        t.close()
        """,
    )


def test_status_wait_ls_get(daemon: DaemonProc, env: Env) -> None:
    _produce(env)
    w = cli(env, "wait", "--timeout", "60")
    assert w.returncode == 0, w.stderr
    assert "committed" in w.stdout
    st = cli(env, "status", "--json")
    assert st.returncode == 0, st.stdout
    status = json.loads(st.stdout)
    assert status["running"] and status["online"]
    assert status["backlog"] == {"records": 0, "bytes": 0}
    assert status["committed"]["records"] == 4
    human = cli(env, "status")
    assert "online" in human.stdout and "backlog: 0 records" in human.stdout
    assert cli(env, "ls").stdout.split("\n")[0] == "cli proj"
    tasks = cli(env, "ls", "cli proj").stdout
    assert tasks.startswith("run/1\t")
    arts = cli(env, "ls", "cli proj", "run/1").stdout
    assert "eye\tnumpy/npz" in arts and "notes\tdict/json" in arts
    out = env.root / "notes.json"
    g = cli(env, "get", "cli proj/run/1/notes", "-o", str(out))
    assert g.returncode == 0, g.stderr
    assert json.loads(out.read_text()) == {"lr": 0.1}
    missing = cli(env, "get", "cli proj/run/1/nope")
    assert missing.returncode == 1 and "has no artifact 'nope'" in missing.stderr


def test_status_without_daemon_reports_outbox(env: Env) -> None:
    _produce(env)
    st = cli(env, "status")
    assert st.returncode == 3
    assert "not running" in st.stdout and "4 records waiting" in st.stdout
    w = cli(env, "wait", "--timeout", "1")
    assert w.returncode == 3


def test_failed_records_shown_then_retried(env: Env) -> None:
    target = env.root / "readonly-target"
    target.write_text("a file where a folder should be")  # the destination cannot be written
    d = DaemonProc(env).wait_ready()
    try:
        spool = Spool(env.spool)
        rec = artifact_record(spool, str(target), b"needs a home" * 500)
        with Conn(env.socket) as c:
            c.hello()
            assert c.call("submit", record=rec)["ok"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = cli(env, "status", "--json")
            if json.loads(st.stdout)["failed"]["records"]:
                break
            time.sleep(0.2)
        assert st.returncode == 1
        assert "failed" in cli(env, "status").stdout
        reason = json.loads(st.stdout)["failed"]["items"][0]["reason"]
        assert str(target) in reason or "directory" in reason.lower()
        target.unlink()  # fix the cause
        r = cli(env, "retry")
        assert r.returncode == 0 and "1 failed records queued again" in r.stdout
        assert cli(env, "wait", "--timeout", "30").returncode == 0
        assert json.loads(cli(env, "status", "--json").stdout)["failed"]["records"] == 0
        assert (Path(target) / "objects").is_dir()
    finally:
        d.stop()


def test_bad_configuration_is_reported(env: Env) -> None:
    env.config.write_text("[artisync\nbroken = ")
    st = cli(env, "status")
    assert st.returncode == 2 and "not valid TOML" in st.stderr
    d = DaemonProc(env)
    assert d.wait_exit(30) == 2
    assert "configuration error" in d.output()


def _pty_run(env: Env, *args: str, timeout: float = 60) -> tuple[int, str]:
    """``artisync ARGS`` with its stdout and stderr on a pseudo-terminal, as in a shell."""
    import os
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "artisync.cli", *args],
        env=env.environ(COLUMNS="120"),
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the other side closed: the process is done
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout), b"".join(chunks).decode(errors="replace")


def test_progress_of_get_and_wait(daemon: DaemonProc, env: Env) -> None:
    """A bar on a terminal (rich: bytes, rate), plain lines in a log, nothing with -q."""
    run_py(
        env,
        """
        import os
        from artisync import Task
        t = Task.init(project_name="cli proj", task_name="big")
        t.upload_artifact("blob", os.urandom(24 * 2**20))
        t.close()
        """,
    )
    w = cli(env, "wait", "-q", "--timeout", "60")
    assert (w.returncode, w.stdout, w.stderr) == (0, "", "")
    # not a terminal: one plain line at the end, with the size
    out = cli(env, "get", "cli proj/big/blob", "-o", str(env.root / "a.bin"))
    assert out.returncode == 0, out.stderr
    assert "downloading blob: 24.0 MiB of 24.0 MiB" in out.stderr
    assert (env.root / "a.bin").stat().st_size == 24 * 2**20
    quiet = cli(env, "get", "-q", "cli proj/big/blob", "-o", str(env.root / "b.bin"))
    assert (quiet.returncode, quiet.stderr) == (0, "")
    # a terminal, and a cold cache: rich's bar, with bytes done and the rate
    code, shown = _pty_run(
        env, "get", "cli proj/big/blob", "-o", str(env.root / "c.bin"), timeout=60
    )
    assert code == 0, shown
    assert "downloading blob" in shown and "25.2/25.2 MB" in shown, shown
    assert "\x1b[" in shown  # drawn in place


def test_status_watch_refreshes(daemon: DaemonProc, env: Env) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "artisync.cli", "status", "--watch", "0.5"],
        env=env.environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    proc.send_signal(2)  # Ctrl-C
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    blocks = [b for b in out.split("--- ") if b.strip()]
    assert len(blocks) >= 3 and all("backlog:" in b for b in blocks), out
