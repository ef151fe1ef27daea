"""A directory APK repository: each ``<arch>/`` holds packages and their signed index.

The index is written to a temporary file and renamed over the old one, so a reader
sees the old index or the new one, never half of one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from melange2.apk.index import IndexRecord, write_index_tar_gz
from melange2.apk.signing import Signer
from melange2.fsutil import write_atomic

INDEX_NAME = "APKINDEX.tar.gz"


def index_directory(
    arch_dir: Path, signer: Signer | None, *, description: str = "", source_date_epoch: int = 0
) -> list[IndexRecord]:
    """(Re)write ``arch_dir/APKINDEX.tar.gz`` listing every ``*.apk`` in ``arch_dir``."""
    arch_dir.mkdir(parents=True, exist_ok=True)
    records = [IndexRecord.from_apk(p) for p in sorted(arch_dir.glob("*.apk"))]
    write_atomic(
        arch_dir / INDEX_NAME,
        lambda out: write_index_tar_gz(
            records, signer, out, description=description, source_date_epoch=source_date_epoch
        ),
    )
    return records


def publish_apk(apk: Path, arch_dir: Path) -> Path:
    """Copy ``apk`` into ``arch_dir`` atomically (the index is the caller's next step)."""
    arch_dir.mkdir(parents=True, exist_ok=True)
    dest = arch_dir / apk.name
    with apk.open("rb") as src:
        write_atomic(dest, lambda out: shutil.copyfileobj(src, out))
    return dest
