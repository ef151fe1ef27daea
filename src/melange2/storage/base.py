"""What the storage layer speaks: its errors, the objects it lists and how to open one.

::

    FarmError
    └── StorageError                a storage operation failed (after retries)
        ├── StorageNotFound         no object at that key (also a FileNotFoundError)
        └── StorageConfigError      refused at start: missing bucket, bad credentials,
                                    unreachable endpoint, unusable directory

The message names the backend (path, bucket or endpoint) and the key; the foreign
exception stays the ``__cause__``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from melange2.errors import FarmError

__all__ = [
    "ObjectInfo",
    "StorageConfigError",
    "StorageError",
    "StorageKind",
    "StorageNotFound",
    "StorageSpec",
]

#: the backends :func:`~melange2.storage.open_storage` knows
StorageKind = Literal["local", "memory", "gcs", "s3"]


class StorageError(FarmError):
    """The storage operation failed."""

    code = "storage_error"


class StorageNotFound(StorageError, FileNotFoundError):
    """No such object in storage."""

    code = "storage_not_found"


class StorageConfigError(StorageError):
    """The storage is not usable as configured."""

    code = "storage_config_error"


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object, as :meth:`Storage.list` returns it."""

    #: relative to the storage root, posix (``repo/x86_64/APKINDEX.tar.gz``)
    key: str
    #: in bytes
    size: int


@dataclass(frozen=True, kw_only=True)
class StorageSpec:
    """Where the farm keeps packages, logs and repositories; see ``open_storage``.

    ``StorageSpec(kind="local", path=Path("/srv/out"))`` keeps them under a directory;
    ``StorageSpec(kind="s3", bucket="pkgs", prefix="farm")`` under ``s3://pkgs/farm/``.
    """

    kind: StorageKind = "local"
    #: local: the root directory (the server's ``--output-dir``)
    path: Path | None = None
    #: gcs/s3: the bucket (it must exist)
    bucket: str = ""
    #: gcs/s3: an optional key prefix inside the bucket (``a/b``, no leading slash)
    prefix: str = ""
    #: gcs: e.g. fake-gcs-server's ``http://127.0.0.1:PORT`` (default: env
    #: ``STORAGE_EMULATOR_HOST`` if set, else Google); s3: an S3-compatible endpoint
    #: (default: AWS)
    endpoint_url: str = ""
    #: s3: path-style addressing (``http://host/bucket/key``), as most emulators need
    path_style: bool = False
    #: s3: the region (default: botocore's configuration)
    region: str = ""
    #: s3: explicit credentials; empty means botocore's chain (env, config files, role)
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    #: gcs: the project
    project: str = ""
    #: gcs: ``anon``, ``google_default``, a service account JSON file...; default:
    #: Google default credentials, or ``anon`` with an endpoint/emulator
    token: str = field(default="", repr=False)
    #: tries per operation on transient errors (connection, timeout, HTTP 429/5xx)
    retry_attempts: int = 4
    #: the first wait between tries in seconds; it doubles each time (capped at 5 s)
    retry_wait: float = 0.2
    #: gcs/s3: seconds to connect, and to wait for each read of a response
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
