"""Artifact formats: snapshot (raw, the caller's part) -> encode (the daemon's part)
-> load, on real files in a real spool."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from artisync.protocol import RAW_CODECS, ArtisyncError, IntegrityError, Spool, hash_file, new_id
from artisync.protocol import formats as fmts
from artisync.protocol.formats import (
    INLINE_MAX,
    Captured,
    SerializationError,
    StoredPayload,
    UnpicklingRefused,
    dataframe,
    in_pack,
    load,
    load_raw,
    materialize_tree,
    read_listing,
    read_member,
)


@dataclass
class Point:  # module level, so it pickles
    x: int
    y: int


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    sp = Spool(tmp_path / "spool").ensure()
    yield sp
    assert list(sp.tmp.iterdir()) == [], "temp files left behind"
    assert list(sp.raw.iterdir()) == [], "raw snapshots left behind"


class Shot:
    """A capture and the record the SDK would send; ``write`` does the daemon's part."""

    def __init__(self, cap: Captured, record_id: str, spool: Spool) -> None:
        self.cap, self.spool = cap, spool
        self.type, self.format, self.extension = cap.type, cap.format, cap.extension
        self.filename = cap.filename
        self.record: dict[str, Any] = {
            "record_id": record_id,
            "type": cap.type,
            "format": cap.format,
            "raw": cap.raw,
            "preview": cap.preview,
        }
        self.made_preview: str | None = None

    @property
    def raw_path(self) -> Path:
        return self.spool.raw_path(self.record["record_id"])

    @property
    def preview(self) -> str:
        if self.cap.preview is not None:
            return self.cap.preview
        assert self.made_preview is not None, "the daemon makes this preview: write() first"
        return self.made_preview

    def write(self, spool: Spool) -> StoredPayload:
        payload, self.made_preview = fmts.encode(spool, self.record)
        self.discard()  # as the daemon does once the record is journaled
        return payload

    def discard(self) -> None:
        self.raw_path.unlink(missing_ok=True)


def snapshot(obj: Any, spool: Spool, **kw: Any) -> Shot:
    rid = new_id()
    return Shot(fmts.snapshot(obj, spool, rid, **kw), rid, spool)


def _kept_in_record(snap: Shot) -> bytes | None:
    """The payload a small stored record keeps inside itself (no blob is made for it)."""
    spec = snap.record["raw"]
    data = spec.get("data")
    keeps = spec["codec"] == "stored" and data is not None and len(data) <= fmts.SMALL_PAYLOAD
    return data if keeps else None


def write(snap: Shot, spool: Spool) -> StoredPayload:
    payload = snap.write(spool)
    kept = _kept_in_record(snap)
    for sha, size in payload.blobs:
        if kept is not None:
            # kept in its record only (journaled, and published inside it): no blob;
            # written here as a reader gets it, from the record
            assert hashlib.sha256(kept).hexdigest() == sha and len(kept) == size
            spool.write_blob_bytes(kept)
        # a blob file, or a folder's small member in its pack
        assert hash_file(fetcher(spool)(sha)) == (sha, size)
    return payload


def roundtrip(
    obj: Any, spool: Spool, *, allow_pickle: bool = False, **kw: Any
) -> tuple[Shot, StoredPayload, Any]:
    snap = snapshot(obj, spool, **kw)
    payload = write(snap, spool)
    assert payload.blobs == [(payload.sha256, payload.size)]
    return (
        snap,
        payload,
        load(snap.type, snap.format, spool.blob_path(payload.sha256), allow_pickle=allow_pickle),
    )


def fetcher(spool: Spool) -> Any:
    """A blob's spool path; a folder's small member, copied out of its pack (checked)."""

    def fetch(sha: str) -> Path:
        if spool.blob_path(sha).exists():
            return spool.blob_path(sha)
        for pack in spool.blobs.glob("*.pack"):
            members = in_pack(read_listing(pack.with_suffix("")))
            if sha in members:
                out = spool.root / f"fetched-{sha}"
                out.write_bytes(read_member(pack, *members[sha], sha))
                return out
        raise FileNotFoundError(sha)

    return fetch


def make_df() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "i": np.arange(6, dtype="int64"),
            "f": [0.1, 1.5, np.nan, 3.25, -1e300, 5.0],
            "s": ["a", "b", None, "d", "é", "f"],
            "b": [True, False, True, True, False, False],
        }
    )


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- pandas


def test_dataframe_default_is_parquet_and_round_trips_index_and_dtypes(spool: Spool) -> None:
    df = make_df()
    df["t"] = pd.date_range("2024-01-01", periods=6, freq="h", tz="UTC")
    df["c"] = pd.Categorical(list("xyxyxz"))
    df.index = pd.Index([f"r{i}" for i in range(6)], name="row")
    snap, _, back = roundtrip(df, spool)
    assert (snap.type, snap.format, snap.extension) == ("pandas", "parquet", ".parquet")
    pd.testing.assert_frame_equal(back, df)


def test_dataframe_multiindex_round_trips_through_parquet(spool: Spool) -> None:
    df = make_df().set_index(["i", "s"])
    _, _, back = roundtrip(df, spool)
    pd.testing.assert_frame_equal(back, df)


@pytest.mark.parametrize("ext", [".csv.gz", ".csv"])
def test_dataframe_csv_round_trips_range_index_with_dtypes(spool: Spool, ext: str) -> None:
    df = make_df()
    snap, _, back = roundtrip(df, spool, extension_name=ext)
    assert (snap.format, snap.extension) == (ext[1:], ext)
    pd.testing.assert_frame_equal(back, df)
    assert isinstance(back.index, pd.RangeIndex)


def test_dataframe_csv_gz_keeps_a_named_index(spool: Spool) -> None:
    df = make_df().set_index("s")
    _, _, back = roundtrip(df, spool, extension_name="csv.gz")  # dot optional
    pd.testing.assert_frame_equal(back, df)


