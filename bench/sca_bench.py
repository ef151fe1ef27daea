"""What SCA and the linters add to packaging (issue 13: at most 10% of a trivial
package's packaging time, at most one second for a package of 1,000 files).

For each tree, in the same process and on the same files:

* ``package``: what writing the packages costs without them: ``.PKGINFO`` from the
  config, one signed APK per package (RSA 2048), the signed ``APKINDEX``;
* ``checks``: what they add: the linters over every package
  (:func:`melange2.build.analysis.lint_packages`) and SCA with the merge
  (:func:`~melange2.build.analysis.analyse_packages`), on fresh :class:`PackageTree`
  objects each run (nothing cached between runs);
* ``sbom`` (``trivial`` only: the tree the 10% goal is about): what the SBOM adds, the
  same packaging with each package's SPDX document rendered
  (:func:`melange2.build.emit.package_extras`) and packed from memory
  (``write_apk(extra_files=...)``), as builds do; runs paired with ``package`` (in
  alternating order) and the median of the pairs' differences taken, so that a load
  that drifts between runs cancels out.

Trees:

* ``trivial``: ``examples/hello`` as its pipelines leave it (a script, a README, the
  -doc subpackage);
* ``files-1000``: one package of 1,000 files, as a library package looks: 50 shared
  libraries and 50 executables (copies of the host's libz and dpkg-deb, each a distinct
  file), 20 pkg-config files, 30 scripts, a Python package, and 840 headers and data
  files of 0.5 to 8 KB in 40 directories;
* ``elf-1000``: the worst case, 1,000 ELF files (500 libraries, 500 executables).

Medians (wall clock and this process's CPU time) of ``--runs`` runs after one warm-up
(the packaging of ``elf-1000``, 200 MB of APKs, only ``--package-runs-elf``); prints
JSON (``--out`` writes it too).

    .venv/bin/python bench/sca_bench.py --runs 9
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from melange2.apk.signing import Signer, generate_key
from melange2.apk.writer import write_apk
from melange2.build.analysis import analyse_packages, lint_packages, package_trees
from melange2.build.emit import package_extras
from melange2.build.executor import package_infos
from melange2.build.sbom import SbomContext
from melange2.recipe import Config, load_config
from melange2.repo.directory import index_directory

ROOT = Path(__file__).resolve().parent.parent
LIBZ = sorted(
    p for p in Path("/usr/lib/x86_64-linux-gnu").glob("libz.so.1.*") if not p.is_symlink()
)[-1]
DPKG_DEB = Path("/usr/bin/dpkg-deb")


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    os.chmod(path, mode)


def _distinct(blob: bytes, i: int) -> bytes:
    # appended bytes keep the ELF readable and make every copy a different file
    return blob + f"\0copy {i}\0".encode()


def trivial_tree(out: Path) -> Config:
    config = load_config(ROOT / "examples/hello/hello.yaml", arch="x86_64")
    src = ROOT / "examples/hello/hello"
    script = (src / "hello.sh.in").read_text().replace("@GREETING@", "Hello from melange2")
    _write(out / "hello/usr/bin/hello", script, 0o755)
    _write(out / "hello-doc/usr/share/doc/hello/README", (src / "README").read_bytes())
    return config


def _config(name: str) -> Config:
    text = (
        f"package:\n  name: {name}\n  version: 1.0.0\n  description: bench\n"
        "  copyright:\n    - license: MIT\n  dependencies:\n    runtime:\n      - busybox\n"
        "pipeline:\n  - runs: 'true'\n"
    )
    path = Path(tempfile.mkdtemp(prefix="sca-bench-")) / f"{name}.yaml"
    path.write_text(text)
    return load_config(path, arch="x86_64")


def files_1000_tree(out: Path) -> Config:
    root = out / "files-1000"
    libz, deb = LIBZ.read_bytes(), DPKG_DEB.read_bytes()
    n = 0
    for i in range(50):
        _write(root / f"usr/lib/libbench{i}.so.1", _distinct(libz, i))
        _write(root / f"usr/bin/tool{i}", _distinct(deb, i), 0o755)
        n += 2
    for i in range(20):
        _write(
            root / f"usr/lib/pkgconfig/bench{i}.pc",
            f"prefix=/usr\nName: bench{i}\nVersion: 1\nRequires: zlib >= 1.2\nLibs: -lbench{i}\n",
        )
        n += 1
    for i in range(30):
        _write(root / f"usr/bin/script{i}", f"#!/usr/bin/env perl\nprint {i};\n", 0o755)
        n += 1
    for i in range(10):
        _write(root / f"usr/lib/python3.12/site-packages/bench/mod{i}.py", f"x = {i}\n" * 40)
        n += 1
    i = 0
    while n < 1000:
        size = 512 + (i * 613) % 7680
        _write(root / f"usr/include/bench/d{i % 40}/h{i}.h", (f"/* {i} */\n" * size)[:size])
        i += 1
        n += 1
    return _config("files-1000")


def elf_1000_tree(out: Path) -> Config:
    root = out / "elf-1000"
    libz, deb = LIBZ.read_bytes(), DPKG_DEB.read_bytes()
    for i in range(500):
        _write(root / f"usr/lib/libbench{i}.so.1", _distinct(libz, i))
        _write(root / f"usr/bin/tool{i}", _distinct(deb, i), 0o755)
    return _config("elf-1000")


def _median(fn: Callable[[], None], runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds (CPU time says what the work costs on a machine that
    other processes keep busy)."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def _paired(
    base: Callable[[], None], more: Callable[[], None], runs: int
) -> tuple[float, float, float, float]:
    """Medians of ``base`` and of ``more - base`` over paired runs after a warm-up
    (wall, CPU, wall difference, CPU difference)."""
    base()
    more()
    walls, cpus, dwall, dcpu = [], [], [], []
    for i in range(runs):
        pair: dict[str, tuple[float, float]] = {}
        for which, fn in (("base", base), ("more", more))[:: 1 if i % 2 == 0 else -1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            pair[which] = (time.perf_counter() - start, time.process_time() - start_cpu)
        walls.append(pair["base"][0])
        cpus.append(pair["base"][1])
        dwall.append(pair["more"][0] - pair["base"][0])
        dcpu.append(pair["more"][1] - pair["base"][1])
    median = statistics.median
    return median(walls), median(cpus), median(dwall), median(dcpu)


def measure(
    config: Config, out: Path, signer: Signer, runs: int, package_runs: int, sbom: bool
) -> dict[str, Any]:
    lines: list[str] = []

    def package(with_sbom: bool = False) -> None:
        arch_dir = out / "apks" / "x86_64"
        shutil.rmtree(out / "apks", ignore_errors=True)
        arch_dir.mkdir(parents=True)
        files: dict[str, dict[str, bytes]] = {}
        if with_sbom:
            context = SbomContext(arch="x86_64", config_file="bench.yaml", created=0)
            extras = package_extras(config, out, context=context)
            files = {name: dict(f) for name, f in extras.files.items()}
        for name, info in package_infos(config, "x86_64").items():
            with (arch_dir / info.filename).open("wb") as f:
                write_apk(
                    out / name,
                    info,
                    signer,
                    f,
                    source_date_epoch=0,
                    extra_files=files.get(name, {}),
                )
        index_directory(arch_dir, signer, source_date_epoch=0)

    def checks() -> None:
        trees = package_trees(config, out)
        lint_packages(config, trees, lines.append)
        analyse_packages(config, trees, "x86_64", lines.append)

    files = sum(len(files) for _, _, files in os.walk(out) if "apks" not in _)
    result: dict[str, Any] = {"files": files}
    if sbom:
        package_s, package_cpu, sbom_s, sbom_cpu = _paired(
            package, lambda: package(with_sbom=True), package_runs
        )
    else:
        package_s, package_cpu = _median(package, package_runs)
    checks_s, checks_cpu = _median(checks, runs)
    result |= {
        "package_s": round(package_s, 4),
        "checks_s": round(checks_s, 4),
        "checks_over_package": round(checks_s / package_s, 3),
        "package_cpu_s": round(package_cpu, 4),
        "checks_cpu_s": round(checks_cpu, 4),
        "checks_over_package_cpu": round(checks_cpu / package_cpu, 3),
    }
    if sbom:
        result |= {
            "sbom_s": round(sbom_s, 5),
            "sbom_cpu_s": round(sbom_cpu, 5),
            "together_over_package": round((checks_s + sbom_s) / package_s, 3),
            "together_over_package_cpu": round((checks_cpu + sbom_cpu) / package_cpu, 3),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument(
        "--package-runs-elf",
        type=int,
        default=1,
        help="runs of the (slow, context only) packaging of elf-1000",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--trees", default="trivial,files-1000,elf-1000", help="which trees, comma-separated"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "python": platform.python_version(),
        "runs": args.runs,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="sca-bench-") as tmp:
        work = Path(tmp)
        key = work / "bench.rsa"
        generate_key(key, key_size=2048)
        signer = Signer.from_files(key)
        wanted = args.trees.split(",")
        for name, make in (
            ("trivial", trivial_tree),
            ("files-1000", files_1000_tree),
            ("elf-1000", elf_1000_tree),
        ):
            if name not in wanted:
                continue
            out = work / name
            out.mkdir()
            config = make(out)
            package_runs = args.package_runs_elf if name == "elf-1000" else args.runs
            results[name] = measure(
                config, out, signer, args.runs, package_runs, sbom=name == "trivial"
            )
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
