"""Opening a :class:`Storage` from a :class:`StorageSpec`: one fsspec filesystem per kind.

* ``local``: ``LocalFileSystem`` under ``spec.path`` (made absolute).
* ``memory``: a ``MemoryFileSystem`` under a fresh root ``/melange2-<hex>``; its store
  is process-wide, the root keeps two storages apart, ``aclose`` drops the objects.
* ``gcs``: ``gcsfs.core.GCSFileSystem`` (the JSON API). Not the package's default
  class, which probes each bucket's layout over gRPC first (a minute's timeout against
  an emulator). Its per-request retries (6 tries, 1-32 s apart, fixed when the class is
  defined) are unwrapped so that tenacity's retries are the only ones.
* ``s3``: ``s3fs.S3FileSystem`` with its own and botocore's retries at one try.

gcsfs and s3fs are imported only when such a storage is opened. Both are built with
``skip_instance_cache=True`` (fsspec caches instances globally otherwise) and without
listing caches (another server may change the bucket).
"""

from __future__ import annotations

import functools
import io
import os
import re
import secrets
from functools import partial
from typing import Any

import fsspec  # type: ignore[import-untyped]
import fsspec.asyn  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

from melange2.storage import faults
from melange2.storage.base import StorageConfigError, StorageSpec
from melange2.storage.fsspec_store import BackendHooks, Storage
from melange2.storage.keys import validate_key

__all__ = ["GCS_DEFAULT_ENDPOINT", "S3_DEFAULT_ENDPOINT", "open_storage"]

GCS_DEFAULT_ENDPOINT = "https://storage.googleapis.com"
S3_DEFAULT_ENDPOINT = "AWS S3 (default endpoint)"

_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


def open_storage(spec: StorageSpec) -> Storage:
    """A :class:`Storage` for ``spec``. It talks to no server (gcs: it looks for Google
    default credentials); call ``await storage.check()`` at start to find a missing
    bucket, refused credentials or an unreachable endpoint. Raises
    :class:`StorageConfigError` for a spec that cannot work (no path, no bucket, no
    credentials...)."""
    if spec.kind == "local":
        return _open_local(spec)
    if spec.kind == "memory":
        return _open_memory(spec)
    if spec.kind == "gcs":
        return _open_gcs(spec)
    if spec.kind == "s3":
        return _open_s3(spec)
    raise StorageConfigError(f"unknown storage kind {spec.kind!r} (local, memory, gcs or s3)")


def _open_local(spec: StorageSpec) -> Storage:
    if spec.path is None:
        raise StorageConfigError("local storage needs a path (the output directory)")
    root = os.path.abspath(spec.path)
    if root == "/":
        raise StorageConfigError("local storage cannot use / as its root")
    fs = LocalFileSystem(skip_instance_cache=True)
    return Storage(
        fs, root, kind="local", retry_attempts=spec.retry_attempts, retry_wait=spec.retry_wait
    )


def _open_memory(spec: StorageSpec) -> Storage:
    fs = fsspec.filesystem("memory", skip_instance_cache=True)
    root = f"/melange2-{secrets.token_hex(8)}"
    return Storage(
        fs,
        root,
        kind="memory",
        url_base=f"memory://{root}",
        retry_attempts=spec.retry_attempts,
        retry_wait=spec.retry_wait,
    )


def _bucket_root(spec: StorageSpec) -> tuple[str, str]:
    """``bucket[/prefix]`` and the prefix to list below (``prefix/`` or empty)."""
    if not spec.bucket:
        raise StorageConfigError(f"{spec.kind} storage needs a bucket")
    if not _BUCKET.fullmatch(spec.bucket):
        raise StorageConfigError(f"{spec.kind} storage: invalid bucket name {spec.bucket!r}")
    prefix = spec.prefix.strip("/")
    if not prefix:
        return spec.bucket, ""
    try:
        validate_key(prefix)
    except ValueError as exc:
        raise StorageConfigError(f"{spec.kind} storage: invalid prefix: {exc}") from exc
    return f"{spec.bucket}/{prefix}", f"{prefix}/"


