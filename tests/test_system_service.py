"""The system service with real Unix users: a daemon running as its own user, two
trainers in its group reporting at once, and users it must refuse.

Each trainer finds the daemon on its own (ARTISYNC_SYSTEM_SOCKET stands for
/run/artisync/artisyncd.sock; no ARTISYNC_SOCKET, no output_uri).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import users
from tests.users import ALICE, BOB, DAEMON, EVE, GROUP, AsUser

why = users.can_make_users()
REQUIRED = bool(os.environ.get("ARTISYNC_REQUIRE_SERVERS"))  # CI: run them, never skip
pytestmark = pytest.mark.skipif(why is not None and not REQUIRED, reason=str(why))


@dataclass
class Node:
    base: Path
    spool: Path
    run: Path
    storage: Path
    python: list[str]
    shim: Path
    daemon_user: AsUser
    proc: subprocess.Popen[str] | None = None

    @property
    def socket(self) -> Path:
        return self.run / "artisyncd.sock"

    def trainer(self, name: str) -> AsUser:
        return AsUser(
            name,
            self.base,
            self.python,
            self.shim,
            {"ARTISYNC_SYSTEM_SOCKET": str(self.socket), "ARTISYNC_DAEMON_USER": DAEMON},
        )

    def start(self) -> None:
        log = open(self.base / f"daemon-{time.monotonic_ns()}.log", "w")
        self.proc = self.daemon_user.popen(
            [*self.python, "-m", "artisync.daemon", "--log-level", "DEBUG"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.log = Path(log.name)
        deadline = time.monotonic() + 30
        while not _answers(self.socket):  # a stale socket file may be there already
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(40)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    if why is not None:
        raise AssertionError(f"the multi-user tests cannot run: {why}")
    repo = Path(__file__).resolve().parent.parent
    closed = users.make_reachable(repo, allowed=REQUIRED)
    if closed is not None:
        pytest.skip(closed)
    users.ensure_users()
    base = Path(tempfile.mkdtemp(prefix="as-sys-", dir="/tmp"))
    os.chmod(base, 0o755)
    shim = base / "shim"
    python = users.python_for_users(shim)
    spool = users.make_dir(base / "spool", DAEMON, 0o700)
    run = users.make_dir(base / "run", DAEMON, 0o750, GROUP)
    storage = users.make_dir(base / "storage", DAEMON, 0o755)
    daemon_user = AsUser(
        DAEMON,
        base,
        python,
        shim,
        {
            "ARTISYNC_SPOOL": str(spool),
            "ARTISYNC_SOCKET": str(run / "artisyncd.sock"),
            "ARTISYNC_GROUP": GROUP,
            "ARTISYNC_ALLOWED_DESTINATIONS": str(storage),
            "ARTISYNC_AUTOSTART": "0",
            "ARTISYNC_GC_GRACE": "2",
            "ARTISYNC_GC_INTERVAL": "0.5",
        },
    )
    n = Node(base, spool, run, storage, python, shim, daemon_user)
    n.start()
    try:
        yield n
    finally:
        n.stop()
        subprocess.run(["rm", "-rf", str(base)], check=False)


REPORT = """
import json, os, sys
import numpy as np, pandas as pd
from artisync import Task
task = Task.init(project_name="shared", task_name=os.environ["USER_TAG"])
df = pd.DataFrame({"a": np.arange(5000), "b": np.arange(5000) * 0.5})
os.makedirs("folder", exist_ok=True)
for i in range(3):
    with open(f"folder/f{i}.bin", "wb") as f:
        f.write(os.urandom(10000))
with open("model.bin", "wb") as f:
    f.write(os.urandom(200000))
task.upload_artifact("df", df)
task.upload_artifact("model", "model.bin")
task.upload_artifact("folder", "folder")
task.upload_artifact("small", {"who": os.environ["USER_TAG"]})
task.upload_artifact("eye", np.eye(200))
# read back at once, in this process: it waits for the upload (the spool is the daemon's)
assert task.artifacts["df"].get()["b"].tolist() == (np.arange(5000) * 0.5).tolist()
assert open(task.artifacts["model"].get(), "rb").read() == open("model.bin", "rb").read()
task.flush(wait_for_uploads=True, timeout=120)
print(json.dumps({"task": task.id}))
"""

READ_BACK = """
import json, os, sys, filecmp
import numpy as np, pandas as pd
from artisync import Task
t = Task.get_task(task_id=sys.argv[1])
a = t.artifacts
df = a["df"].get()
assert df["a"].tolist() == list(range(5000)), "df"
assert open(a["model"].get(), "rb").read() == open("model.bin", "rb").read(), "model"
folder = a["folder"].get()
for i in range(3):
    assert filecmp.cmp(os.path.join(folder, f"f{i}.bin"), f"folder/f{i}.bin", shallow=False)
