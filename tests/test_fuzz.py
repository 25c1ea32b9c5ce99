"""Hostile input on the socket of a live daemon (hypothesis): random bytes, truncated
and oversized frames, well-framed messages of the wrong types, huge strings and deep
nesting, unknown versions, thousands of idle connections. The daemon must answer or
drop the offender, never crash, never leak, and keep serving everyone else."""

from __future__ import annotations

import os
import random
import resource
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artisync.protocol import MAGIC, PROTOCOL_VERSION, Spool, encode
from tests.harness import Conn, DaemonProc, Env, short_tmpdir
from tests.records import artifact_record, task_record

# hypothesis's failure report imports a module that warns about mypy_extensions
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

OPS = ["hello", "submit", "wait", "status", "query_task", "retry", "nope", ""]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[Env, DaemonProc]]:
    with short_tmpdir() as root:
        env = Env(root)
        d = DaemonProc(env, ARTISYNC_CONCURRENCY="2").wait_ready()
        try:
            yield env, d
        finally:
            if d.proc.poll() is not None:
                print(d.output()[-5000:])
            d.stop()


def _exchange(env: Env, data: bytes, *, close_write: bool = True) -> list[Any]:
    """Send ``data`` on a fresh connection; return what came back before the daemon
    closed it (or went quiet)."""
    from artisync.protocol import FrameDecoder

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5 if close_write else 0.05)  # left open: the daemon waits for more
    s.connect(str(env.socket))
    replies: list[Any] = []
    try:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        dec = FrameDecoder()
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            replies += dec.feed(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()
    return replies


def _alive(env: Env, d: DaemonProc) -> None:
    assert d.proc.poll() is None, d.output()[-3000:]
    with Conn(env.socket, timeout=10) as c:
        assert c.hello()["ok"]
        assert c.call("status")["ok"]


def _frame(body: bytes) -> bytes:
    return struct.pack(">BI", MAGIC, len(body)) + body


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=50)
    | st.binary(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(data=st.binary(max_size=2000))
@FUZZ
def test_random_bytes(live: tuple[Env, DaemonProc], data: bytes) -> None:
    env, _ = live
    for reply in _exchange(env, data):
        assert isinstance(reply, dict) and reply.get("ok") is False


@given(op=st.sampled_from(OPS), fields=st.dictionaries(st.text(max_size=12), values, max_size=6))
@FUZZ
def test_well_framed_messages_of_any_shape(
    live: tuple[Env, DaemonProc], op: str, fields: dict[str, Any]
) -> None:
    env, _ = live
    hello = encode({"op": "hello", "id": 0, "version": PROTOCOL_VERSION})
    msg = {**fields, "op": op, "id": 1}
    replies = _exchange(env, hello + encode(msg))
    assert replies and replies[0]["ok"] is True  # the hello
    for reply in replies[1:]:
        assert isinstance(reply, dict) and "ok" in reply


record_fields = st.sampled_from(
    ["kind", "record_id", "task_id", "created", "dest", "name", "sha256", "size", "blobs",
     "metadata", "project", "status", "started", "ended", "event", "delete_after", "pid"]
)  # fmt: skip


@given(field=record_fields, value=values, kind=st.sampled_from(["task", "artifact"]))
@FUZZ
def test_records_with_one_field_replaced(
    live: tuple[Env, DaemonProc], field: str, value: Any, kind: str
) -> None:
    env, _ = live
    spool = Spool(env.spool)
    rec = (
        task_record(str(env.storage))
        if kind == "task"
        else artifact_record(spool, str(env.storage), os.urandom(20))
    )
    rec[field] = value
    hello = encode({"op": "hello", "id": 0, "version": PROTOCOL_VERSION})
    replies = _exchange(env, hello + encode({"op": "submit", "id": 1, "record": rec}))
    assert len(replies) == 2 and "ok" in replies[1]


@given(frame=st.binary(min_size=1, max_size=300), cut=st.integers(min_value=0, max_value=299))
@FUZZ
def test_truncated_frames(live: tuple[Env, DaemonProc], frame: bytes, cut: int) -> None:
    env, _ = live
    whole = encode({"op": "hello", "id": 0, "version": PROTOCOL_VERSION}) + _frame(frame)
    _exchange(env, whole[: max(1, len(whole) - cut)])


def test_oversized_huge_and_deep(live: tuple[Env, DaemonProc]) -> None:
    env, d = live
    hello = encode({"op": "hello", "id": 0, "version": PROTOCOL_VERSION})
    # a header announcing 4 GiB, and one just over the limit
    for n in (2**32 - 1, 16 * 1024 * 1024 + 1):
        replies = _exchange(env, struct.pack(">BI", MAGIC, n) + b"x" * 1000)
        assert replies and "exceeds" in replies[0]["message"]
    # a 15 MiB string (within the frame limit) as an op, a name, a metadata value
    big = "x" * (15 * 1024 * 1024)
    assert _exchange(env, hello + encode({"op": big, "id": 1}))[1]["ok"] is False
    rec = artifact_record(Spool(env.spool), str(env.storage), b"huge")
    rec["name"] = big
    assert (
        _exchange(env, hello + encode({"op": "submit", "id": 1, "record": rec}))[1]["ok"] is False
    )
    # nesting far deeper than msgpack allows, built by hand
    for depth in (100, 1000, 100_000):
        body = b"\x91" * depth + b"\xc0"
        for reply in _exchange(env, hello + _frame(body))[1:]:
            assert reply["ok"] is False
    rec = artifact_record(Spool(env.spool), str(env.storage), b"deep")
    meta: Any = {}
    for _ in range(400):  # deep but decodable: accepted, or refused if it cannot be published
        meta = {"m": meta}
    rec["metadata"] = meta
    replies = _exchange(env, hello + encode({"op": "submit", "id": 1, "record": rec}))
    assert "ok" in replies[1]
    # unknown protocol versions, and talking before hello
    for version in (0, 2, -1, 2**63 - 1):
        reply = _exchange(env, encode({"op": "hello", "id": 0, "version": version}))
        assert reply and reply[0]["error"] == "version"
    assert _exchange(env, encode({"op": "status", "id": 0}))[0]["error"] == "hello"
    _alive(env, d)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _garbage_round(env: Env, rng: random.Random) -> None:
    hello = encode({"op": "hello", "id": 0, "version": PROTOCOL_VERSION})
    for _ in range(300):
        kind = rng.randrange(4)
        if kind == 0:
            data = rng.randbytes(rng.randrange(1, 4000))
        elif kind == 1:
            data = hello + _frame(rng.randbytes(rng.randrange(1, 4000)))
        elif kind == 2:
            body = msgpack.packb({"op": "submit", "id": 1, "record": {"kind": rng.randbytes(50)}})
            data = hello + _frame(body)[: rng.randrange(1, 40)]
        else:
            data = hello + encode({"op": "query_task", "id": 1, "name": "n" * 100_000})
        _exchange(env, data, close_write=rng.random() < 0.5)


def test_no_leak_and_others_served_under_garbage(live: tuple[Env, DaemonProc]) -> None:
    env, d = live
    rng = random.Random(1)
    _garbage_round(env, rng)  # warm up the allocator
    before = _rss(d.proc.pid)
    for _ in range(3):
        _garbage_round(env, rng)
        _alive(env, d)
    grown = _rss(d.proc.pid) - before
    assert grown < 8 * 1024 * 1024, f"daemon RSS grew by {grown / 1e6:.1f} MB over 900 bad clients"


def test_thousands_of_idle_connections(live: tuple[Env, DaemonProc]) -> None:
    env, d = live
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 3000
    if soft < want + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want + 500), hard))
    idle = []
    try:
        for i in range(want):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(env.socket))
            if i % 2:  # half of them said hello, then went quiet
                s.sendall(encode({"op": "hello", "id": 0, "version": PROTOCOL_VERSION}))
            idle.append(s)
        time.sleep(0.5)
        t0 = time.monotonic()
        with Conn(env.socket, timeout=10) as c:
            assert c.hello()["ok"]
            st_ = c.call("status")["status"]
            rec = task_record(str(env.storage))
            assert c.call("submit", record=rec)["ok"]
            assert c.call("wait", timeout=30)["ok"]
        assert time.monotonic() - t0 < 10
        assert st_["connections"] >= want // 2
    finally:
        for s in idle:
            s.close()
    _alive(env, d)
