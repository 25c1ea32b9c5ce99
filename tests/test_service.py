"""Running as a service: autostart with idle exit, systemd socket activation and
readiness, and the system mode's configuration errors."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artisync.daemon.app import spool_is_served
from tests.harness import REPO, Conn, DaemonProc, Env, outbox_records, run_py, stored_objects


def test_autostarted_daemon_uploads_then_exits_when_idle(env: Env) -> None:
    run_py(
        env,
        """
        from artisync import Task
        t = Task.init(project_name="auto", task_name="a")
        t.upload_artifact("d", {"x": 1, "pad": "x" * 5000})  # an object, not inline
        t.close()
        """,
        ARTISYNC_AUTOSTART="1",
        ARTISYNC_IDLE_EXIT="1",
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(stored_objects(env.storage)) < 1:
        time.sleep(0.2)
    assert len(stored_objects(env.storage)) == 1
    while time.monotonic() < deadline and spool_is_served(env.spool):
        time.sleep(0.2)
    assert not spool_is_served(env.spool), "the autostarted daemon should exit when idle"
    assert outbox_records(env.spool) == []


def test_socket_activation_and_sd_notify(env: Env) -> None:
    env.socket.parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(env.socket))
    listener.listen(16)
    notify_path = env.root / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    fd = listener.fileno()
    # exec keeps the pid, so LISTEN_PID can name the daemon itself, as systemd does
    launcher = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); "
        "os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1'; "
        "os.execv(sys.executable, [sys.executable, '-m', 'artisync.daemon'])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, str(fd)],
        pass_fds=(fd,),
        env=env.environ(NOTIFY_SOCKET=str(notify_path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = notify.recv(4096).decode()
        assert "READY=1" in ready
        with Conn(env.socket) as c:
            assert c.hello()["pid"] == proc.pid
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        listener.close()
        notify.close()


def test_unknown_group_is_a_clear_error(env: Env) -> None:
    d = DaemonProc(env, ARTISYNC_GROUP="no-such-group-artisync")
    assert d.wait_exit(30) == 2
    assert "group 'no-such-group-artisync' does not exist" in d.output()


def test_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """The units as installed (README's steps), checked by systemd's own verifier."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("ARTISYNC_REQUIRE_SERVERS"):
            raise AssertionError("systemd-analyze is missing (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    daemon_bin = Path(sys.executable).with_name("artisyncd")
    assert daemon_bin.exists(), daemon_bin
    for unit in ("artisyncd.service", "artisyncd.socket", "artisyncd-user.service"):
        text = (REPO / "systemd" / unit).read_text()
        # where README installs it: /usr/local/bin (a venv here)
        text = text.replace("/usr/local/bin/artisyncd", str(daemon_bin))
        text = text.replace("%h/.local/bin/artisyncd", str(daemon_bin))
        (tmp_path / unit).write_text(text)
    units = [str(tmp_path / u) for u in ("artisyncd.socket", "artisyncd.service")]
    for args in (units, [str(tmp_path / "artisyncd-user.service")]):
        res = subprocess.run(
            [analyze, "verify", "--man=no", *args], capture_output=True, text=True, timeout=60
        )
        complaints = [ln for ln in res.stderr.splitlines() if "artisyncd" in ln]
        assert res.returncode == 0 and not complaints, res.stderr
    service = (REPO / "systemd" / "artisyncd.service").read_text()
    for line in ("Type=notify", "User=artisync", "ProtectSystem=strict", "UMask=0077"):
        assert line in service.splitlines(), line
