"""artisync: report artifacts from training code without waiting on the network.

``from artisync import Task`` is a drop-in for ClearML's artifact API.
Importing this package loads no cloud client, pandas, numpy or PIL.
"""

from artisync.protocol import ArtisyncError, InvalidName

from ._artifact import Artifact
from ._client import DaemonError, DaemonUnavailable
from ._errors import UploadFailed, UploadTimeout
from ._logger import Logger
from ._quota import SpoolFull
from ._storage_manager import StorageManager
from ._task import Task

__all__ = [
    "Artifact",
    "ArtisyncError",
    "DaemonError",
    "DaemonUnavailable",
    "InvalidName",
    "Logger",
    "SpoolFull",
    "StorageManager",
    "Task",
    "UploadFailed",
    "UploadTimeout",
]
__version__ = "0.1.0"
