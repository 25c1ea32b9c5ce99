"""Storage backends behind one small async interface (see :mod:`.base`)."""

from .base import ObjectInfo, Storage, load_backend, open_storage, parse_uri
from .options import StorageOptions

__all__ = ["ObjectInfo", "Storage", "StorageOptions", "load_backend", "open_storage", "parse_uri"]