def test_dataframe_feather_round_trips(spool: Spool) -> None:
    df = make_df().set_index("i")
    snap, _, back = roundtrip(df, spool, extension_name=".feather")
    assert snap.format == "feather"
    pd.testing.assert_frame_equal(back, df)


def test_dataframe_pickle_is_refused_unless_allowed(spool: Spool) -> None:
    df = make_df()
    snap = snapshot(df, spool, extension_name=".pickle")
    payload = write(snap, spool)
    path = spool.blob_path(payload.sha256)
    assert (snap.type, snap.format) == ("pandas", "pickle")
    with pytest.raises(UnpicklingRefused, match="allow_pickle=True"):
        load("pandas", "pickle", path)
    pd.testing.assert_frame_equal(load("pandas", "pickle", path, allow_pickle=True), df)


def test_dataframe_defaults_to_csv_gz_without_pyarrow(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataframe, "_have_pyarrow", lambda: False)
    snap, _, back = roundtrip(make_df(), spool)
    assert (snap.format, snap.extension) == ("csv.gz", ".csv.gz")
    pd.testing.assert_frame_equal(back, make_df())
    with pytest.raises(SerializationError, match="needs pyarrow"):
        snapshot(make_df(), spool, extension_name=".parquet")


def test_dataframe_multiindex_without_pyarrow_falls_back_to_pickle(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataframe, "_have_pyarrow", lambda: False)
    df = make_df().set_index(["i", "s"])
    snap, _, back = roundtrip(df, spool, allow_pickle=True)
    assert (snap.type, snap.format, snap.extension) == ("pandas", "pickle", ".pickle")
    pd.testing.assert_frame_equal(back, df)
    with pytest.raises(SerializationError, match="MultiIndex"):
        snapshot(df, spool, extension_name=".csv.gz")
    with pytest.raises(SerializationError, match="auto_pickle is off"):
        snapshot(df, spool, auto_pickle=False)


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([1, "a", 2.5], dtype=object),
        pd.Series([1j, 2]),
        pd.Series(pd.Categorical([1, "a", 1])),
        pd.Series(pd.arrays.SparseArray([0, 0, 1])),
        pd.Series([2**70, 1], dtype=object),
    ],
    ids=["mixed_object", "complex", "mixed_categorical", "sparse", "int_beyond_int64"],
)
def test_dataframe_column_arrow_cannot_hold(spool: Spool, column: pd.Series) -> None:
    df = pd.DataFrame({"mixed": column})
    with pytest.raises(SerializationError, match=r"cannot be stored as \.parquet.*'mixed'"):
        snapshot(df, spool, extension_name=".parquet")
    snap, _, back = roundtrip(df, spool, allow_pickle=True)  # default format: pickled
    assert snap.format == "pickle"
    pd.testing.assert_frame_equal(back, df)


def test_dataframe_duplicate_columns_are_refused_by_csv(spool: Spool) -> None:
    df = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(SerializationError, match="duplicate column names"):
        snapshot(df, spool, extension_name=".csv.gz")


def test_dataframe_mutated_after_snapshot_stores_the_snapshot(spool: Spool) -> None:
    df = make_df()
    expected = df.copy(deep=True)
    snap = snapshot(df, spool)
    df.loc[0, "i"] = 999
    df["f"] *= 2
    del df["s"]
    payload = write(snap, spool)
    pd.testing.assert_frame_equal(
        load("pandas", "parquet", spool.blob_path(payload.sha256)), expected
    )


@pytest.mark.parametrize("ext", [None, ".csv.gz", ".csv", ".feather"])
def test_same_dataframe_twice_dedups_to_one_sha(spool: Spool, ext: str | None) -> None:
    a = write(snapshot(make_df(), spool, extension_name=ext), spool)
    b = write(snapshot(make_df().copy(), spool, extension_name=ext), spool)
    assert a.sha256 == b.sha256


def test_dataframe_preview_has_shape_and_head(spool: Spool) -> None:
    df = pd.DataFrame({"alpha": range(1000), "beta": range(1000)})
    snap = snapshot(df, spool)
    write(snap, spool)
    assert snap.preview.startswith("DataFrame 1000 rows x 2 columns")
    assert "alpha" in snap.preview and "beta" in snap.preview
    assert len(snap.preview.splitlines()) == 7  # title, header, 5 rows


def test_dataframe_preview_made_after_write_shows_the_snapshot(spool: Spool) -> None:
    df = pd.DataFrame({"alpha": range(10)})
    snap = snapshot(df, spool)
    df["alpha"] = -1
    write(snap, spool)  # the preview is made by the daemon, from the raw snapshot
    assert snap.preview.splitlines()[2].split() == ["0", "0"]


def test_dataframe_unsupported_extension_lists_the_allowed(spool: Spool) -> None:
    with pytest.raises(SerializationError, match=r"\.xlsx.*allowed: \.parquet, \.csv\.gz"):
        snapshot(make_df(), spool, extension_name=".xlsx")


# ---------------------------------------------------------------------------- numpy


@pytest.mark.parametrize(
    "arr",
    [
        np.eye(100, 100),
        np.arange(24, dtype=np.int16).reshape(2, 3, 4),
        np.array([True, False]),
        np.array(3.5),
        np.array(["ab", "cde"]),
        np.zeros((0, 3), dtype=np.float32),
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        # over 1 MiB: each page is read before the write (see array._touch_pages)
        np.eye(1000),
        np.asfortranarray(np.arange(400_000, dtype=np.int32).reshape(500, 800)),
        np.zeros((700, 300)),  # never written: not mapped until read
        np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)[:, ::3],  # strided
        np.zeros(200_000, dtype=[("a", "i4"), ("b", "f8")]),
    ],
    ids=[
        "eye",
        "int3d",
        "bool",
        "0d",
        "str",
        "empty",
        "structured",
        "big_eye",
        "big_fortran",
        "big_zeros",
        "big_strided",
        "big_structured",
    ],
)
def test_numpy_npz_round_trips(spool: Spool, arr: np.ndarray) -> None:
    snap, _, back = roundtrip(arr, spool)
    assert (snap.type, snap.format, snap.extension) == ("numpy", "npz", ".npz")
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize(
    "arr",
    [
        np.array([1.0, np.nan, np.inf, -0.1, 1 / 3]),
        np.arange(12, dtype=np.int64).reshape(3, 4) - 5,
        np.arange(4, dtype=np.float32).reshape(1, 4) / 3,
        np.arange(4, dtype=np.uint64).reshape(4, 1) + 2**63,
        np.array([[True, False], [False, True]]),
        np.zeros((0, 3)),
    ],
    ids=["float1d", "int2d", "one_row", "one_col_uint64", "bool", "empty"],
)
def test_numpy_csv_gz_round_trips_shape_and_dtype(spool: Spool, arr: np.ndarray) -> None:
    snap, _, back = roundtrip(arr, spool, extension_name=".csv.gz")
    assert (snap.format, snap.extension) == ("csv.gz", ".csv.gz")
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("arr", [np.zeros((2, 2, 2)), np.array([1j])])
def test_numpy_csv_gz_refuses_what_it_cannot_hold(spool: Spool, arr: np.ndarray) -> None:
    with pytest.raises(SerializationError, match="use .npz"):
        snapshot(arr, spool, extension_name=".csv.gz")


def test_numpy_mutated_after_snapshot_stores_the_snapshot(spool: Spool) -> None:
    arr = np.zeros((50, 50))
    snap = snapshot(arr, spool)
    arr[:] = 7
    payload = write(snap, spool)
    np.testing.assert_array_equal(
        load("numpy", "npz", spool.blob_path(payload.sha256)), np.zeros((50, 50))
    )


def test_stored_npz_is_one_deflated_member_whose_crc_checks(spool: Spool) -> None:
    # random floats: the deflater's output differs from zlib's here, and its blocks
    # are stored ones; every reader checks the member's CRC against what it inflates
    arr = np.random.default_rng(0).standard_normal(300_000)
    _, payload, _ = roundtrip(arr, spool)
    with zipfile.ZipFile(spool.blob_path(payload.sha256)) as zf:
        (info,) = zf.infolist()
        assert (info.filename, info.compress_type) == ("array.npy", zipfile.ZIP_DEFLATED)
        assert zf.testzip() is None
        assert info.file_size > arr.nbytes and info.compress_size <= info.file_size + 1024


def test_same_array_twice_dedups_to_one_sha(spool: Spool) -> None:
    a = write(snapshot(np.eye(10), spool), spool)
    b = write(snapshot(np.eye(10), spool), spool)
    assert a.sha256 == b.sha256


def test_numpy_object_array_is_pickled(spool: Spool) -> None:
    arr = np.array([{"a": 1}, None], dtype=object)
    snap, _, back = roundtrip(arr, spool, allow_pickle=True)
    assert (snap.type, snap.format) == ("pickle", "pickle")
    assert list(back) == list(arr)
    with pytest.raises(SerializationError, match="auto_pickle is off"):
        snapshot(arr, spool, auto_pickle=False)


def test_numpy_preview_has_shape_and_dtype(spool: Spool) -> None:
    snap = snapshot(np.zeros((1000, 1000), dtype=np.float32), spool)
    write(snap, spool)
    assert "shape=(1000, 1000)" in snap.preview and "float32" in snap.preview
    assert len(snap.preview) < 2000


def test_numpy_bad_extension(spool: Spool) -> None:
    with pytest.raises(SerializationError, match=r"allowed: \.npz, \.csv\.gz"):
        snapshot(np.eye(2), spool, extension_name=".npy")


# ---------------------------------------------------------------------------- images


def make_image(mode: str = "RGB") -> Image.Image:
    img = Image.new(mode, (32, 24))
    for x in range(32):
        for y in range(24):
            img.putpixel((x, y), (x * 8, y * 10, 100, 255)[: len(mode)] if mode != "L" else x * 8)
    return img


def test_image_default_png_round_trips_pixels(spool: Spool) -> None:
    img = make_image("RGBA")
    snap, _, back = roundtrip(img, spool)
    assert (snap.type, snap.format, snap.extension) == ("image", "png", ".png")
    assert isinstance(back, Image.Image) and back.format == "PNG"
    assert (back.mode, back.size, back.tobytes()) == (img.mode, img.size, img.tobytes())


@pytest.mark.parametrize(
    "ext,fmt,lossless",
    [
        (".png", "png", True),
        (".jpg", "jpeg", False),
        (".jpeg", "jpeg", False),
        (".webp", "webp", False),
        (".bmp", "bmp", True),
        (".tif", "tiff", True),
        (".tiff", "tiff", True),
        (".gif", "gif", False),
    ],
)
def test_image_every_extension(spool: Spool, ext: str, fmt: str, lossless: bool) -> None:
    img = make_image("RGB")
    snap, _, back = roundtrip(img, spool, extension_name=ext)
    assert (snap.format, snap.extension) == (fmt, ext)
    assert back.size == img.size and back.format == fmt.upper()
    if lossless:
        assert back.tobytes() == img.tobytes()


