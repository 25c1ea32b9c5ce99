"""S3 requests whose replies need reading: DeleteObjects (up to 1,000 keys a
request, for ``S3Storage.delete_many``), an object's recorded SHA-256, and the
unfinished multipart uploads of a key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._common import b64_to_hex

BATCH = 1000  # the service's limit per request
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


async def delete_objects(s3: Any, bucket: str, names: Sequence[str]) -> list[dict[str, Any]]:
    """Delete ``names`` a batch at a time (quietly: only failures come back); returns
    the failures other than a missing key, as the service reports them."""
    failed: list[dict[str, Any]] = []
    for i in range(0, len(names), BATCH):
        objects = [{"Key": n} for n in names[i : i + BATCH]]
        resp = await s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        failed.extend(e for e in resp.get("Errors", []) if e.get("Code") not in _MISSING)
    return failed


async def abort_unfinished(s3: Any, bucket: str, name: str, before: float) -> int:
    """Abort the unfinished multipart uploads of ``name`` started before ``before``."""
    aborted = 0
    page = await s3.list_multipart_uploads(Bucket=bucket, Prefix=name)
    for upload in page.get("Uploads", []):
        if upload.get("Key") != name or upload["Initiated"].timestamp() >= before:
            continue
        await s3.abort_multipart_upload(Bucket=bucket, Key=name, UploadId=upload["UploadId"])
        aborted += 1
    return aborted


def sha256_of(resp: Mapping[str, Any]) -> str | None:
    recorded = (resp.get("Metadata") or {}).get("sha256")
    if recorded:
        return str(recorded).lower()
    checksum = resp.get("ChecksumSHA256")
    if checksum and "-" not in checksum:  # "<b64>-N" is a multipart composite, not the file's
        return b64_to_hex(checksum)
    return None
