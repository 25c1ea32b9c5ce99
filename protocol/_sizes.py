"""Sizes in bytes, read from and written for people, one way everywhere."""

from __future__ import annotations

from typing import Any

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(value: Any) -> int:
    """``1073741824``, ``"500M"``, ``"20GiB"``, ``"1.5G"`` -> bytes (``"k"`` is 1000,
    ``"Ki"`` 1024)."""
    binary = False
    if isinstance(value, int | float) and not isinstance(value, bool):
        number, unit = float(value), ""
    elif isinstance(value, str):
        text = value.strip().lower().removesuffix("b")
        binary = text.endswith("i")
        text = text.removesuffix("i")
        unit = text[-1:] if text[-1:] in _UNITS else ""
        number = float(text[: len(text) - len(unit)] if unit else text)
    else:
        raise ValueError(f"not a size: {value!r}")
    if number < 0 or number != number:
        raise ValueError(f"not a size: {value!r}")
    scale = 1024 ** list(_UNITS).index(unit) if binary else _UNITS[unit]
    return int(number * scale)


def format_size(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: binary units, labelled as such."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(value: Any) -> float:
    """``3600``, ``"90d"``, ``"12h"``, ``"30m"``, ``"2w"``, ``"1.5d"`` -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        unit = _DURATION_UNITS.get(text[-1])
        try:
            seconds = float(text[:-1]) * unit if unit else float(text)
        except ValueError:
            raise ValueError(f"not a duration: {value!r} (e.g. 3600, '90d', '12h')") from None
    else:
        raise ValueError(f"not a duration: {value!r} (e.g. 3600, '90d', '12h')")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds
