"""APK repositories on disk: ``<repo>/<arch>/*.apk`` with a signed ``APKINDEX.tar.gz``."""

from __future__ import annotations

from melange2.repo.directory import index_directory, publish_apk

__all__ = ["index_directory", "publish_apk"]
