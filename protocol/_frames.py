"""Frame codec: ``MAGIC | u32 big-endian length | msgpack body``.

Sans-I/O: :class:`FrameDecoder` is fed bytes and yields decoded bodies; it
rejects an oversized frame from its header alone, before buffering the body.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from ._errors import FrameTooLarge, ProtocolError

MAGIC = 0xA5
HEADER = struct.Struct(">BI")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024


def encode(message: dict[str, Any]) -> bytes:
    """One message as one frame."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(MAGIC, len(body)) + body


def unpack_body(body: bytes) -> Any:
    """Decode a frame body; limits keep hostile input from exhausting memory."""
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_str_len=len(body),
            max_bin_len=len(body),
            max_array_len=len(body),
            max_map_len=len(body) // 2,
            max_ext_len=0,
        )
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise ProtocolError(f"undecodable frame body: {exc.__class__.__name__}") from exc
    except RecursionError as exc:  # pragma: no cover - depth guarded by StackError
        raise ProtocolError("frame body nested too deeply") from exc


class FrameDecoder:
    """Incremental decoder; call :meth:`feed` with whatever bytes arrived."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Return every complete message in the buffer so far.

        :raises FrameTooLarge: a header announced more than ``max_frame`` bytes.
        :raises ProtocolError: a bad magic byte or an undecodable body.
        """
        self._buf += data
        out: list[Any] = []
        while len(self._buf) >= HEADER.size:
            magic, length = HEADER.unpack_from(self._buf)
            if magic != MAGIC:
                raise ProtocolError(f"bad frame magic 0x{magic:02x}")
            if length > self.max_frame:
                raise FrameTooLarge(f"frame of {length} bytes exceeds limit {self.max_frame}")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            body = bytes(self._buf[HEADER.size : end])
            del self._buf[:end]
            out.append(unpack_body(body))
        return out