assert a["small"].get() == {"who": os.environ["USER_TAG"]}
assert (a["eye"].get() == np.eye(200)).all()
print("verified", sorted(a))
"""


def _json_line(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    value: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return value


def _try_init(user: AsUser, output_uri: str | None = None) -> str:
    """``Task.init`` as ``user``: "ACCEPTED", or the exception's class and message."""
    arg = f", output_uri={output_uri!r}" if output_uri else ""
    res = user.py(
        f"""
        from artisync import Task
        try:
            Task.init(project_name="p", task_name="t"{arg})
            print("ACCEPTED")
        except Exception as exc:
            print(type(exc).__name__, exc)
        """
    )
    return res.stdout + res.stderr


def test_two_users_report_at_once_and_each_reads_back_its_own(node: Node) -> None:
    alice, bob = node.trainer(ALICE), node.trainer(BOB)
    alice.env["USER_TAG"], bob.env["USER_TAG"] = "alice", "bob"
    procs = [
        u.popen([*node.python, "-c", REPORT], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for u in (alice, bob)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        results.append(_json_line(subprocess.CompletedProcess(p.args, p.returncode, out, err)))
    for u, res in zip((alice, bob), results, strict=True):
        back = u.py(READ_BACK.replace("sys.argv[1]", repr(res["task"])))
        assert back.returncode == 0, back.stderr
        assert "verified ['df', 'eye', 'folder', 'model', 'small']" in back.stdout
    # the spool is the daemon's alone: nothing in it is another user's to read
    for path in [node.spool, *node.spool.rglob("*")]:
        st = os.lstat(path)
        assert st.st_uid == users.uid(DAEMON), path
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0, (path, oct(st.st_mode))
    probe = bob.py(
        f"""
        import os
        for p in [{str(node.spool)!r}, {str(node.spool / "raw")!r}, {str(node.spool / "blobs")!r}]:
            try:
                os.listdir(p)
                print("READABLE", p)
            except PermissionError:
                print("denied")
        try:
            open({str(node.spool / "journal.db")!r}, "rb")
            print("READABLE journal")
        except PermissionError:
            print("denied")
        """
    )
    assert probe.stdout.split() == ["denied"] * 4, probe.stdout + probe.stderr
    # nor can a trainer reach another's handover folder
    peek = bob.py(f"import os; os.listdir({str(alice.home)!r})")
    assert "PermissionError" in peek.stderr


def test_a_user_cannot_add_to_another_users_task(node: Node) -> None:
    alice, bob = node.trainer(ALICE), node.trainer(BOB)
    made = alice.py(
        """
        import json
        from artisync import Task
        t = Task.init(project_name="owned", task_name="alice's")
        t.upload_artifact("mine", {"x": 1})
        t.flush(wait_for_uploads=True, timeout=60)
        print(json.dumps({"task": t.id}))
        """
    )
    task_id = _json_line(made)["task"]
    attempt = bob.py(
        f"""
        from artisync import Task
        t = Task.get_task(task_id={task_id!r})
        try:
            t.upload_artifact("planted", {{"evil": True}})
            print("ACCEPTED")
        except Exception as exc:
            print("refused:", exc)
        """
    )
    assert "refused:" in attempt.stdout, attempt.stdout + attempt.stderr
    assert "belongs to another user" in attempt.stdout
    names = alice.py(
        f"from artisync import Task; print(sorted(Task.get_task(task_id={task_id!r}).artifacts))"
    )
    assert names.stdout.strip() == "['mine']", names.stdout + names.stderr


def test_a_record_handed_over_twice_is_kept_once(node: Node) -> None:
    """A handover that died between the acknowledgement and removing its copy sends the
    record again: taken as a duplicate, not refused. A payload not handed over as a
    snapshot (a record naming a hash) is refused: hashes prove nothing."""
    alice = node.trainer(ALICE)
    res = alice.py(
        """
        from artisync import Task
        from artisync._session import Session
        t = Task.init(project_name="dup", task_name="twice")
        t.upload_artifact("a", {"pad": "d" * 6000})
        t.flush(wait_for_uploads=True, timeout=60)
        rec = t.artifacts["a"].record
        s = Session.get()
        print(s.request({"op": "submit", "record": rec})["duplicate"])
        forged = dict(rec, record_id="f" * 32)
        try:
            s.request({"op": "submit", "record": forged})
            print("ACCEPTED")
        except Exception as exc:
            print("refused:", exc)
        """
    )
    lines = res.stdout.splitlines()
    assert lines[:1] == ["True"], res.stdout + res.stderr
    assert lines[1].startswith("refused:") and "raw snapshots" in lines[1], lines


def test_a_user_outside_the_group_is_refused(node: Node) -> None:
    eve = node.trainer(EVE)
    # the socket's folder and mode keep her out (the kernel says no) ...
    first = _try_init(eve)
    assert first.startswith("NotAllowed"), first
    assert "add you to its group" in first
    # ... and so does the daemon, should an administrator open them up by mistake
    os.chmod(node.run, 0o755)
    os.chmod(node.socket, 0o666)
    try:
        second = _try_init(eve)
    finally:
        os.chmod(node.run, 0o750)
        os.chmod(node.socket, 0o660)
    assert second.startswith("NotAllowed"), second
    assert f"not a member of group '{GROUP}'" in second
    assert not (node.storage / "projects" / "p").exists()
    assert not list((eve.home / ".local/state/artisync/handover/outbox").glob("*.rec"))


def test_a_destination_outside_the_allow_list_is_refused(node: Node) -> None:
    elsewhere = node.base / "elsewhere"
    res = _try_init(node.trainer(ALICE), str(elsewhere))
    assert res.startswith("Refused"), res
    assert "allowed_destinations" in res and str(node.storage) in res
    assert not elsewhere.exists()


def test_daemon_sigkill_and_restart_loses_nothing(node: Node) -> None:
    """20 reports acknowledged, SIGKILL, 20 more while no daemon runs, restart, flush."""
    alice = node.trainer(ALICE)
    step = alice.home / "step"
    alice.env["STEP"] = str(step)
    proc = alice.popen(
        [
            *node.python,
            "-c",
            """
import json, os, time
from artisync import Task

def wait_for(word):
    while not (os.path.exists(os.environ["STEP"] + "." + word)):
        time.sleep(0.02)

t = Task.init(project_name="crash", task_name="through a restart")
for i in range(40):
    if i == 20:
        open(os.environ["STEP"], "w").write("half")
        wait_for("killed")
    t.upload_artifact(f"a{i:02d}", {"i": i, "pad": "x" * 6000})
open(os.environ["STEP"], "w").write("all")
wait_for("restarted")
t.flush(wait_for_uploads=True, timeout=120)
print(json.dumps({"task": t.id}))
""",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def reached(word: str) -> None:
        deadline = time.monotonic() + 60
        while not (step.exists() and step.read_text() == word):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.02)

    reached("half")
    node.kill()
    Path(f"{step}.killed").touch()
    reached("all")
    waiting = list((alice.home / ".local/state/artisync/handover/outbox").glob("*.rec"))
    assert len(waiting) == 20, "the reports made meanwhile wait in her own folder"
    node.start()
    Path(f"{step}.restarted").touch()
    out, err = proc.communicate(timeout=180)
    task_id = _json_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))["task"]
    check = alice.py(
        f"""
        from artisync import Task
        a = Task.get_task(task_id={task_id!r}).artifacts
        bad = [n for n in (f"a{{i:02d}}" for i in range(40)) if a[n].get()["i"] != int(n[1:])]
        print(len(a), bad)
        """
    )
    assert check.stdout.strip() == "40 []", check.stdout + check.stderr


def test_a_run_that_starts_while_the_daemon_is_away_is_handed_over_later(node: Node) -> None:
    alice = node.trainer(ALICE)
    alice.py("from artisync import Task; Task.init(project_name='p', task_name='seen')")
    node.stop()  # a clean stop: its socket is gone, its folder stays
    try:
        res = alice.py(
            """
            from artisync import Task
            t = Task.init(project_name="offline start", task_name="while away")
            t.upload_artifact("payload", {"pad": "z" * 7000})
            print("ok", t.id, t.output_uri)
            """
        )
        assert res.stdout.startswith("ok"), res.stdout + res.stderr
        _, task_id, dest = res.stdout.split()
        assert dest == str(node.storage), "the destination the daemon offered last time"
        assert "handed over by the next artisync process of yours" in res.stderr
        assert not (node.storage / "tasks" / task_id).exists()
    finally:
        node.start()
    wait = alice.popen(
        [*node.python, "-m", "artisync.cli", "wait", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = wait.communicate(timeout=120)
    assert wait.returncode == 0, out + err
    check = alice.py(
        f"from artisync import Task; "
        f"print(Task.get_task(task_id={task_id!r}).artifacts['payload'].get()['pad'][:3])"
    )
    assert check.stdout.strip() == "zzz", check.stdout + check.stderr


def test_socket_activation_through_systemd_socket_activate(node: Node) -> None:
    """The daemon started by a real activator on the first connection, as its user."""
    run = users.make_dir(node.base / "run-activated", DAEMON, 0o750, GROUP)
    spool = users.make_dir(node.base / "spool-activated", DAEMON, 0o700)
    sock = run / "artisyncd.sock"
    daemon = AsUser(
        DAEMON,
        node.base,
        node.python,
        node.shim,
        {**node.daemon_user.env, "ARTISYNC_SPOOL": str(spool), "ARTISYNC_SOCKET": str(sock)},
    )
    passed = [f"--setenv={k}" for k in daemon.env]  # it passes on only what it is told to
    activator = daemon.popen(
        [
            "systemd-socket-activate",
            "-l",
            str(sock),
            *passed,
            *node.python,
            "-m",
            "artisync.daemon",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert time.monotonic() < deadline and activator.poll() is None
            time.sleep(0.05)
        os.chown(sock, -1, users.gid(GROUP))  # what the unit's SocketGroup and SocketMode do
        os.chmod(sock, 0o660)
        assert not (spool / "daemon.lock").exists(), "no daemon before the first connection"
        alice = node.trainer(ALICE)
        alice.env["ARTISYNC_SYSTEM_SOCKET"] = str(sock)
        res = alice.py(
            """
            from artisync import Task
            t = Task.init(project_name="activated", task_name="first use")
            t.upload_artifact("payload", {"pad": "y" * 9000})
            t.flush(wait_for_uploads=True, timeout=60)
            print("ok", t.id)
            """
        )
        assert res.stdout.startswith("ok"), res.stdout + res.stderr
        assert (spool / "daemon.lock").exists(), "the activator started the daemon"
        task_id = res.stdout.split()[1]
        assert list((node.storage / "tasks" / task_id / "artifacts").iterdir())
    finally:
        activator.terminate()
        activator.wait(40)


def test_a_socket_served_by_another_user_gets_no_data(node: Node) -> None:
    """A socket in a trusted folder, but listened on by another user's process."""
    folder = users.make_dir(node.base / "planted", "root", 0o755)
    path = folder / "d.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o666)
    bob = node.trainer(BOB)
    fake = bob.popen(  # bob's process calls listen(): the kernel names him as the peer
        [
            *node.python,
            "-c",
            "import socket, sys, time; s = socket.socket(fileno=int(sys.argv[1])); "
            "s.listen(8); c = s.accept()[0]; time.sleep(10)",
            str(listener.fileno()),
        ],
        pass_fds=(listener.fileno(),),
    )
    listener.close()
    try:
        alice = node.trainer(ALICE)
        alice.env["ARTISYNC_SOCKET"] = str(path)
        res = _try_init(alice)
        assert res.startswith("UntrustedDaemon"), res
        assert BOB in res
    finally:
        fake.kill()
        fake.wait(10)


def test_a_planted_socket_folder_is_refused(node: Node) -> None:
    """Eve creates /tmp/artisync-<alice's uid> before alice's first run."""
    alice = node.trainer(ALICE)
    planted = Path(f"/tmp/artisync-{users.uid(ALICE)}")
    subprocess.run(["rm", "-rf", str(planted)], check=True)
    users.make_dir(planted, EVE, 0o777)
    try:
        res = _try_init(alice)
    finally:
        subprocess.run(["rm", "-rf", str(planted)], check=True)
    assert res.startswith("UnsafeFolder"), res
    assert EVE in res and "remove it" in res


def test_the_daemon_refuses_a_spool_others_may_write(node: Node) -> None:
    spool = users.make_dir(node.base / "open-spool", DAEMON, 0o777)
    daemon = AsUser(
        DAEMON,
        node.base,
        node.python,
        node.shim,
        {**node.daemon_user.env, "ARTISYNC_SPOOL": str(spool)},
    )
    proc = daemon.popen(
        [*node.python, "-m", "artisync.daemon"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2, out
    assert "writable by others" in out and f"chmod go-w {spool}" in out
