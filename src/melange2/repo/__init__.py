"""APK repositories: loading and verifying indexes, resolving packages as apk does,
fetching them (local directories or http), and publishing into a directory repository.

Unlike :mod:`melange2.apk` (pure formats), this package does I/O.
"""

from __future__ import annotations

from melange2.repo.directory import index_directory, publish_apk
from melange2.repo.repository import (
    LoadedIndex,
    PackageVerificationError,
    Repository,
    RepositoryError,
    UntrustedIndexError,
    load_indexes,
)
from melange2.repo.resolve import (
    Resolution,
    ResolutionError,
    ResolvedPackage,
    installed_db,
    installed_db_entry,
    resolve,
    world_text,
)

__all__ = [
    "LoadedIndex",
    "PackageVerificationError",
    "Repository",
    "RepositoryError",
    "Resolution",
    "ResolutionError",
    "ResolvedPackage",
    "UntrustedIndexError",
    "index_directory",
    "installed_db",
    "installed_db_entry",
    "load_indexes",
    "publish_apk",
    "resolve",
    "world_text",
]
