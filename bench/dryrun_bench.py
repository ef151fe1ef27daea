"""A whole distribution in one dry-run request: ``wolfi-dag.json``'s 3,401 packages as
generated melange configs (each lists its build-time dependencies in
``environment.contents.packages``), planned by a running server without building.

    make farm-up && .venv/bin/python bench/dryrun_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import httpx

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "wolfi-dag.json"


def config(name: str, deps: list[str]) -> str:
    packages = "".join(f"      - {d}\n" for d in ["busybox", *deps])
    return (
        f"package:\n  name: {name}\n  version: 1.0.0\n  description: {name}\n"
        f"environment:\n  contents:\n    packages:\n{packages}"
        "pipeline:\n  - name: build\n    runs: |\n      mkdir -p ${{targets.destdir}}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8080")
    parser.add_argument(
        "--token",
        default=os.environ.get("MELANGE_TOKEN", ""),
        help="an API token with the submit role (default: MELANGE_TOKEN)",
    )
    parser.add_argument("--limit", type=int, default=0, help="only the first N packages")
    args = parser.parse_args()
    packages = json.loads(DATA.read_text())["packages"]
    if args.limit:
        packages = packages[: args.limit]
    names = {p["name"] for p in packages}
    configs = [
        config(p["name"], [d for d in (*p["deps"], *p.get("cycle_deps", ())) if d in names])
        for p in packages
    ]
    body = {"configs": configs, "mode": "dag", "cycle_policy": "break", "dry_run": True}
    t0 = time.perf_counter()
    auth = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    resp = httpx.post(f"{args.server}/api/v1/builds", json=body, headers=auth, timeout=600)
    elapsed = time.perf_counter() - t0
    resp.raise_for_status()
    plan = resp.json()
    print(
        json.dumps(
            {
                "configs": len(configs),
                "request_bytes": len(json.dumps(body)),
                "seconds": round(elapsed, 2),
                "planned": len(plan["packages"]),
                "cut_edges": len(plan["cut_edges"]),
                "critical_path": len(plan["critical_path"]),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
