"""Where a build's logs and artifacts, the published repository and the reuse records
live in the farm's storage (api.md's layout).

Local storage (``--output-dir``)::

    <build-id>-<package>/logs/build.log            (build.attempt-<n>.log for retries)
    <build-id>-<package>/<arch>/<name>-<version>-r<epoch>.apk, APKINDEX.tar.gz
    repo/<arch>/*.apk, repo/<arch>/APKINDEX.tar.gz, repo/keys/<key>.rsa.pub
    origins/<arch>.json                             which build published each repo file
    cache/<arch>/<input digest>.json
    cache/<arch>/quick/<quick digest>.json

A bucket (``--gcs-bucket``, ``--s3-bucket``)::

    builds/<build-id>-<package>/logs/build.log
    builds/<build-id>-<package>/artifacts/<arch>/...
    repo/..., origins/..., cache/...  (as above)

Keys are only ever made from checked names: build ids as the store makes them, package
names as :func:`melange2.names.check_package_name` allows (the recipe parser's rule, so
a name a config may have always makes a key), and architectures and file names as
:func:`check_name` allows: no key can escape its place (no ``/``, no ``..``, ASCII
only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from melange2.jobs import PackageJob
from melange2.names import check_package_name
from melange2.service.settings import ServerSettings
from melange2.storage import OnDisk, Storage

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", re.ASCII)
_BUILD_ID = re.compile(r"^bld-[A-Za-z0-9]+$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
REPO = "repo"


def check_name(what: str, value: str) -> str:
    """An arch or file name fit to be part of a storage key (at most 255 characters)."""
    if not _NAME.fullmatch(value) or ".." in value or len(value) > 255:
        raise ValueError(
            f"{what} {value[:80]!r} cannot name a file (ASCII letters, digits, . _ + - only)"
        )
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
        key = f"{build_id}-{check_package_name(name)}"
        return f"builds/{key}" if self.bucket else key

    def log(self, build_id: str, name: str, attempt: int) -> str:
        return f"{self.package(build_id, name)}/logs/{log_name(attempt)}"

    def artifacts(self, build_id: str, name: str) -> str:
        """The prefix holding ``<arch>/<file>`` of a package's build."""
        base = self.package(build_id, name)
        return f"{base}/artifacts" if self.bucket else base

    def repo_file(self, arch: str, filename: str) -> str:
        return f"{REPO}/{check_name('arch', arch)}/{check_name('file name', filename)}"

    def origins(self, arch: str) -> str:
        """Which build published each file of the farm's repository (beside it, not in
        it: the repository's clients have no use for it)."""
        return f"origins/{check_name('arch', arch)}.json"

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


class Locations:
    """Where a package's log and artifacts are: their keys in the farm's storage, and
    where they are written on this machine meanwhile (:meth:`Storage.on_disk`: the stored
    files themselves on local storage, the package's work directory otherwise)."""

    def __init__(self, storage: Storage, settings: ServerSettings) -> None:
        self.storage = storage
        self.settings = settings
        self.layout = Layout(bucket=storage.kind in ("gcs", "s3"))

    def log_key(self, job: PackageJob, attempt: int) -> str:
        return self.layout.log(job.build_id, job.name, attempt)

    def log_location(self, job: PackageJob, attempt: int) -> str:
        """Where attempt ``attempt``'s log is kept, as the API shows it."""
        return self.storage.url(self.log_key(job, attempt))

    def log(self, job: PackageJob, attempt: int) -> OnDisk:
        """The attempt's log as it is written (followers read it there while it runs)."""
        key = self.log_key(job, attempt)
        scratch = self.settings.work_dir(job.build_id, job.name) / "logs" / log_name(attempt)
        return self.storage.on_disk(key, scratch)

    def artifacts_key(self, job: PackageJob) -> str:
        """The prefix holding the package's ``<arch>/<file>``."""
        return self.layout.artifacts(job.build_id, job.name)

    def outputs(self, job: PackageJob) -> OnDisk:
        """Where an attempt writes the package's files (``<arch>/<file>``)."""
        scratch = self.settings.work_dir(job.build_id, job.name) / "out"
        return self.storage.on_disk(self.artifacts_key(job), scratch)