def _open_gcs(spec: StorageSpec) -> Storage:
    import aiohttp
    import google.auth.exceptions
    import requests.exceptions

    root, prefix = _bucket_root(spec)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    endpoint = spec.endpoint_url or (emulator if emulator not in ("", "default") else "")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        endpoint = f"http://{endpoint}"
    endpoint = endpoint.rstrip("/")
    token = spec.token or ("anon" if endpoint else "google_default")
    try:
        fs = _gcs_class()(
            project=spec.project,
            token=token,
            endpoint_url=endpoint or None,
            requests_timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=spec.connect_timeout, sock_read=spec.read_timeout
            ),
            asynchronous=False,
            skip_instance_cache=True,
            use_listings_cache=False,
        )
    except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
        raise StorageConfigError(
            f"gcs storage gs://{root}: no usable credentials ({type(exc).__name__}: {exc})"
        ) from exc

    def connect() -> None:
        fsspec.asyn.sync(fs.loop, fs._set_session)

    def close() -> None:
        session = fs._session
        if session is not None and not session.closed:
            fsspec.asyn.sync(fs.loop, session.close)

    transient = (
        aiohttp.ClientConnectionError,
        aiohttp.ClientPayloadError,
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
        google.auth.exceptions.TransportError,
    )
    denied = (google.auth.exceptions.DefaultCredentialsError, google.auth.exceptions.RefreshError)

    def find_bucket() -> None:  # objects.list: what an object admin may do
        fs.call("GET", "b/{}/o", spec.bucket, maxResults=1, prefix=prefix, json_out=True)

    hooks = BackendHooks(
        is_transient=partial(faults.is_transient, extra=transient),
        is_denied=partial(_gcs_denied, extra=denied),
        connect=connect,
        close=close,
        find_bucket=find_bucket,
    )
    return Storage(
        fs,
        root,
        kind="gcs",
        url_base=f"gs://{root}",
        endpoint=endpoint or GCS_DEFAULT_ENDPOINT,
        bucket=spec.bucket,
        hooks=hooks,
        retry_attempts=spec.retry_attempts,
        retry_wait=spec.retry_wait,
    )


def _gcs_denied(exc: BaseException, extra: tuple[type[BaseException], ...]) -> bool:
    # gcsfs raises a plain OSError("Forbidden: <path>\n<message>") for HTTP 403
    return faults.is_denied(exc, extra) or any(
        type(e) is OSError and str(e).startswith("Forbidden") for e in faults.causes(exc)
    )


@functools.cache
def _gcs_class() -> type:
    """gcsfs's JSON-API filesystem, one try per request, large bodies sent as files.

    gcsfs wraps ``_request`` and its two download methods in ``retry_request`` (6
    tries, 1-32 s apart); we call the wrapped functions (``__wrapped__``) instead. It
    also hands aiohttp upload bodies as ``bytes``, which aiohttp warns about above
    1 MiB (``ResourceWarning``, an error under ``-W error``): those go as ``BytesIO``.
    """
    from gcsfs.core import GCSFileSystem  # type: ignore[import-untyped]

    def unwrapped(name: str) -> Any:
        method = getattr(GCSFileSystem, name)
        return getattr(method, "__wrapped__", method)

    request = unwrapped("_request")

    async def _request(self: Any, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        data = kwargs.get("data")
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data) > 1 << 20:
            kwargs["data"] = io.BytesIO(data)
        return await request(self, method, path, *args, **kwargs)

    return type(
        "OneTryGCSFileSystem",
        (GCSFileSystem,),
        {
            "_request": _request,
            "_get_file_request": unwrapped("_get_file_request"),
            "_get_file_concurrent": unwrapped("_get_file_concurrent"),
        },
    )


def _open_s3(spec: StorageSpec) -> Storage:
    import aiohttp
    import botocore.exceptions  # type: ignore[import-untyped]
    import s3fs  # type: ignore[import-untyped]
    import s3fs.utils  # type: ignore[import-untyped]

    root, prefix = _bucket_root(spec)
    config: dict[str, Any] = {
        "connect_timeout": spec.connect_timeout,
        "read_timeout": spec.read_timeout,
        "retries": {"mode": "standard", "total_max_attempts": 1},
    }
    if spec.path_style:
        config["s3"] = {"addressing_style": "path"}
    client: dict[str, Any] = {}
    if spec.region:
        client["region_name"] = spec.region
    fs = s3fs.S3FileSystem(
        endpoint_url=spec.endpoint_url or None,
        key=spec.access_key_id or None,
        secret=spec.secret_access_key or None,
        client_kwargs=client,
        config_kwargs=config,
        asynchronous=False,
        skip_instance_cache=True,
        use_listings_cache=False,
    )
    fs.retries = 1  # s3fs's own retry loop (class default: 5)

    def connect() -> None:
        fs.connect()

    def close() -> None:
        client = fs._s3
        if client is not None:
            fs._s3 = None
            fsspec.asyn.sync(fs.loop, client.close)

    transient = (
        botocore.exceptions.ConnectionError,
        botocore.exceptions.HTTPClientError,
        aiohttp.ClientConnectionError,
        aiohttp.ClientPayloadError,
    )
    denied = (
        botocore.exceptions.NoCredentialsError,
        botocore.exceptions.PartialCredentialsError,
    )

    def find_bucket() -> None:  # ListObjectsV2, as list() does
        fs.call_s3("list_objects_v2", Bucket=spec.bucket, Prefix=prefix, MaxKeys=1)

    hooks = BackendHooks(
        is_transient=partial(faults.is_transient, extra=transient),
        is_denied=partial(faults.is_denied, extra=denied),
        changed_errors=(s3fs.utils.FileExpired,),
        connect=connect,
        close=close,
        find_bucket=find_bucket,
    )
    return Storage(
        fs,
        root,
        kind="s3",
        url_base=f"s3://{root}",
        endpoint=spec.endpoint_url or S3_DEFAULT_ENDPOINT,
        bucket=spec.bucket,
        hooks=hooks,
        retry_attempts=spec.retry_attempts,
        retry_wait=spec.retry_wait,
    )
