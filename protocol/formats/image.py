"""PIL Images: .png by default; .jpg/.jpeg, .webp, .bmp, .tif/.tiff, .gif on request.

The caller pays for the pixels only (``Image.tobytes``, about a copy): the raw
snapshot holds them, and the record's ``raw`` their mode, size, palette and
the ``info`` entries an encoder reads (transparency, ICC profile, dpi...). The
daemon's ``pixels`` codec rebuilds the image and encodes it (PNG's zlib is
where the time goes). PIL is imported only once an image is seen (its class
is from PIL) or read.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from artisync.protocol import Spool

from ._base import (
    Captured,
    Codec,
    Format,
    Request,
    SerializationError,
    StoredPayload,
    encode_to_blob,
    is_instance_from,
    pick,
    single_blob,
)

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def snapshot(img: Any, req: Request) -> Captured | None:
    if not is_instance_from(img, "PIL", "PIL.Image", "Image"):
        return None
    from PIL import Image

    ext = req.ext
    Image.preinit()  # PNG, JPEG, BMP, GIF; every plugin (WebP, TIFF) costs 20 ms more, once
    if ext is not None and ext not in Image.EXTENSION:
        Image.init()
    known = Image.EXTENSION
    table = {e: known[e] for e in _IMAGE_EXTS if known.get(e) in Image.SAVE}
    pil_format = pick(ext, table, "a PIL Image")
    try:
        img.load()  # a lazily opened image is decoded here
        pixels = img.tobytes()
    except Exception as exc:
        raise SerializationError(f"cannot read the image's pixels: {exc}") from exc
    try:  # encode one pixel now, so that a mode the format cannot hold fails here
        img.crop((0, 0, 1, 1)).save(io.BytesIO(), format=pil_format)
    except (OSError, ValueError, KeyError) as exc:
        raise SerializationError(
            f"{pil_format} cannot store this mode {img.mode} image ({exc}); convert it "
            "first, e.g. img.convert('RGB'), or use .png"
        ) from exc
    raw: dict[str, Any] = {
        **req.raw_bytes("pixels", pixels),
        "mode": img.mode,
        "width": img.width,
        "height": img.height,
        "info": _plain_info(img.info),
    }
    if img.palette is not None and img.mode in ("P", "PA"):
        raw["palette_mode"] = img.palette.mode
        raw["palette"] = bytes(img.getpalette(img.palette.mode) or b"")
    pv = req.preview or f"PIL Image mode={img.mode} size={img.width}x{img.height}"
    return Captured("image", pil_format.lower(), ext or ".png", raw, pv)


def _plain_info(info: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``Image.info`` a record can carry (numbers, text, bytes, and
    tuples of them: what encoders read); objects such as EXIF readers are left out."""

    def plain(value: Any) -> bool:
        if isinstance(value, tuple):
            return all(plain(v) for v in value)
        return isinstance(value, int | float | str | bytes)

    return {k: v for k, v in info.items() if isinstance(k, str) and plain(v)}


def _rebuild(rec: dict[str, Any], raw: Path) -> Any:
    from PIL import Image

    spec = rec["raw"]
    try:
        im = Image.frombytes(spec["mode"], (spec["width"], spec["height"]), raw.read_bytes())
        # (an inline snapshot is written to ``raw`` by the caller first)
        if "palette" in spec:
            im.putpalette(spec["palette"], spec.get("palette_mode", "RGB"))
    except (ValueError, TypeError, KeyError) as exc:
        raise SerializationError(
            f"raw snapshot {raw.name} is not the image it says: {exc}"
        ) from exc
    info = spec.get("info") or {}
    im.info = {k: tuple(v) if isinstance(v, list) else v for k, v in info.items()}
    return im


def _encode_pixels(
    spool: Spool, rec: dict[str, Any], raw: Path
) -> tuple[StoredPayload, str | None]:
    from PIL import Image

    im = _rebuild(rec, raw)
    pil_format = rec["format"].upper()
    Image.preinit()
    if pil_format not in Image.SAVE:
        Image.init()
    payload = single_blob(*encode_to_blob(spool, lambda f: im.save(f, format=pil_format)))
    return payload, None


CODEC = Codec("pixels", _encode_pixels, lambda rec, raw, allow_pickle: _rebuild(rec, raw))


def load(type_: str, format_: str, path: Path, allow_pickle: bool) -> Any:
    from PIL import Image

    im = Image.open(path)
    try:
        im.load()
    except BaseException:
        im.close()
        raise
    if getattr(im, "fp", None) is None:  # single frame: the file is closed already
        return im
    try:  # multi-frame formats keep the file open: keep the current frame, close it
        return im.copy()
    finally:
        im.close()


FORMAT = Format("image", snapshot, lambda type_, format_: type_ == "image", load)
