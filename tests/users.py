"""Real Unix users for the system-service tests (CI runs as root: useradd).

A user's process is started with that user's uid, primary group and supplementary
groups (``subprocess``'s ``user``/``group``/``extra_groups``), so it is the very
process (a signal reaches it, not a wrapper such as runuser).

Each test user runs Python from this checkout's virtualenv. Its interpreter may
live where other users cannot reach (a root-owned pyenv under /root), so a user
runs the system's own CPython of the same minor version, with the virtualenv's
packages added by a ``sitecustomize`` in a folder everyone can read.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

GROUP = "asd-users"  # members may use the shared daemon
DAEMON = "asd-daemon"  # the daemon's own user (its primary group is its own)
ALICE, BOB = "asd-alice", "asd-bob"  # trainers, in GROUP
EVE = "asd-eve"  # a user outside GROUP


def can_make_users() -> str | None:
    """Why real users cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to create Unix users (CI runs as root)"
    for tool in ("useradd", "groupadd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def ensure_users() -> None:
    """Create the group and users once (idempotent: kept between runs)."""
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True)
    for name, groups in ((DAEMON, GROUP), (ALICE, GROUP), (BOB, GROUP), (EVE, None)):
        try:
            pwd.getpwnam(name)
        except KeyError:
            cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            if groups:
                cmd += ["--groups", groups]
            subprocess.run([*cmd, name], check=True)


def make_reachable(path: Path, allowed: bool) -> str | None:
    """Let other users traverse to ``path`` (each folder above it searchable: ``o+x``,
    never readable). Returns why not, when a folder is closed and ``allowed`` is off
    (outside CI nothing on the machine is changed)."""
    closed = [p for p in [path, *path.parents] if p.is_dir() and not os.stat(p).st_mode & 0o001]
    if closed and not allowed:
        return f"test users cannot reach {path}: {closed[-1]} is closed to others (o-x)"
    for folder in closed:
        os.chmod(folder, os.stat(folder).st_mode | 0o001)
        print(f"made {folder} searchable by other users (o+x) for the multi-user tests")
    return None


def uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def gid(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def python_for_users(shim_dir: Path) -> list[str]:
    """A command that runs this virtualenv's Python as any user."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import artisync"], capture_output=True, user="nobody"
        )
        if probe.returncode == 0:
            return [sys.executable]
    except PermissionError:
        pass  # its interpreter is out of their reach
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/bin:/usr/local/bin")
    if system is None:
        raise RuntimeError(f"no system {version} for other users (apt-get install python3)")
    shim_dir.mkdir(mode=0o755, exist_ok=True)
    site_dir = sysconfig.get_paths()["purelib"]
    (shim_dir / "sitecustomize.py").write_text(
        f"import site\nsite.addsitedir({site_dir!r})\n", encoding="utf-8"
    )
    os.chmod(shim_dir / "sitecustomize.py", 0o644)
    return [system]


def make_dir(path: Path, owner: str, mode: int, group: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid(owner), gid(group) if group else pwd.getpwnam(owner).pw_gid)
    os.chmod(path, mode)
    return path


class AsUser:
    """Runs commands as one user, with a private home and the given environment."""

    def __init__(self, name: str, base: Path, python: list[str], shim: Path, env: dict[str, str]):
        self.name = name
        self.home = make_dir(base / f"home-{name}", name, 0o700)
        self.python = python
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.home),
            "PYTHONPATH": str(shim),
            "LANG": "C.UTF-8",
            **env,
        }

    def popen(self, args: list[str], group: str | None = None, **kw: Any) -> subprocess.Popen[str]:
        """``group``: the primary group instead of the user's own."""
        pw = pwd.getpwnam(self.name)
        return subprocess.Popen(
            args,
            user=pw.pw_uid,
            group=gid(group) if group else pw.pw_gid,
            extra_groups=os.getgrouplist(self.name, pw.pw_gid),
            env=self.env,
            text=True,
            cwd=self.home,
            **kw,
        )

    def py(self, code: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run a Python snippet as this user; the result (never raises on failure)."""
        proc = self.popen(
            [*self.python, "-c", textwrap.dedent(code)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
