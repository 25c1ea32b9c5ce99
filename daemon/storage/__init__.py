"""Storage backends behind one small async interface (see :mod:`.base`)."""

from .base import ObjectInfo, Storage, open_storage, parse_uri

__all__ = ["ObjectInfo", "Storage", "open_storage", "parse_uri"]