@pytest.mark.parametrize("recycled", [False, True], ids=["new_file", "over_recycled"])
@pytest.mark.parametrize(
    ("mode", "ext"),
    [("RGB", None), ("RGBA", None), ("L", None), ("P", None), ("1", None), ("LA", None)]
    + [("I;16", None), ("I", ".tif"), ("F", ".tif"), ("CMYK", ".tif")],
)
def test_big_image_pixels_go_into_the_raw_file_exactly(
    spool: Spool, mode: str, ext: str | None, recycled: bool
) -> None:
    """Over 64 KiB, Pillow's raw encoder writes the pixels straight into the raw file
    (a new one, or a bigger recycled one full of other bytes, cut to size)."""
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (600, 900, 3), dtype=np.uint8)).convert(mode)
    if mode == "P":
        img.info["transparency"] = 7
    size = len(img.tobytes())
    assert size > 64 * 1024
    if recycled:
        spool.recycle = True
        old = spool.free / f"{size * 3 // 2:013d}.{new_id()}"
        old.write_bytes(b"\xff" * (size * 3 // 2))
        old.chmod(spool.file_mode)
    snap = snapshot(img, spool, extension_name=ext)
    raw = snap.record["raw"]
    assert ("reused" in raw) == recycled and raw["size"] == size
    assert snap.raw_path.stat().st_size == size
    assert snap.raw_path.read_bytes() == img.tobytes()
    payload = write(snap, spool)
    back = load("image", snap.format, spool.blob_path(payload.sha256))
    assert back.size == img.size
    np.testing.assert_array_equal(np.asarray(back), np.asarray(img))
    if mode == "P":
        assert back.getpalette() == img.getpalette() and back.info["transparency"] == 7


def test_image_lazily_opened_file_is_captured_at_snapshot(spool: Spool, tmp_path: Path) -> None:
    src = tmp_path / "pic.png"
    make_image().save(src)
    with Image.open(src) as lazy:
        snap = snapshot(lazy, spool)
    Image.new("RGB", (5, 5), "blue").save(src)  # file replaced after the snapshot
    payload = write(snap, spool)
    back = load("image", "png", spool.blob_path(payload.sha256))
    assert back.tobytes() == make_image().tobytes()


def test_image_mutated_after_snapshot_stores_the_snapshot(spool: Spool) -> None:
    img = make_image()
    expected = img.tobytes()
    snap = snapshot(img, spool)
    img.paste((0, 0, 0), (0, 0, 32, 24))
    payload = write(snap, spool)
    assert load("image", "png", spool.blob_path(payload.sha256)).tobytes() == expected


def test_image_errors_and_preview(spool: Spool) -> None:
    with pytest.raises(SerializationError, match=r"\.xyz.*allowed: \.png, \.jpg"):
        snapshot(make_image(), spool, extension_name=".xyz")
    with pytest.raises(SerializationError, match="JPEG cannot store this mode RGBA image"):
        snapshot(make_image("RGBA"), spool, extension_name=".jpg")
    with pytest.raises(SerializationError, match="PNG cannot store this mode F image"):
        snapshot(Image.new("F", (4, 4)), spool)
    snap = snapshot(make_image("L"), spool)
    snap.discard()
    assert snap.preview == "PIL Image mode=L size=32x24"


# ------------------------------------------------------------------------ dict / list


@pytest.mark.parametrize(
    "obj",
    [
        {"b": 1, "a": [1.5, None, True], "nested": {"é": "ü", "n": -3}},
        [1, "two", {"three": 3.0}],
        {},
    ],
)
@pytest.mark.parametrize(
    "ext,fmt", [(None, "json"), (".json", "json"), (".yaml", "yaml"), (".yml", "yaml")]
)
def test_dict_and_list_round_trip(spool: Spool, obj: Any, ext: str | None, fmt: str) -> None:
    snap, _, back = roundtrip(obj, spool, extension_name=ext)
    assert (snap.type, snap.format) == (type(obj).__name__, fmt)
    assert snap.extension == (ext or ".json")
    assert back == obj
    if isinstance(obj, dict):
        assert list(back) == list(obj)  # order kept


def test_dict_mutated_after_snapshot_stores_the_snapshot(spool: Spool) -> None:
    d: dict[str, Any] = {"lr": 0.1, "layers": [1, 2]}
    snap = snapshot(d, spool)
    d["lr"] = 5
    d["layers"].append(3)
    payload = write(snap, spool)
    assert load("dict", "json", spool.blob_path(payload.sha256)) == {"lr": 0.1, "layers": [1, 2]}


@pytest.mark.parametrize("ext", [None, ".yaml"])
def test_dict_that_is_not_json_is_pickled_when_auto_pickle(spool: Spool, ext: str | None) -> None:
    d = {"tags": {"a", "b"}, "p": Point(1, 2)}
    snap, _, back = roundtrip(d, spool, allow_pickle=True, extension_name=ext)
    assert (snap.type, snap.format, snap.extension) == ("pickle", "pickle", ".pkl")
    assert back == d
    with pytest.raises(SerializationError, match="not (JSON|YAML)-serializable.*auto_pickle"):
        snapshot(d, spool, auto_pickle=False, extension_name=ext)


def test_dict_preview_lists_keys(spool: Spool) -> None:
    snap = snapshot({f"k{i}": i for i in range(100)}, spool)
    snap.discard()
    assert snap.preview.startswith("dict, 100 keys: 'k0', 'k1'")
    assert "..." in snap.preview.splitlines()[0] and len(snap.preview) <= 2000


def test_dict_bad_extension_and_pkl(spool: Spool) -> None:
    with pytest.raises(SerializationError, match=r"allowed: \.json, \.yaml"):
        snapshot({"a": 1}, spool, extension_name=".csv")
    snap, _, back = roundtrip({"a": 1}, spool, allow_pickle=True, extension_name=".pkl")
    assert (snap.type, back) == ("pickle", {"a": 1})


# ------------------------------------------------------------- pickle, text, bytes, custom


def test_arbitrary_object_is_pickled_and_refused_by_default(spool: Spool) -> None:
    snap = snapshot(Point(3, 4), spool)
    payload = write(snap, spool)
    path = spool.blob_path(payload.sha256)
    assert (snap.type, snap.format, snap.extension) == ("pickle", "pickle", ".pkl")
    assert "Point" in snap.preview
    with pytest.raises(UnpicklingRefused) as info:
        load("pickle", "pickle", path)
    assert isinstance(info.value, ArtisyncError) and isinstance(info.value, PermissionError)
    assert "allow_pickle = true" in str(info.value)
    assert load("pickle", "pickle", path, allow_pickle=True) == Point(3, 4)


def test_arbitrary_object_without_auto_pickle_is_an_error(spool: Spool) -> None:
    with pytest.raises(SerializationError, match="Point objects .* auto_pickle is off"):
        snapshot(Point(1, 1), spool, auto_pickle=False)
    with pytest.raises(SerializationError, match="cannot pickle"):
        snapshot(lambda: 1, spool)


def test_text_round_trips_with_short_preview(spool: Spool) -> None:
    text = "training finished; " * 50 + "ünïcode"
    snap, _, back = roundtrip(text, spool)
    assert (snap.type, snap.format, snap.extension) == ("str", "text", ".txt")
    assert back == text and snap.preview == text[:200]


@pytest.mark.parametrize(
    "text",
    [
        "why?",
        "train/val loss: 0.3",
        "s3://bucket/key.csv",
        "e.g. this",
        "v1.0",
        "[1,2]",
        "",
        "line\nwith/slash.csv",
    ],
)
def test_strings_that_are_text(spool: Spool, text: str) -> None:
    snap, _, back = roundtrip(text, spool)
    assert snap.type == "str" and back == text


@pytest.mark.parametrize(
    "text",
    ["results.csv", "runs/a.csv", "/nonexistent/file", "./data", "~/surely-not-here-artisync"],
)
def test_strings_that_look_like_missing_paths_are_errors(
    spool: Spool, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SerializationError, match="does not exist"):
        snapshot(text, spool)
    with pytest.raises(SerializationError, match="does not exist"):
        snapshot(Path(text), spool)


@pytest.mark.parametrize("data", [b"\x00\x01raw", bytearray(b"abc"), memoryview(b"xyz")])
def test_bytes_round_trip(spool: Spool, data: Any) -> None:
    snap, _, back = roundtrip(data, spool)
    assert (snap.type, snap.format, snap.extension) == ("bytes", "bytes", ".bin")
    assert back == bytes(data) and "bytes" in snap.preview


def test_custom_serialization_function(spool: Spool) -> None:
    obj = Point(5, 6)
    snap = snapshot(
        obj, spool, serialization_function=lambda p: f"{p.x},{p.y}".encode(), extension_name=".txt"
    )
    payload = write(snap, spool)
    path = spool.blob_path(payload.sha256)
    assert (snap.type, snap.format, snap.extension) == ("custom", "bytes", ".txt")
    assert load("custom", "bytes", path) == b"5,6"
    assert (
        load(
            "custom",
            "bytes",
            path,
            deserialization_function=lambda b: Point(*map(int, b.split(b","))),
        )
        == obj
    )


def test_custom_serialization_function_errors(spool: Spool) -> None:
    with pytest.raises(SerializationError, match="must return bytes, not str"):
        snapshot(1, spool, serialization_function=str)  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="raised ZeroDivisionError"):
        snapshot(1, spool, serialization_function=lambda x: bytes(x // 0))


def test_user_preview_wins_and_is_bounded(spool: Spool) -> None:
    snap = snapshot({"a": 1}, spool, preview="x" * 5000)
    snap.discard()
    assert snap.preview == "x" * 2000


# ----------------------------------------------------------------------------- files


def test_file_round_trips_as_a_path_to_its_bytes(spool: Spool, tmp_path: Path) -> None:
    src = tmp_path / "data.csv"
    src.write_bytes(b"a,b\n1,2\n")
    for obj in (str(src), src):
        snap, payload, back = roundtrip(obj, spool)
        assert (snap.type, snap.format, snap.extension) == ("file", "file", ".csv")
        assert snap.filename == "data.csv" and snap.preview == "data.csv - 8 B"
        assert back == str(spool.blob_path(payload.sha256))
        assert Path(back).read_bytes() == b"a,b\n1,2\n"


def test_file_rewritten_after_snapshot_stores_the_snapshot(spool: Spool, tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(b"v1" * 1000)
    snap = snapshot(str(src), spool)
    src.write_bytes(b"v2")
    payload = write(snap, spool)
    assert spool.blob_path(payload.sha256).read_bytes() == b"v1" * 1000
    assert payload.size == 2000


def test_file_extension_rules(spool: Spool, tmp_path: Path) -> None:
    src = tmp_path / "archive.tar.gz"
    src.write_bytes(b"x")
    snap = snapshot(src, spool, extension_name=".tar.gz")
    snap.discard()
    assert snap.extension == ".tar.gz"
    with pytest.raises(SerializationError, match="does not match"):
        snapshot(src, spool, extension_name=".json")


def test_existing_file_wins_over_text(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("notes").write_text("hello")
    snap = snapshot("notes", spool)
    snap.discard()
    assert snap.type == "file"


# ----------------------------------------------------------------------------- trees


def make_folder(root: Path) -> Path:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_text("alpha")
    (root / "b.jpg").write_bytes(b"\xff\xd8jpeg")
    (root / ".hidden").write_text("h")
    (root / "sub" / "c.jpg").write_bytes(b"\xff\xd8other")
    (root / "sub" / "deep" / "d.txt").write_text("alpha")  # same content as a.txt
    return root


def test_folder_round_trips_through_materialize_tree(spool: Spool, tmp_path: Path) -> None:
    src = make_folder(tmp_path / "data_samples")
    snap = snapshot(str(src), spool)
    assert (snap.type, snap.format, snap.extension, snap.filename) == (
        "folder",
        "tree",
        "",
        "data_samples",
    )
    payload = write(snap, spool)
    listing = json.loads(spool.blob_path(payload.sha256).read_bytes())
    assert listing["version"] == 1
    paths = [f["path"] for f in listing["files"]]
    assert paths == sorted(paths) == [".hidden", "a.txt", "b.jpg", "sub/c.jpg", "sub/deep/d.txt"]
    assert payload.size == sum(len(b) for b in tree(src).values())
    assert payload.blobs[0][0] == payload.sha256
    assert len(payload.blobs) == 1 + 4  # listing + unique file contents
    out = materialize_tree(spool.blob_path(payload.sha256), fetcher(spool), tmp_path / "out")
    assert out == tmp_path / "out"
    assert tree(out) == tree(src)


def test_folder_changed_after_snapshot_stores_the_snapshot(spool: Spool, tmp_path: Path) -> None:
    src = make_folder(tmp_path / "d")
    before = tree(src)
    snap = snapshot(src, spool)
    (src / "a.txt").write_text("CHANGED")
    (src / "sub" / "c.jpg").unlink()
    (src / "new.txt").write_text("new")
    payload = write(snap, spool)
    out = materialize_tree(spool.blob_path(payload.sha256), fetcher(spool), tmp_path / "out")
    assert tree(out) == before


def test_folder_preview_counts_files_and_bytes(spool: Spool, tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02}.bin").write_bytes(b"x" * 100)
    os.symlink(src / "missing", src / "dangling")
    snap = snapshot(src, spool)
    snap.discard()
    first = snap.preview.splitlines()[0]
    assert first == "folder many: 30 files, 2.9 KiB (1 non-regular entries skipped)"
    assert "f00.bin - 100 B" in snap.preview and "... and 10 more" in snap.preview


def test_folder_of_small_and_large_files_stores_the_snapshot(spool: Spool, tmp_path: Path) -> None:
    """Every file travels through the one raw pack, whatever its size."""
    src = tmp_path / "mixed"
    (src / "sub").mkdir(parents=True)
    big = os.urandom(3 * 1024 * 1024 + 123)  # more than a copy chunk
    (src / "big.bin").write_bytes(big)
    (src / "sub" / "big-again.bin").write_bytes(big)  # same content: one blob
    (src / "empty").write_bytes(b"")
    (src / "small.txt").write_bytes(b"small")
    snap = snapshot(src, spool)
    (src / "big.bin").write_bytes(b"changed")
    (src / "small.txt").write_bytes(b"changed too")
    payload = write(snap, spool)
    assert len(payload.blobs) == 1 + 3 and payload.size == 2 * len(big) + 5
    out = materialize_tree(spool.blob_path(payload.sha256), fetcher(spool), tmp_path / "out")
    assert tree(out) == {
        "big.bin": big,
        "sub/big-again.bin": big,
        "empty": b"",
        "small.txt": b"small",
    }


def test_folder_of_many_files_is_stored_whole(spool: Spool, tmp_path: Path) -> None:
    """Past a few files a pack's files are made durable all at once, not one by one:
    every file still arrives, and no temp file is left behind."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(200):
        (src / f"f{i:03}.bin").write_bytes(os.urandom(1000) if i % 2 else b"same")
    payload = write(snapshot(src, spool), spool)
    assert len(payload.blobs) == 1 + 100 + 1
    assert not list(spool.tmp.iterdir())
    out = materialize_tree(spool.blob_path(payload.sha256), fetcher(spool), tmp_path / "out")
    assert tree(out) == tree(src)


def test_empty_folder_is_an_empty_tree(spool: Spool, tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    payload = write(snapshot(tmp_path / "e", spool), spool)
    assert payload.size == 0 and len(payload.blobs) == 1
    out = materialize_tree(spool.blob_path(payload.sha256), fetcher(spool), tmp_path / "out")
    assert list(out.iterdir()) == []


def test_wildcard_stores_matches_relative_to_the_base(spool: Spool, tmp_path: Path) -> None:
    src = make_folder(tmp_path / "data")
    snap = snapshot(f"{src}/*.jpg", spool)
    assert (snap.type, snap.format, snap.filename) == ("wildcard", "tree", None)
    assert "1 files" in snap.preview and "b.jpg" in snap.preview
    payload = write(snap, spool)
    out = materialize_tree(spool.blob_path(payload.sha256), fetcher(spool), tmp_path / "o1")
    assert tree(out) == {"b.jpg": b"\xff\xd8jpeg"}


def test_wildcard_recursive_and_relative_to_cwd(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    payload = write(snapshot("data/**/*.jpg", spool), spool)
    out = materialize_tree(spool.blob_path(payload.sha256), fetcher(spool), tmp_path / "o2")
    assert tree(out) == {"b.jpg": b"\xff\xd8jpeg", "sub/c.jpg": b"\xff\xd8other"}
    payload = write(snapshot("data/s*", spool), spool)  # a matched folder brings its files
    out = materialize_tree(spool.blob_path(payload.sha256), fetcher(spool), tmp_path / "o3")
    assert sorted(tree(out)) == ["sub/c.jpg", "sub/deep/d.txt"]
    payload = write(snapshot(Path("data/?.txt"), spool), spool)  # a Path pattern too
    out = materialize_tree(spool.blob_path(payload.sha256), fetcher(spool), tmp_path / "o4")
    assert tree(out) == {"a.txt": b"alpha"}


def test_wildcard_matching_nothing_is_an_error(spool: Spool, tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    with pytest.raises(SerializationError, match="matches no files"):
        snapshot(f"{tmp_path}/data/*.png", spool)
    with pytest.raises(SerializationError, match="matches no files"):
        snapshot(f"{tmp_path}/data/empty/*", spool)


def test_folder_refuses_extension_name(spool: Spool, tmp_path: Path) -> None:
    with pytest.raises(SerializationError, match="extension_name does not apply"):
        snapshot(make_folder(tmp_path / "d"), spool, extension_name=".zip")


def test_materialize_tree_can_hard_link(spool: Spool, tmp_path: Path) -> None:
    payload = write(snapshot(make_folder(tmp_path / "d"), spool), spool)
    listing = spool.blob_path(payload.sha256)
    out = materialize_tree(listing, fetcher(spool), tmp_path / "linked", link=True)
    sha = json.loads(listing.read_bytes())["files"][0]["sha256"]
    fetched = fetcher(spool)(sha)  # (a small member: copied out of the folder's pack)
    assert (out / ".hidden").stat().st_ino == fetched.stat().st_ino
    copied = materialize_tree(listing, fetcher(spool), tmp_path / "copied")
    assert (copied / ".hidden").stat().st_ino != fetched.stat().st_ino


def write_listing(path: Path, files: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"version": 1, "files": files}))
    return path


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a/../../b", "a//b", "./a", ""])
def test_materialize_tree_refuses_unsafe_paths(spool: Spool, tmp_path: Path, bad: str) -> None:
    sha, size = spool.write_blob_bytes(b"evil")
    listing = write_listing(tmp_path / "l.json", [{"path": bad, "sha256": sha, "size": size}])
    with pytest.raises(IntegrityError, match="unsafe path"):
        materialize_tree(listing, fetcher(spool), tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def test_materialize_tree_refuses_symlink_escape(spool: Spool, tmp_path: Path) -> None:
    sha, size = spool.write_blob_bytes(b"evil")
    dest = tmp_path / "out"
    dest.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", dest / "link")
    listing = write_listing(tmp_path / "l.json", [{"path": "link/x", "sha256": sha, "size": size}])
    with pytest.raises(IntegrityError, match="leaves the destination"):
        materialize_tree(listing, fetcher(spool), dest)
    assert list((tmp_path / "outside").iterdir()) == []


def test_materialize_tree_checks_listing_and_sizes(spool: Spool, tmp_path: Path) -> None:
    sha, size = spool.write_blob_bytes(b"four")
    bad_sha = write_listing(tmp_path / "a.json", [{"path": "x", "sha256": "zz", "size": 1}])
    with pytest.raises(IntegrityError, match="bad sha256"):
        materialize_tree(bad_sha, fetcher(spool), tmp_path / "o")
    dup = write_listing(tmp_path / "b.json", [{"path": "x", "sha256": sha, "size": size}] * 2)
    with pytest.raises(IntegrityError, match="duplicate"):
        materialize_tree(dup, fetcher(spool), tmp_path / "o")
    wrong = write_listing(tmp_path / "c.json", [{"path": "x", "sha256": sha, "size": 99}])
    with pytest.raises(IntegrityError, match="listing says 99"):
        materialize_tree(wrong, fetcher(spool), tmp_path / "o")
    assert list((tmp_path / "o").iterdir()) == []  # no half-placed file
    (tmp_path / "v.json").write_text(json.dumps({"version": 2, "files": []}))
    with pytest.raises(IntegrityError, match="version 1"):
        materialize_tree(tmp_path / "v.json", fetcher(spool), tmp_path / "o")


def test_load_refuses_trees_and_unknown_formats(tmp_path: Path) -> None:
    with pytest.raises(SerializationError, match="materialize_tree"):
        load("folder", "tree", tmp_path / "x")
    with pytest.raises(SerializationError, match="unknown"):
        load("pandas", "xlsx", tmp_path / "x")


# ---------------------------------------------------------------- lifecycle and temps


OBJECT_KINDS = ["file", "folder", "dataframe", "array", "image", "dict", "bytes"]


def sample(kind: str, src: Path) -> Any:
    return {
        "file": src / "a.txt",
        "folder": src,
        "dataframe": make_df(),
        "array": np.arange(12.0).reshape(3, 4),
        "image": make_image(),
        "dict": {"a": 1},
        "bytes": b"\x00\x01",
    }[kind]


@pytest.mark.parametrize("kind", OBJECT_KINDS)
def test_snapshot_writes_one_raw_file_and_nothing_else(
    spool: Spool, tmp_path: Path, kind: str
) -> None:
    snap = snapshot(sample(kind, make_folder(tmp_path / "d")), spool)
    spec = snap.record["raw"]
    files = [p.name for p in spool.raw.iterdir()]
    if "data" in spec:  # small: inside the record
        assert files == [] and len(spec["data"]) == spec["size"] <= INLINE_MAX
    else:
        assert files == [snap.record["record_id"]]
        assert snap.raw_path.stat().st_size == spec["size"]
    assert spec["codec"] in RAW_CODECS
    assert list(spool.blobs.iterdir()) == [] and list(spool.tmp.iterdir()) == []
    snap.discard()


@pytest.mark.parametrize("kind", ["file", "dataframe", "array", "image", "bytes"])
def test_small_snapshots_travel_in_the_record_big_ones_in_a_raw_file(
    spool: Spool, tmp_path: Path, kind: str
) -> None:
    def make(n: int) -> Any:
        if kind == "file":
            (tmp_path / f"f{n}").write_bytes(b"x" * n)
            return tmp_path / f"f{n}"
        if kind == "dataframe":
            return pd.DataFrame({"a": np.zeros(n // 8)})
        if kind == "array":
            return np.zeros(n // 8)
        if kind == "image":
            return Image.new("L", (n // 100, 100))
        return b"x" * n

    small, big = snapshot(make(1000), spool), snapshot(make(4 * INLINE_MAX), spool)
    assert "data" in small.record["raw"] and not small.raw_path.exists()
    assert "data" not in big.record["raw"] and big.raw_path.exists()
    for snap in (small, big):
        payload = write(snap, spool)
        assert spool.blob_path(payload.sha256).exists()


@pytest.mark.parametrize("kind", OBJECT_KINDS)
def test_raw_snapshot_reads_back_as_the_stored_form_does(
    spool: Spool, tmp_path: Path, kind: str
) -> None:
    obj = sample(kind, make_folder(tmp_path / "d"))
    snap = snapshot(obj, spool)
    if kind in ("file", "folder"):
        snap.discard()
        return  # read back as paths: see test_sdk (get() before the daemon encoded it)
    before = load_raw(snap.record, snap.raw_path)
    payload = write(snap, spool)
    after = load(snap.type, snap.format, spool.blob_path(payload.sha256))
    if kind == "dataframe":
        pd.testing.assert_frame_equal(before, after)
    elif kind == "array":
        np.testing.assert_array_equal(before, after)
    elif kind == "image":
        assert before.tobytes() == after.tobytes() and before.mode == after.mode
    else:
        assert before == after


@pytest.mark.parametrize("kind", ["file", "dict", "bytes"])
def test_a_small_payload_kept_in_its_record_makes_no_blob(
    spool: Spool, tmp_path: Path, kind: str
) -> None:
    """Its record carries it (journal, published record): a blob would be a file made
    and removed for nothing, per small artifact."""
    snap = snapshot(sample(kind, make_folder(tmp_path / "d")), spool)
    kept = _kept_in_record(snap)
    assert kept is not None
    payload = snap.write(spool)
    assert payload.blobs == [(hashlib.sha256(kept).hexdigest(), len(kept))]
    assert list(spool.blobs.iterdir()) == []


def test_codecs_are_the_protocols() -> None:
    assert set(RAW_CODECS) == {"stored", *fmts.CODECS}


def test_a_raw_snapshot_that_is_not_what_its_record_says_is_refused(spool: Spool) -> None:
    snap = snapshot(make_df(), spool)
    snap.raw_path.write_bytes(b"not arrow at all")
    with pytest.raises(SerializationError, match="not an Arrow IPC file"):
        fmts.encode(spool, snap.record)
    snap.discard()
    assert list(spool.blobs.iterdir()) == []


@pytest.mark.parametrize("kind", OBJECT_KINDS)
def test_failed_encode_leaves_no_temp_files_and_keeps_the_raw(
    spool: Spool, tmp_path: Path, kind: str
) -> None:
    snap = snapshot(sample(kind, make_folder(tmp_path / "d")), spool)
    spool.blobs.rename(tmp_path / "blobs-away")  # commit cannot rename into blobs/
    kept = _kept_in_record(snap)
    if kept is not None:  # kept in its record: nothing to write, so nothing fails
        payload, _ = fmts.encode(spool, snap.record)
        assert payload.blobs == [(hashlib.sha256(kept).hexdigest(), len(kept))]
    else:
        with pytest.raises(OSError):
            fmts.encode(spool, snap.record)
    assert list(spool.tmp.iterdir()) == []
    assert snap.raw_path.exists() or "data" in snap.record["raw"]  # encoded again later
    snap.discard()


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux procfs")
def test_snapshot_of_folder_with_unreadable_file_leaves_no_temps(
    spool: Spool, tmp_path: Path
) -> None:
    """/proc/self/mem is a regular file whose first page fails to read (EIO), for root too."""
    src = make_folder(tmp_path / "d")
    os.symlink("/proc/self/mem", src / "zz-unreadable")  # sorted last: copied after the rest
    with pytest.raises(SerializationError, match="cannot copy .*zz-unreadable"):
        snapshot(src, spool)
    with pytest.raises(SerializationError, match="cannot copy"):
        snapshot(src / "zz-unreadable", spool)


def test_importing_formats_loads_no_heavy_module() -> None:
    code = (
        "import sys, artisync.protocol.formats; "
        "print(sorted(m for m in ('pandas', 'numpy', 'PIL', 'pyarrow', 'yaml') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _frames_for_the_fast_path() -> dict[str, tuple[pd.DataFrame, bool]]:
    """name -> (frame, whether the numeric fast path takes it)."""
    rng = np.random.default_rng(5)
    with_nan = pd.DataFrame(rng.standard_normal((1000, 4)), columns=list("abcd"))
    with_nan.iloc[::7, 1] = np.nan
    two_blocks = pd.DataFrame(rng.standard_normal((50, 3)), columns=["x", "y", "z"])
    two_blocks["w"] = rng.standard_normal(50)  # a second float64 block
    return {
        "float64 with NaN": (with_nan, True),
        "int64": (pd.DataFrame(rng.integers(-9, 9, (100, 3)), columns=["i", "j", "k"]), True),
        "bool": (pd.DataFrame(rng.random((30, 2)) > 0.5, columns=["p", "q"]), True),
        "float32": (pd.DataFrame(rng.random((20, 2), dtype=np.float32), columns=["u", "v"]), True),
        "uint8": (
            pd.DataFrame(rng.integers(0, 255, (20, 2), dtype=np.uint8), columns=["r", "s"]),
            True,
        ),
        "two blocks": (two_blocks, True),
        "no rows": (pd.DataFrame(np.zeros((0, 2)), columns=["a", "b"]), True),
        "stepped range index": (
            pd.DataFrame({"a": [1.0, 2.0]}, index=pd.RangeIndex(10, 14, 2)),
            True,
        ),
        "named columns axis": (pd.DataFrame([[1.0]], columns=pd.Index(["a"], name="cols")), True),
        "mixed dtypes": (pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]}), False),
        "labelled index": (pd.DataFrame({"a": [1.0, 2.0]}, index=["x", "y"]), False),
        "named index": (pd.DataFrame({"a": [1.0]}, index=pd.RangeIndex(1, name="n")), False),
        "nullable ints": (pd.DataFrame({"a": pd.array([1, None], dtype="Int64")}), False),
        "int column names": (pd.DataFrame(np.ones((2, 2))), False),
        "repeated names": (pd.DataFrame(np.ones((2, 2)), columns=["a", "a"]), False),
        "text": (pd.DataFrame({"a": ["x", "y"]}), False),
    }


@pytest.mark.parametrize("name", list(_frames_for_the_fast_path()))
def test_the_numeric_fast_path_makes_exactly_the_table_from_pandas_makes(name: str) -> None:
    """The trainer skips pyarrow's per-column work for plain numeric frames; what it
    writes must be the table ``from_pandas`` makes (columns, types, nulls for NaN, the
    pandas metadata), so that the stored parquet is the same bytes as before."""
    import pyarrow as pa

    from artisync.protocol.formats._numeric_frames import numeric_table

    df, taken = _frames_for_the_fast_path()[name]
    fast = numeric_table(df)
    assert (fast is not None) is taken
    if fast is None:
        return
    slow = pa.Table.from_pandas(df, preserve_index=None)
    assert fast.equals(slow, check_metadata=True)
    assert fast.schema.metadata == slow.schema.metadata
    nulls = [c.null_count for c in fast.columns]
    assert nulls == [c.null_count for c in slow.columns]
    assert (sum(nulls) > 0) is (name == "float64 with NaN")  # NaN is null, as from_pandas has it
    pd.testing.assert_frame_equal(fast.to_pandas(), df)
    again = numeric_table(df)  # the remembered schema
    assert again is not None and again.equals(slow, check_metadata=True)
