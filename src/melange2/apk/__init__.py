"""APK v2 packages, their signatures and the APKINDEX: pure, streams in and out.

- :func:`write_apk` packages a directory tree; :func:`read_apk` reads one back.
- :class:`PackageInfo` is ``.PKGINFO``; :class:`IndexRecord` is one APKINDEX record.
- :class:`Signer`, :func:`generate_key`, :func:`verify` deal with RSA keys.
- :func:`write_index_tar_gz` / :func:`read_index_tar_gz` handle ``APKINDEX.tar.gz``.

Nothing here touches the network; files are read and written through the paths and
streams the caller passes in.
"""

from __future__ import annotations

from melange2.apk.errors import ApkFormatError, ApkIntegrityError, ApkSignatureError
from melange2.apk.index import (
    ApkIndex,
    IndexRecord,
    build_index,
    parse_index,
    read_index_tar_gz,
    write_index_tar_gz,
)
from melange2.apk.pkginfo import PackageInfo, parse_pkginfo, render_pkginfo
from melange2.apk.reader import (
    ApkPackage,
    DataEntry,
    EntryKind,
    Signature,
    read_apk,
    split_streams,
)
from melange2.apk.signing import (
    DEFAULT_KEY_SIZE,
    KeyPair,
    PublicKeys,
    SignatureAlgorithm,
    Signer,
    generate_key,
    load_public_key,
    load_public_keys,
    verify,
)
from melange2.apk.version import Constraint, Operator, compare_versions, is_valid_version
from melange2.apk.writer import ApkResult, Owner, Scriptlet, write_apk

__all__ = [
    "DEFAULT_KEY_SIZE",
    "ApkFormatError",
    "ApkIndex",
    "ApkIntegrityError",
    "ApkPackage",
    "ApkResult",
    "ApkSignatureError",
    "Constraint",
    "DataEntry",
    "EntryKind",
    "IndexRecord",
    "KeyPair",
    "Operator",
    "Owner",
    "PackageInfo",
    "PublicKeys",
    "Scriptlet",
    "Signature",
    "SignatureAlgorithm",
    "Signer",
    "build_index",
    "compare_versions",
    "generate_key",
    "is_valid_version",
    "load_public_key",
    "load_public_keys",
    "parse_index",
    "parse_pkginfo",
    "read_apk",
    "read_index_tar_gz",
    "render_pkginfo",
    "split_streams",
    "verify",
    "write_apk",
    "write_index_tar_gz",
]
