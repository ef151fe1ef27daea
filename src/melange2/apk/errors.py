"""Finer APK errors, all under :class:`melange2.errors.ApkError`.

::

    ApkError                        (melange2.errors)
    ├── ApkFormatError              bytes that are not a valid APK v2 package, index or .PKGINFO
    ├── ApkSignatureError           no trusted key, or a signature that does not verify
    └── ApkIntegrityError           a datahash or per-file checksum that does not match the bytes
"""

from __future__ import annotations

from melange2.errors import ApkError


class ApkFormatError(ApkError, ValueError):
    """The package, index or .PKGINFO is malformed."""

    code = "apk_format_error"


class ApkSignatureError(ApkError):
    """The signature is missing, untrusted or invalid."""

    code = "apk_signature_error"


class ApkIntegrityError(ApkError):
    """The content does not match its recorded checksum."""

    code = "apk_integrity_error"
