"""Running as a service: autostart with idle exit, systemd socket activation and
readiness, and the group-shared system mode."""

from __future__ import annotations

import grp
import os
import socket
import stat
import subprocess
import sys
import time

from artisync.daemon.app import spool_is_served
from tests.harness import Conn, DaemonProc, Env, run_py, stored_objects


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
    assert list((env.spool / "outbox").glob("*.rec")) == []


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


def test_group_mode_shares_socket_and_spool_with_the_group(env: Env) -> None:
    group = grp.getgrgid(os.getgid() if os.getgid() != 0 else 1)
    d = DaemonProc(env, ARTISYNC_GROUP=group.gr_name).wait_ready()
    try:
        st = os.stat(env.socket)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group.gr_gid
        sp = os.stat(env.spool)
        assert stat.S_IMODE(sp.st_mode) == 0o2770 and sp.st_gid == group.gr_gid
        for sub in ("blobs", "tmp", "outbox"):
            assert os.stat(env.spool / sub).st_gid == group.gr_gid
    finally:
        d.stop()


def test_unknown_group_is_a_clear_error(env: Env) -> None:
    d = DaemonProc(env, ARTISYNC_GROUP="no-such-group-artisync")
    assert d.wait_exit(30) == 2
    assert "group 'no-such-group-artisync' does not exist" in d.output()
