"""Benchmark publication into one arch of the farm's repository: ``--packages`` APKs
published at once, each its own publication (as packages succeed), into a local
directory, in three shapes:

* ``alone``: one publisher, no lock across processes (the single server's path);
* ``locked``: one publisher holding the PostgreSQL advisory lock per index write;
* ``replicas``: two publishers, each with its own store on one PostgreSQL database and
  its own storage client on the one directory, the publications alternating between
  them (two replicas): each index write waits for the lock and reads what the other
  wrote when it changed.

For each shape: the wall time from the first publication to the last one returning
(median of ``--runs``), and how many index writes and index re-reads that took. Every
run checks that the index lists all the packages (signature verified). PostgreSQL is a
throwaway cluster (:mod:`melange2.testenv.postgres`, ``fsync`` off unless ``--durable``),
a fresh database per run.

    .venv/bin/python bench/publish_bench.py --packages 50 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import io
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from melange2.apk.index import read_index_tar_gz
from melange2.apk.pkginfo import PackageInfo
from melange2.apk.signing import Signer, generate_key, load_public_keys
from melange2.apk.writer import write_apk
from melange2.service.publish import INDEX_NAME, Origin, RepoPublisher
from melange2.storage import StorageSpec, open_storage
from melange2.store import PostgresStore
from melange2.testenv.postgres import PostgresCluster, migrated_template


def make_apks(root: Path, count: int, signer: Signer) -> list[Path]:
    apks = []
    for i in range(count):
        name = f"bench{i:04d}"
        tree = root / "trees" / name
        (tree / "usr" / "share" / name).mkdir(parents=True, exist_ok=True)
        (tree / "usr" / "share" / name / "marker").write_text(f"{name}\n")
        info = PackageInfo(name=name, version="1.0.0", epoch=0, arch="x86_64", description=name)
        out = root / "apks" / info.filename
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("wb") as f:
            write_apk(tree, info, signer, f, source_date_epoch=0)
        apks.append(out)
    return apks


async def one_run(
    shape: str, apks: list[Path], signer: Signer, public: Path, root: Path, dsn: str
) -> tuple[float, int, int]:
    spec = StorageSpec(kind="local", path=root)
    storages = [open_storage(spec), open_storage(spec)]
    stores: list[PostgresStore] = []
    if shape != "alone":
        stores = [await PostgresStore.open(dsn) for _ in range(2 if shape == "replicas" else 1)]
    try:
        publishers = [
            RepoPublisher(
                storages[i],
                "repo",
                signer,
                immutable=True,
                lock=stores[i].hold_lock if stores else None,
            )
            for i in range(2 if shape == "replicas" else 1)
        ]
        for p in publishers:
            await p.records("x86_64")
        start = time.perf_counter()
        await asyncio.gather(
            *(
                publishers[i % len(publishers)].publish(
                    [apk], "x86_64", origin=Origin(build_id=f"b{i}", package=apk.name)
                )
                for i, apk in enumerate(apks)
            )
        )
        seconds = time.perf_counter() - start
        data = await storages[0].read_bytes(f"repo/x86_64/{INDEX_NAME}")
        keys = load_public_keys([public])
        listed = read_index_tar_gz(io.BytesIO(data), keys=keys).records
        if len(listed) != len(apks):
            raise SystemExit(f"{shape}: the index lists {len(listed)} of {len(apks)} packages")
        writes = sum(p.index_writes("x86_64") for p in publishers)
        reloads = sum(p.index_reloads("x86_64") for p in publishers)
        return seconds, writes, reloads
    finally:
        for store in stores:
            await store.aclose()
        for storage in storages:
            await storage.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--durable", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="publish-bench-") as tmp:
        work = Path(tmp)
        key = work / "bench.rsa"
        generate_key(key, key_size=2048)
        signer = Signer.from_files(key)
        apks = make_apks(work, args.packages, signer)
        with PostgresCluster.create(durable=args.durable) as cluster:
            template = migrated_template(cluster)
            for shape in ("alone", "locked", "replicas"):
                results = []
                for run in range(args.runs):
                    name = f"bench_{secrets.token_hex(4)}"
                    dsn = cluster.create_database(name, template=template)
                    try:
                        root = work / f"{shape}-{run}"
                        results.append(
                            asyncio.run(
                                one_run(
                                    shape, apks, signer, key.with_name("bench.rsa.pub"), root, dsn
                                )
                            )
                        )
                    finally:
                        cluster.drop_database(name)
                seconds = statistics.median(r[0] for r in results)
                writes = statistics.median(r[1] for r in results)
                reloads = statistics.median(r[2] for r in results)
                print(
                    f"{shape:9s} {args.packages} packages: median {seconds * 1000:7.1f} ms "
                    f"over {args.runs} runs, {writes:g} index writes, {reloads:g} re-reads"
                )


if __name__ == "__main__":
    main()
