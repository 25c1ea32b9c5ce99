"""Where things are: resolved the same way by the SDK, the daemon and the CLI.

A TOML file (``ARTISYNC_CONFIG``, else ``~/.config/artisync/config.toml``, else
``/etc/artisync/config.toml``), overridden by ``ARTISYNC_*`` variables. Only the
``[artisync]`` table is read here; the daemon reads its own tables from the same
file (see ``artisync.daemon.config``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._sizes import parse_size

_FALSE = {"0", "false", "no", "off", ""}
SYSTEM_SOCKET = Path("/run/artisync/artisyncd.sock")
REUSE_WINDOW = 6 * 3600.0  # seconds; see Settings.reuse_window


@dataclass(frozen=True)
class Settings:
    spool: Path
    socket: Path
    output_uri: str
    autostart: bool
    idle_exit: float  # seconds an autostarted daemon lingers with nothing to do
    ack_timeout: float  # seconds the SDK waits for an acknowledgement
    wait_timeout: float  # default limit of wait_on_upload / flush(wait_for_uploads=True)
    config_path: Path | None
    raw: Mapping[str, Any]  # the whole parsed TOML file, for the daemon's own tables
    spool_limit: int = 0  # bytes the spool may hold (payloads, temp files, outbox); 0: no limit
    spool_full: str = "wait"  # when full: "wait" for room (up to spool_wait_timeout) or "error"
    spool_wait_timeout: float = 300.0
    allow_pickle: bool = False  # let Artifact.get() unpickle (it runs arbitrary code)
    exit_timeout: float = 5.0  # seconds SIGTERM/SIGHUP wait for queued reports to reach the spool
    # a node's shared daemon (system service), used when this user's own daemon does not answer
    system_socket: Path = SYSTEM_SOCKET
    output_chosen: bool = False  # ARTISYNC_OUTPUT_URI or the config file named output_uri
    socket_chosen: bool = False  # ARTISYNC_SOCKET or the config file named the socket: no search
    daemon_user: str = "artisync"  # the user a shared daemon must run as (checked by the kernel)
    # this user's own folder where reports wait while a shared daemon cannot be reached
    handover: Path = Path("handover")
    # an object already in storage is reused (not sent again) only if it was written or
    # confirmed this recently, and the record that points to it is published within the
    # same window; `artisync prune` deletes only objects older than twice it. Every
    # writer and pruner of one bucket must agree on it (see README: Retention).
    reuse_window: float = REUSE_WINDOW
    cache_limit: int = 10 * 1024**3  # bytes the local object cache may hold (0: no limit)
    # a big file reported to this user's own daemon is copied by the daemon, under a
    # read lease it takes on the file, instead of by the caller (see README: leases)
    file_lease: bool = True


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or os.path.expanduser("~"))


def config_path(env: Mapping[str, str]) -> Path | None:
    if env.get("ARTISYNC_CONFIG"):
        return Path(env["ARTISYNC_CONFIG"])
    xdg = Path(env.get("XDG_CONFIG_HOME") or _home(env) / ".config")
    for candidate in (xdg / "artisync" / "config.toml", Path("/etc/artisync/config.toml")):
        if candidate.is_file():
            return candidate
    return None


def load_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist (ARTISYNC_CONFIG)") from None
    except PermissionError:
        raise ValueError(f"config file {path} is not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None


def default_socket(env: Mapping[str, str]) -> Path:
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "artisync" / "artisyncd.sock"
    return Path(f"/tmp/artisync-{os.getuid()}") / "artisyncd.sock"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings; raise ValueError with a clear message on bad values."""
    env = os.environ if env is None else env
    path = config_path(env)
    raw = load_toml(path)
    table = raw.get("artisync", {})
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [artisync] must be a table")
    state = Path(env.get("XDG_STATE_HOME") or _home(env) / ".local" / "state")
    data = Path(env.get("XDG_DATA_HOME") or _home(env) / ".local" / "share")

    def pick(var: str, key: str, default: Any) -> Any:
        if env.get(var):
            return env[var]
        return table.get(key, default)

    spool = Path(pick("ARTISYNC_SPOOL", "spool", state / "artisync" / "spool")).expanduser()
    sock = Path(pick("ARTISYNC_SOCKET", "socket", default_socket(env))).expanduser()
    chosen = bool(env.get("ARTISYNC_SOCKET") or table.get("socket"))
    system_sock = Path(pick("ARTISYNC_SYSTEM_SOCKET", "system_socket", SYSTEM_SOCKET))
    output = str(pick("ARTISYNC_OUTPUT_URI", "output_uri", str(data / "artisync" / "storage")))
    auto = _flag(pick("ARTISYNC_AUTOSTART", "autostart", True))
    try:
        idle = float(pick("ARTISYNC_IDLE_EXIT", "idle_exit", 300.0))
        ack = float(pick("ARTISYNC_ACK_TIMEOUT", "ack_timeout", 10.0))
        wait = float(pick("ARTISYNC_WAIT_TIMEOUT", "wait_timeout", 300.0))
        exit_timeout = float(pick("ARTISYNC_EXIT_TIMEOUT", "exit_timeout", 5.0))
        reuse = float(pick("ARTISYNC_REUSE_WINDOW", "reuse_window", REUSE_WINDOW))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad number in artisync settings: {exc}") from None
    spool_limit, spool_full, spool_wait = _quota(pick)
    try:
        cache_limit = parse_size(pick("ARTISYNC_CACHE_LIMIT", "cache_limit", 10 * 1024**3))
    except ValueError:
        raise ValueError('cache_limit must be a size in bytes (e.g. "10G"), 0 for none') from None
    if len(os.fsencode(str(sock))) > 100:
        raise ValueError(f"socket path {sock} is too long for a Unix socket (limit ~100 bytes)")
    return Settings(
        spool=spool,
        socket=sock,
        output_uri=output,
        autostart=auto,
        idle_exit=idle,
        ack_timeout=ack,
        wait_timeout=wait,
        config_path=path,
        raw=raw,
        spool_limit=spool_limit,
        spool_full=spool_full,
        spool_wait_timeout=spool_wait,
        allow_pickle=_flag(table.get("allow_pickle", False)),
        exit_timeout=exit_timeout,
        system_socket=system_sock.expanduser(),
        socket_chosen=chosen,
        output_chosen=bool(env.get("ARTISYNC_OUTPUT_URI") or table.get("output_uri")),
        daemon_user=str(pick("ARTISYNC_DAEMON_USER", "daemon_user", "artisync")),
        handover=state / "artisync" / "handover",
        reuse_window=reuse,
        cache_limit=cache_limit,
        file_lease=_flag(pick("ARTISYNC_FILE_LEASE", "file_lease", True)),
    )


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    return bool(value)


SPOOL_FULL_MODES = ("wait", "error")


def _quota(pick: Any) -> tuple[int, str, float]:
    try:
        limit = parse_size(pick("ARTISYNC_SPOOL_LIMIT", "spool_limit", 0))
    except ValueError:
        raise ValueError(
            'spool_limit must be a size in bytes (e.g. 2000000000 or "20G"), 0 for none'
        ) from None
    mode = str(pick("ARTISYNC_SPOOL_FULL", "spool_full", "wait")).strip().lower()
    if mode not in SPOOL_FULL_MODES:
        raise ValueError(f"spool_full must be one of {SPOOL_FULL_MODES}, not {mode!r}")
    try:
        wait = float(pick("ARTISYNC_SPOOL_WAIT_TIMEOUT", "spool_wait_timeout", 300.0))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad number in artisync settings: {exc}") from None
    return limit, mode, wait
