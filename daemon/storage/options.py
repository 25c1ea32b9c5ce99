"""Which options a destination gets: ``[storage.<scheme>]`` plus ``[[storage.override]]``.

Resolved the same way by the daemon, ``artisync doctor`` and every process that
reads back, so a reader on another machine uses exactly the daemon's options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import parse_uri


@dataclass(frozen=True)
class StorageOptions:
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per scheme
    overrides: tuple[tuple[str, Mapping[str, Any]], ...] = ()  # (match URI, options)

    @classmethod
    def from_table(cls, table: Any) -> StorageOptions:
        """Parse the ``[storage]`` table of the config file; raise ValueError if malformed."""
        if not isinstance(table, Mapping):
            raise ValueError("[storage] must be a table")
        defaults = {k: v for k, v in table.items() if isinstance(v, dict)}
        overrides = []
        for entry in table.get("override", []):
            if not isinstance(entry, dict) or not isinstance(entry.get("match"), str):
                raise ValueError("each [[storage.override]] needs a string 'match' URI prefix")
            parse_uri(entry["match"])
            overrides.append((entry["match"], {k: v for k, v in entry.items() if k != "match"}))
        return cls(defaults, tuple(overrides))

    def options_for(self, uri: str) -> dict[str, Any]:
        """``[storage.<scheme>]``, then every matching override, the longest match last."""
        scheme, _, _ = parse_uri(uri)
        opts = dict(self.defaults.get(scheme, {}))
        matching = [(m, extra) for m, extra in self.overrides if _covers(m, uri)]
        for _, extra in sorted(matching, key=lambda o: len(o[0].rstrip("/"))):
            opts.update(extra)
        return opts


def _covers(match: str, uri: str) -> bool:
    """Whole segments only: ``s3://data`` covers ``s3://data`` and ``s3://data/runs``,
    not ``s3://data-old``; a trailing slash on either side makes no difference."""
    match, uri = match.rstrip("/"), uri.rstrip("/")
    return uri == match or uri.startswith(match + "/")
