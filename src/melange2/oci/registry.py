"""A small asyncio client for the OCI distribution API (what ``docker push/pull`` speak).

Anonymous access over HTTP or HTTPS, as the farm's loopback registry serves it.

Example::

    async with RegistryClient("127.0.0.1:5000") as reg:
        await reg.push_blob("base", layer.blob)
        digest = await reg.push_manifest("base", "latest", manifest)
        manifest = await reg.get_manifest("base", digest)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from melange2.errors import ManifestNotFound, RegistryError
from melange2.oci.image import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Blob,
)
from melange2.platform import Platform

_log = logging.getLogger(__name__)

_ACCEPT = ", ".join([INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, DOCKER_LIST, DOCKER_MANIFEST])


#: answers worth another try: the registry is busy or restarting
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
#: requests that may be sent again whatever happened to the first one
_IDEMPOTENT = frozenset({"GET", "HEAD"})


def _transient(method: str, exc: BaseException) -> bool:
    """Retry a request that never reached the registry; and reads that failed or were
    answered with a transient status (a write may have half happened: not those)."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return True
    if method not in _IDEMPOTENT:
        return False
    if isinstance(exc, _TransientStatus):
        return True
    return isinstance(exc, httpx.TransportError)


class _TransientStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class RegistryClient:
    """Push and pull blobs and manifests of one registry host. Requests that fail on the
    way (connection refused or reset, a read timing out, 429 or 5xx to a read) are tried
    again, ``retries`` times in all, with exponential backoff from ``retry_wait`` s."""

    def __init__(
        self,
        host: str,
        *,
        scheme: str = "http",
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = 4,
        retry_wait: float = 0.2,
    ) -> None:
        self.host = host
        self.retries = retries
        self.retry_wait = retry_wait
        self._client = httpx.AsyncClient(
            base_url=f"{scheme}://{host}", timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        async def once() -> httpx.Response:
            resp = await self._client.request(method, url, **kw)
            if method in _IDEMPOTENT and resp.status_code in _TRANSIENT_STATUS:
                raise _TransientStatus(resp)
            return resp

        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, self.retries)),
            wait=wait_exponential(multiplier=self.retry_wait, max=5.0),
            retry=retry_if_exception(lambda exc: _transient(method, exc)),
            before_sleep=lambda state: _log.warning(
                "registry %s: %s %s failed (try %d), retrying: %s",
                self.host,
                method,
                url,
                state.attempt_number,
                state.outcome.exception() if state.outcome else "?",
            ),
            reraise=True,
        )
        try:
            return await retrying(once)
        except _TransientStatus as exc:
            return exc.response  # still busy after every try: the caller says what failed
        except httpx.HTTPError as exc:
            raise RegistryError(f"registry {self.host}: {method} {url}: {exc}") from exc

    async def ping(self) -> bool:
        """True when the registry answers the v2 API."""
        try:
            resp = await self._client.get("/v2/")
        except httpx.HTTPError:
            return False
        return resp.status_code in (200, 401)

    async def has_blob(self, repo: str, digest: str) -> bool:
        resp = await self._request("HEAD", f"/v2/{repo}/blobs/{digest}")
        return resp.status_code == 200

    async def push_blob(self, repo: str, blob: Blob) -> str:
        """Upload ``blob`` unless the registry has it; returns its digest."""
        digest = blob.digest
        if await self.has_blob(repo, digest):
            return digest
        start = await self._request("POST", f"/v2/{repo}/blobs/uploads/")
        if start.status_code != 202:
            raise RegistryError(f"registry {self.host}: cannot start upload: {start.status_code}")
        location = start.headers["location"]
        sep = "&" if "?" in location else "?"
        done = await self._request(
            "PUT",
            f"{location}{sep}digest={digest}",
            content=blob.data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if done.status_code != 201:
            raise RegistryError(
                f"registry {self.host}: upload of {digest} refused: {done.status_code} {done.text}"
            )
        return digest

    async def push_manifest(self, repo: str, reference: str, manifest: Blob) -> str:
        """Put a manifest or index under ``reference`` (a tag or its digest)."""
        resp = await self._request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            content=manifest.data,
            headers={"Content-Type": manifest.media_type},
        )
        if resp.status_code != 201:
            raise RegistryError(
                f"registry {self.host}: manifest {repo}:{reference} refused: "
                f"{resp.status_code} {resp.text}"
            )
        return manifest.digest

    async def get_manifest(self, repo: str, reference: str) -> Blob:
        """The manifest or index at ``reference``, checked against its digest."""
        resp = await self._request(
            "GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": _ACCEPT}
        )
        if resp.status_code == 404:
            raise ManifestNotFound(f"{self.host}/{repo}: no manifest {reference}")
        if resp.status_code != 200:
            raise RegistryError(f"registry {self.host}: manifest {reference}: {resp.status_code}")
        blob = Blob(media_type=resp.headers.get("content-type", ""), data=resp.content)
        if reference.startswith("sha256:") and blob.digest != reference:
            raise RegistryError(f"registry {self.host}: manifest digest mismatch for {reference}")
        return blob

    async def get_blob(self, repo: str, digest: str) -> bytes:
        """A blob's content, checked against its digest."""
        resp = await self._request("GET", f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
        if resp.status_code != 200:
            raise RegistryError(f"registry {self.host}: blob {digest}: {resp.status_code}")
        if "sha256:" + hashlib.sha256(resp.content).hexdigest() != digest:
            raise RegistryError(f"registry {self.host}: blob digest mismatch for {digest}")
        return resp.content

    async def image_manifest(
        self, repo: str, reference: str, platform: Platform | None = None
    ) -> dict[str, Any]:
        """The image manifest at ``reference``, choosing ``platform`` from an index."""
        blob = await self.get_manifest(repo, reference)
        doc: dict[str, Any] = json.loads(blob.data)
        if doc.get("mediaType", blob.media_type) in (INDEX_MEDIA_TYPE, DOCKER_LIST) or (
            "manifests" in doc
        ):
            for entry in doc["manifests"]:
                plat = entry.get("platform", {})
                if platform is None or (
                    plat.get("architecture") == platform.architecture
                    and plat.get("os") == platform.os
                    and plat.get("variant", "") == platform.variant
                ):
                    return await self.image_manifest(repo, entry["digest"])
            raise ManifestNotFound(f"{self.host}/{repo}@{reference}: no manifest for {platform}")
        return doc

    async def read_file(
        self, repo: str, reference: str, path: str, platform: Platform | None = None
    ) -> bytes:
        """The content of ``path`` in the image: the topmost layer that has it wins."""
        manifest = await self.image_manifest(repo, reference, platform)
        wanted = path.lstrip("/")
        found: bytes | None = None
        for layer in manifest["layers"]:
            data = await self.get_blob(repo, layer["digest"])
            for name, content in _tar_files(data):
                if name == wanted:
                    found = content
        if found is None:
            raise RegistryError(f"{self.host}/{repo}@{reference}: no file {path}")
        return found


def _tar_files(layer: bytes) -> Iterator[tuple[str, bytes]]:
    raw = gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for member in tar:
            if member.isfile():
                f = tar.extractfile(member)
                if f is not None:
                    yield member.name.removeprefix("./"), f.read()
