"""Shared by the benchmarks: an isolated artisync world, a real daemon, tables.

Everything lives in a short temp folder under /tmp (the AF_UNIX path limit),
on the same filesystem as the spool, and is removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


class World:
    """Spool, socket, storage, empty config and cache of one benchmark run."""

    def __init__(self, root: Path, *, fresh: bool = True) -> None:
        self.root = root
        self.spool = root / "spool"
        self.socket = root / "run" / "d.sock"
        self.storage = root / "storage"
        self.config = root / "config.toml"
        self.scratch = root / "scratch"  # inputs and plain writes: same filesystem as the spool
        if fresh:
            self.config.write_text("")
            self.scratch.mkdir()
        self.vars = {
            "ARTISYNC_SPOOL": str(self.spool),
            "ARTISYNC_SOCKET": str(self.socket),
            "ARTISYNC_OUTPUT_URI": str(self.storage),
            "ARTISYNC_CONFIG": str(self.config),
            "ARTISYNC_AUTOSTART": "0",
            "XDG_CACHE_HOME": str(root / "cache"),
        }

    @classmethod
    def reopen(cls, root: Path) -> World:
        """The world another process made, with a scratch folder of this process's own
        (a benchmark's child process)."""
        w = cls(root, fresh=False)
        w.scratch = root / "scratch" / f"child-{os.getpid()}"
        w.scratch.mkdir(parents=True)
        return w

    def environ(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARTISYNC_")}
        # an installed package has its bytecode cached: a first call must not include
        # compiling our modules (as it would where PYTHONDONTWRITEBYTECODE is set)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(self.vars)
        env.update(extra)
        return env

    def apply(self) -> None:
        """Point this process's artisync at the world (before ``Task.init``)."""
        for k in [k for k in os.environ if k.startswith("ARTISYNC_")]:
            del os.environ[k]
        os.environ.update(self.vars)


FILESYSTEMS = ("host", "xfs")  # where a world lives: /tmp's filesystem, or a fresh XFS


@contextlib.contextmanager
def world(fs: str = "host") -> Iterator[World]:
    """A fresh world under /tmp; with ``fs="xfs"``, on an XFS with reflinks made for
    it (a sparse image on a loop device: root and xfsprogs needed), where
    ``copy_file_range`` shares a file's extents instead of copying its bytes."""
    root = Path(tempfile.mkdtemp(prefix="asb-", dir="/tmp"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        if fs == "xfs":
            stack.enter_context(_xfs_mounted_at(root))
        elif fs != "host":
            raise ValueError(f"unknown filesystem {fs!r}: one of {', '.join(FILESYSTEMS)}")
        yield World(root)


@contextlib.contextmanager
def _xfs_mounted_at(root: Path, size: str = "16G") -> Iterator[None]:
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        raise SystemExit("--fs xfs mounts a loop device: run as root, with xfsprogs installed")
    image = Path(tempfile.mkdtemp(prefix="asb-img-", dir="/var/tmp")) / "xfs.img"
    try:
        subprocess.run(["truncate", "-s", size, str(image)], check=True)
        subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(root)], check=True)
        try:
            os.chmod(root, 0o700)
            yield
        finally:
            shutil.rmtree(root, ignore_errors=True)  # leaves the mount point itself
            # lazily: a process of the run may still be exiting (the encode workers)
            subprocess.run(["umount", "--lazy", str(root)], check=True)
    finally:
        shutil.rmtree(image.parent, ignore_errors=True)


class Daemon:
    """A real ``python -m artisync.daemon`` process serving the world's spool."""

    def __init__(self, w: World, cpus: set[int] | None = None, **extra: str) -> None:
        """``cpus``: the cores the daemon runs on, every thread and process of it (set
        at its start: a thread inherits its maker's cores, and one made before a later
        ``sched_setaffinity`` of the main thread would run anywhere)."""
        self.world = w
        self.log = w.root / "daemon.log"
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "artisync.daemon", "--log-level", "WARNING"],
            env=w.environ(**extra),
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            preexec_fn=None if cpus is None else (lambda: os.sched_setaffinity(0, cpus)),
        )

    def wait_ready(self, timeout: float = 30.0) -> Daemon:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited:\n{self.log.read_text(errors='replace')}")
            try:
                call(self.world.socket, {"op": "hello", "version": _protocol_version()})
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"daemon not ready:\n{self.log.read_text(errors='replace')}")

    def wait_warm(self, timeout: float = 30.0) -> Daemon:
        """Until the daemon has loaded its default destination's backend and opened its
        client, as a node's long-running daemon has before a trainer starts."""
        deadline = time.monotonic() + timeout
        while not call(self.world.socket, {"op": "status"})["status"].get("warm"):
            if time.monotonic() > deadline:
                raise TimeoutError("daemon not warmed up")
            time.sleep(0.05)
        return self

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Until everything the daemon acknowledged is committed."""
        call(self.world.socket, {"op": "wait", "task_id": None, "timeout": timeout}, timeout + 5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._logf.close()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a daemon and its encode workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            pass
    return out


def _protocol_version() -> int:
    from artisync.protocol import PROTOCOL_VERSION

    return int(PROTOCOL_VERSION)


def call(path: Path, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """One request on a fresh connection (after the hello); returns the final reply."""
    from artisync.protocol import FrameDecoder, encode

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        decoder = FrameDecoder()
        msgs = [{"op": "hello", "version": _protocol_version()}]
        if msg["op"] != "hello":
            msgs.append(msg)
        reply: dict[str, Any] = {}
        for rid, m in enumerate(msgs, 1):
            s.sendall(encode({**m, "id": rid}))
            reply = _read_reply(s, decoder, rid)
        return reply


def _read_reply(s: socket.socket, decoder: Any, rid: int) -> dict[str, Any]:
    while True:
        data = s.recv(65536)
        if not data:
            raise ConnectionError("daemon closed the connection")
        for reply in decoder.feed(data):
            if reply.get("id") == rid and "progress" not in reply:
                if not reply.get("ok"):
                    raise RuntimeError(f"daemon error: {reply}")
                return dict(reply)


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000.0


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (readable as plain text too); columns of
    numbers are right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    right = [all(_numeric(r[i]) for r in rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "| " + " | ".join(out) + " |"

    rule = ["-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right, strict=True)]
    return "\n".join([line(headers), "|" + "|".join(rule) + "|", *(line(r) for r in rows)])


def _numeric(cell: str) -> bool:
    try:
        float(cell.lstrip("+"))
    except ValueError:
        return cell == "-"
    return True


def machine() -> str:
    import platform

    return (
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


class Proc:
    """CPU seconds (user + system) of a live process and all its descendants."""

    @staticmethod
    def memory(pid: int) -> tuple[int, int]:
        """(resident, anonymous) bytes of the process and its descendants: RSS counts
        the shared libraries' pages too; anonymous (RssAnon + RssShmem) is what the
        processes hold themselves."""
        rss = anon = 0
        for p in process_tree(pid):
            try:
                with open(f"/proc/{p}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            rss += int(line.split()[1]) * 1024
                        elif line.startswith(("RssAnon:", "RssShmem:")):
                            anon += int(line.split()[1]) * 1024
            except FileNotFoundError:
                continue
        return rss, anon

    @staticmethod
    def cpu(pid: int) -> float:
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for p in process_tree(pid):
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
        return total


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child and its waited-for children, its stdout)."""
    # output to files, not pipes: a child that writes more than a pipe holds would
    # wait for a reader while we wait for it to exit
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:3]} failed:\n{err.read().decode(errors='replace')[-3000:]}")
        return wall, usage.ru_utime + usage.ru_stime, out.read().decode()
