"""How long the ``melange2`` command line takes to start and answer (issue 19, item 6).

Each command runs ``--runs`` times as a fresh process (the console script of the venv);
reported: the median wall time and the median CPU time (user + system of the child,
less disturbed by other load on a shared machine than wall time), in three modes:

* ``warm``: after one untimed run, which leaves every module's bytecode in
  ``__pycache__`` (as after ``pip install``, or any first run) and the files in the page
  cache;
* ``cold``: the same bytecode, but before each run the page cache is emptied of this
  checkout's and the venv's files only (``posix_fadvise(DONTNEED)`` on each of them:
  nothing else on the machine is evicted), so every module is read from disk again;
* ``source``: no bytecode at all (``PYTHONDONTWRITEBYTECODE=1`` and an empty
  ``PYTHONPYCACHEPREFIX``): every module compiled from source on every run, the worst
  case (and what this project's CI environment does, which sets
  ``PYTHONDONTWRITEBYTECODE``).

``remote status`` asks a stub server on loopback (a thread of this program answering
``GET /api/v1/builds/<id>`` with a canned build of 20 packages), so what is measured is the
CLI: its imports, one HTTP round trip on loopback, parsing and rendering.

With ``--instructions``, each command also runs once under valgrind (``callgrind``) for
the number of instructions it executes: a count that other load on the machine does not
change, to compare before and after on a busy machine.

Also reported, for each command: the heavy modules (grpc, protobuf, fastapi, sqlalchemy,
cryptography, rich, httpx, pydantic, ruamel.yaml) it imports, from ``-X importtime``.
The goals: ``melange2 --help`` under 0.3 s, ``melange2 remote status <id>`` under 0.5 s.

    .venv/bin/python bench/cli_bench.py --runs 15 --out cli.json
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
MELANGE2 = VENV / "bin" / "melange2"
HEAVY = (
    "grpc",
    "google.protobuf",
    "fastapi",
    "sqlalchemy",
    "cryptography",
    "rich",
    "httpx",
    "pydantic",
    "ruamel.yaml",
)
GOALS = {"help": 0.3, "remote status": 0.5}
BUILD_ID = "bld-0123456789abcdef"


def canned_build(packages: int = 20) -> dict[str, Any]:
    """A finished build as the server's ``GET /api/v1/builds/<id>`` returns it."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return {
        "id": BUILD_ID,
        "status": "success",
        "spec": {"arch": "x86_64", "mode": "dag"},
        "created_at": start.isoformat(),
        "started_at": start.isoformat(),
        "finished_at": (start + timedelta(seconds=60 * packages)).isoformat(),
        "packages": [
            {
                "name": f"pkg-{i:02d}",
                "status": "success",
                "config_yaml": "",
                "dependencies": [f"pkg-{i - 1:02d}"] if i else [],
                "started_at": (start + timedelta(seconds=60 * i)).isoformat(),
                "finished_at": (start + timedelta(seconds=60 * i + 59)).isoformat(),
                "error": "",
                "log_path": f"/logs/pkg-{i:02d}",
                "output_path": f"/out/pkg-{i:02d}",
                "backend": {"addr": "tcp://daemon:1234", "arch": "x86_64", "labels": {}},
                "reason": "",
                "attempts": [],
                "duration": 59.0,
                "arch": "x86_64",
            }
            for i in range(packages)
        ],
    }


@contextlib.contextmanager
def stub_server() -> Iterator[str]:
    body = json.dumps(canned_build()).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") != f"/api/v1/builds/{BUILD_ID}":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def evict_page_cache() -> int:
    """Drop this checkout's and the venv's files from the page cache; how many files."""
    count = 0
    for base in (ROOT / "src", VENV):
        for path in base.rglob("*"):
            if path.suffix not in (".py", ".pyc", ".so", ".pth") and path.name != "melange2":
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                count += 1
            finally:
                os.close(fd)
    return count


def timed(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv`` (which must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed: {proc.stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def heavy_imports(argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """The heavy modules ``argv`` imports (``-X importtime`` names every module)."""
    proc = subprocess.run(
        [str(VENV / "bin" / "python"), "-X", "importtime", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    return [h for h in HEAVY if h in names]


def instructions(argv: Sequence[str], env: dict[str, str]) -> int | None:
    """Instructions executed by one run of ``argv`` under callgrind (None: no valgrind)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    proc = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"callgrind of {shlex.join(argv)} failed: {proc.stderr[-2000:]}")
    return int(found.group(1))


def measure(
    name: str, argv: Sequence[str], runs: int, *, count_instructions: bool = False
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(NO_COLOR="1", COLUMNS="120")
    timed(argv, env)  # warm-up: writes the bytecode
    warm = [timed(argv, env) for _ in range(runs)]
    cold = []
    for _ in range(runs):
        evict_page_cache()
        cold.append(timed(argv, env))
    with tempfile.TemporaryDirectory() as empty:
        no_bytecode = {**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": empty}
        source = [timed(argv, no_bytecode) for _ in range(runs)]
    script = [str(MELANGE2), *argv[1:]]
    return {
        "command": name,
        "argv": shlex.join(["melange2", *argv[1:]]),
        "warm_wall_s": round(statistics.median(w for w, _ in warm), 3),
        "warm_cpu_s": round(statistics.median(c for _, c in warm), 3),
        "cold_wall_s": round(statistics.median(w for w, _ in cold), 3),
        "cold_cpu_s": round(statistics.median(c for _, c in cold), 3),
        "source_wall_s": round(statistics.median(w for w, _ in source), 3),
        "source_cpu_s": round(statistics.median(c for _, c in source), 3),
        "goal_s": GOALS.get(name),
        "heavy_imports": heavy_imports(script, env),
        "instructions": instructions(argv, env) if count_instructions else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command and mode")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions (valgrind)"
    )
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    results = []
    with stub_server() as url:
        commands = {
            "help": [str(MELANGE2), "--help"],
            "remote --help": [str(MELANGE2), "remote", "--help"],
            "remote status": [str(MELANGE2), "remote", "status", BUILD_ID, "--server", url],
        }
        for name, command in commands.items():
            results.append(measure(name, command, args.runs, count_instructions=args.instructions))
    load = os.getloadavg()
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}",
        "load_avg_1m": round(load[0], 2),
        "runs": args.runs,
        "command": shlex.join(["bench/cli_bench.py", *(sys.argv[1:] if argv is None else argv)]),
        "results": results,
    }
    for r in results:
        r["argv"] = r["argv"].replace(url, "URL")
    width = max(len(r["argv"]) for r in results)
    print(
        f"{'command':<{width}}  warm wall  warm cpu  cold wall  cold cpu  source wall"
        "  source cpu  goal   instructions  heavy imports"
    )
    for r in results:
        goal = f"{r['goal_s']:.1f} s" if r["goal_s"] else "-"
        print(
            f"{r['argv']:<{width}}  {r['warm_wall_s']:>7.3f} s"
            f"  {r['warm_cpu_s']:>6.3f} s  {r['cold_wall_s']:>7.3f} s  {r['cold_cpu_s']:>6.3f} s"
            f"  {r['source_wall_s']:>9.3f} s  {r['source_cpu_s']:>8.3f} s"
            f"  {goal:<5}  {r['instructions'] or 0:>12,}  {', '.join(r['heavy_imports']) or '-'}"
        )
    print(f"median of {args.runs} runs each; load average {load[0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
