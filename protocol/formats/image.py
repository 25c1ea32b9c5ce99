"""PIL Images: .png by default; .jpg/.jpeg, .webp, .bmp, .tif/.tiff, .gif on request.

PIL is imported only once an image is seen (its class is from PIL) or read.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ._base import (
    Format,
    Request,
    SerializationError,
    Snapshot,
    file_writer,
    is_instance_from,
    make_snapshot,
    pick,
)

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def snapshot(img: Any, req: Request) -> Snapshot | None:
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
        copy = img.copy()  # loads a lazily opened image, then copies its pixels
    except Exception as exc:
        raise SerializationError(f"cannot read the image's pixels: {exc}") from exc
    try:  # encode one pixel now, so that a mode the format cannot hold fails here
        copy.crop((0, 0, 1, 1)).save(io.BytesIO(), format=pil_format)
    except (OSError, ValueError, KeyError) as exc:
        raise SerializationError(
            f"{pil_format} cannot store this mode {copy.mode} image ({exc}); convert it "
            "first, e.g. img.convert('RGB'), or use .png"
        ) from exc
    pv = req.preview or f"PIL Image mode={copy.mode} size={copy.width}x{copy.height}"

    def save(im: Any, path: Path) -> None:
        im.save(path, format=pil_format)

    return make_snapshot("image", pil_format.lower(), ext or ".png", pv, file_writer(copy, save))


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
