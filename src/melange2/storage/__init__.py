"""Storage for packages, logs and repositories: a local directory, memory, GCS or S3.

Open one from a spec, check it at start, close it at the end::

    storage = open_storage(StorageSpec(kind="s3", bucket="pkgs", prefix="farm"))
    await storage.check()          # StorageConfigError: missing bucket, bad credentials...
    try:
        await storage.put_file(apk, "repo/x86_64/foo-1.0-r0.apk")
        async for chunk in storage.iter_chunks("repo/x86_64/APKINDEX.tar.gz"):
            ...
    finally:
        await storage.aclose()

Keys are relative posix paths (:func:`validate_key`). One class, :class:`Storage`, works
over an fsspec filesystem and a root; :func:`open_storage` builds the filesystem per
kind. One contract suite (``tests/contract/test_storage.py``) runs against all four
kinds, GCS on fake-gcs-server and S3 on moto (:mod:`melange2.testenv.emulators`).
"""

from __future__ import annotations

from melange2.storage.backends import open_storage
from melange2.storage.base import (
    ObjectInfo,
    StorageConfigError,
    StorageError,
    StorageKind,
    StorageNotFound,
    StorageSpec,
)
from melange2.storage.fsspec_store import OnDisk, Storage
from melange2.storage.keys import validate_key

__all__ = [
    "ObjectInfo",
    "OnDisk",
    "Storage",
    "StorageConfigError",
    "StorageError",
    "StorageKind",
    "StorageNotFound",
    "StorageSpec",
    "open_storage",
    "validate_key",
]
