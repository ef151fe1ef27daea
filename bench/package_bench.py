"""What melange's additions cost the packaging step (issue 13: SCA, SBOM and linters
together at most 10% of a trivial package's packaging time, at most 1 s on 1,000 files).

Measured here, in-process and without BuildKit: the packaging phase of
:func:`melange2.build.executor.write_packages` on an exported tree, as a build runs it.

* ``bare``: the APK written and signed, and the index, with none of melange's additions
  (the packaging as it was before: :func:`melange2.apk.write_apk` and ``index_directory``);
* ``melange``: ``write_packages`` itself: the linters and SCA, the SBOM rendered and
  packed from memory, ``.melange.yaml`` rendered, owners and names, then the same APK
  and index;
* ``additions``: the SBOM documents and ``.melange.yaml`` alone (rendering only), which
  is what the difference of the two arms should be, measured directly because on a
  loaded machine the difference of two medians is noise.

The difference is what all of melange's additions add (the SBOM, ``.melange.yaml``, the
linters and SCA; ``bench/sca_bench.py`` measures the last two, and the SBOM, apart).
Two trees: a trivial package (one file) and one of 1,000 files.

    .venv/bin/python bench/package_bench.py --runs 21
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from melange2.apk.pkginfo import PackageInfo
from melange2.apk.signing import Signer, generate_key
from melange2.apk.writer import write_apk
from melange2.build.executor import BuildOptions, write_packages
from melange2.build.melange_yaml import BuildFacts, render_melange_yaml
from melange2.build.sbom import SbomContext, package_sboms
from melange2.recipe import load_config
from melange2.recipe.compile import PipelineResolver
from melange2.repo.directory import index_directory

CONFIG = """\
package:
  name: bench
  version: 1.0.0
  description: a trivial package
  copyright:
    - license: MIT
environment:
  contents:
    packages: [busybox]
pipeline:
  - runs: echo hi > ${{targets.destdir}}/usr/share/bench/file
"""


def make_tree(root: Path, files: int) -> None:
    pkg = root / "bench" / "usr" / "share" / "bench"
    pkg.mkdir(parents=True)
    for n in range(files):
        (pkg / f"file{n:04d}").write_text(f"content {n}\n")


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": args.runs,
    }
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        key = work / "bench.rsa"
        generate_key(key, key_size=2048)
        signer = Signer.from_files(key)
        config_path = work / "bench.yaml"
        config_path.write_text(CONFIG)
        config = load_config(config_path, arch="x86_64")
        for files in (1, 1000):
            template = work / f"tree-{files}"
            make_tree(template, files)

            def fresh(template: Path = template) -> Path:
                tree = work / "tree"
                shutil.rmtree(tree, ignore_errors=True)
                shutil.copytree(template, tree)
                return tree

            def bare() -> None:
                tree = fresh()
                out = work / "bare" / "x86_64"
                out.mkdir(parents=True, exist_ok=True)
                info = PackageInfo(name="bench", version="1.0.0", arch="x86_64")
                with (out / info.filename).open("wb") as f:
                    write_apk(tree / "bench", info, signer, f, source_date_epoch=1700000000)
                index_directory(out, signer, source_date_epoch=1700000000)

            def melange() -> None:
                tree = fresh()
                opts = BuildOptions(
                    config=config_path,
                    arch="x86_64",
                    buildkit_addr="",
                    registry="",
                    out_dir=work / "melange",
                    cache_dir=work / "cache",
                    source_date_epoch=1700000000,
                    git_commit="unknown",
                )
                write_packages(config, tree, opts, signer)

            resolver = PipelineResolver()
            facts = BuildFacts(arch="x86_64", locked=("busybox=1.35.0-r0",))
            context = SbomContext(arch="x86_64", config_file=str(config_path))

            def additions(
                context: SbomContext = context,
                facts: BuildFacts = facts,
                resolver: PipelineResolver = resolver,
            ) -> None:
                package_sboms(config, context)
                render_melange_yaml(config, {}, facts, resolver)

            additions_t = timed(additions, args.runs * 10)
            copy_only = timed(lambda: fresh(), args.runs)
            bare_t = timed(bare, args.runs)
            melange_t = timed(melange, args.runs)
            base = statistics.median(copy_only)
            b = statistics.median(bare_t) - base
            m = statistics.median(melange_t) - base
            results[f"files_{files}"] = {
                "bare_ms": round(b * 1000, 2),
                "melange_ms": round(m * 1000, 2),
                "added_ms": round((m - b) * 1000, 2),
                "ratio": round(m / b, 3),
                "additions_ms": round(statistics.median(additions_t) * 1000, 3),
                "additions_ratio": round(statistics.median(additions_t) / b, 4),
            }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
