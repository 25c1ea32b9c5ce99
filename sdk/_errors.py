"""The SDK's own errors (the shared ones are in :mod:`artisync.protocol`)."""

from __future__ import annotations

from artisync.protocol import ArtisyncError


class UploadTimeout(ArtisyncError, TimeoutError):
    """Uploads were not committed in time (or no daemon is there to upload them)."""


class UploadFailed(ArtisyncError):
    """The daemon gave up on a record permanently; ``artisync status`` says why."""
