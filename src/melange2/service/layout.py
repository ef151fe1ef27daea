"""Where a build's logs and artifacts, the published repository and the reuse records
live in the farm's storage (api.md's layout).

Local storage (``--output-dir``)::

    <build-id>-<package>/logs/build.log            (build.attempt-<n>.log for retries)
    <build-id>-<package>/<arch>/<name>-<version>-r<epoch>.apk, APKINDEX.tar.gz
    repo/<arch>/*.apk, repo/<arch>/APKINDEX.tar.gz, repo/keys/<key>.rsa.pub
    cache/<arch>/<input digest>.json
    cache/<arch>/quick/<quick digest>.json

A bucket (``--gcs-bucket``, ``--s3-bucket``)::

    builds/<build-id>-<package>/logs/build.log
    builds/<build-id>-<package>/artifacts/<arch>/...
    repo/..., cache/...  (as above)

Keys are only ever made from checked names: build ids as the store makes them and
package names and architectures as :func:`check_name` allows, so no key can escape its
place (no ``..``, no ``/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_BUILD_ID = re.compile(r"^bld-[A-Za-z0-9]+$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
REPO = "repo"


def check_name(what: str, value: str) -> str:
    """A package name, version or arch fit to be part of a storage key."""
    if not _NAME.match(value) or ".." in value or len(value) > 200:
        raise ValueError(f"{what} {value!r} cannot name a file (letters, digits, . _ + - only)")
    return value


def log_name(attempt: int) -> str:
    """Each attempt keeps its own log."""
    return "build.log" if attempt == 1 else f"build.attempt-{attempt}.log"


@dataclass(frozen=True)
class Layout:
    bucket: bool = False  #: the bucket layout (builds/..., artifacts/)

    def package(self, build_id: str, name: str) -> str:
        if not _BUILD_ID.match(build_id):
            raise ValueError(f"invalid build id {build_id!r}")
        key = f"{build_id}-{check_name('package name', name)}"
        return f"builds/{key}" if self.bucket else key

    def log(self, build_id: str, name: str, attempt: int) -> str:
        return f"{self.package(build_id, name)}/logs/{log_name(attempt)}"

    def artifacts(self, build_id: str, name: str) -> str:
        """The prefix holding ``<arch>/<file>`` of a package's build."""
        base = self.package(build_id, name)
        return f"{base}/artifacts" if self.bucket else base

    def repo_file(self, arch: str, filename: str) -> str:
        return f"{REPO}/{check_name('arch', arch)}/{check_name('file name', filename)}"

    def repo_key(self, filename: str) -> str:
        return f"{REPO}/keys/{check_name('key name', filename)}"

    def reuse_record(self, arch: str, digest: str) -> str:
        if not _DIGEST.match(digest):
            raise ValueError(f"invalid input digest {digest!r}")
        return f"cache/{check_name('arch', arch)}/{digest.removeprefix('sha256:')}.json"

    def quick_record(self, arch: str, quick: str) -> str:
        """The reuse record a quick digest led to (:func:`~melange2.build.inputs.quick_digest`)."""
        if not _DIGEST.match(quick):
            raise ValueError(f"invalid quick digest {quick!r}")
        return f"cache/{check_name('arch', arch)}/quick/{quick.removeprefix('sha256:')}.json"
