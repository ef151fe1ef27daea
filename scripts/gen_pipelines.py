"""Install the pipelines upstream melange ships, from the module tools/melange/go.mod pins.

``uses: fetch``, ``uses: split/dev`` ... mean what they mean to melange because they *are*
melange's files: ``pkg/build/pipelines/**/*.yaml`` of the pinned ``chainguard.dev/melange``
module (the same module ``.tools/bin/melange``, the differential suite's oracle, is built
from), copied unchanged into ``src/melange2/recipe/_melange_pipelines/``. That directory is
generated, not committed (see .gitignore), like the gRPC stubs; ``make setup`` runs this
script and the wheel packages the result. ``SOURCE`` in it names the module version.

    .venv/bin/python scripts/gen_pipelines.py [--check]

``--check`` only reports whether the installed copy is current and unchanged (exit 1 if
not).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools" / "melange"
MODULE = "chainguard.dev/melange"
OUT = ROOT / "src" / "melange2" / "recipe" / "_melange_pipelines"
STAMP = "SOURCE"


def _go_list(fmt: str) -> str:
    return subprocess.run(
        ["go", "list", "-m", "-f", fmt, MODULE],
        cwd=TOOLS,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def module_dir() -> Path:
    """Where the pinned module's source is (downloaded first if need be)."""
    found = _go_list("{{.Dir}}")
    if not found:
        subprocess.run(["go", "mod", "download", MODULE], cwd=TOOLS, check=True)
        found = _go_list("{{.Dir}}")
    return Path(found)


def pipeline_files(src: Path) -> dict[str, bytes]:
    """``uses`` path (``split/dev.yaml``) -> content, for every pipeline melange embeds."""
    base = src / "pkg" / "build" / "pipelines"
    if not base.is_dir():
        raise SystemExit(f"gen_pipelines: {base} does not exist (is {MODULE} pinned?)")
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*.yaml"))}


def stamp_text(version: str, files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for rel, data in files.items():
        digest.update(rel.encode() + b"\0" + data + b"\0")
    return f"{MODULE} {version}\n{len(files)} pipelines sha256:{digest.hexdigest()}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the installed copy")
    args = parser.parse_args()
    src = module_dir()
    version = _go_list("{{.Version}}")
    files = pipeline_files(src)
    want = stamp_text(version, files)
    current = (OUT / STAMP).read_text() if (OUT / STAMP).is_file() else ""
    installed = {p.relative_to(OUT).as_posix(): p.read_bytes() for p in sorted(OUT.rglob("*.yaml"))}
    if current == want and installed == files:
        return 0
    if args.check:
        print(f"gen_pipelines: {OUT} is not {MODULE} {version}'s pipelines", file=sys.stderr)
        return 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # Write beside, then swap: a reader never sees half a directory.
    staging = Path(tempfile.mkdtemp(prefix="._melange_pipelines.", dir=OUT.parent))
    try:
        for rel, data in files.items():
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        (staging / STAMP).write_text(want)
        old = OUT.with_name(OUT.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if OUT.exists():
            OUT.rename(old)
        staging.rename(OUT)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"setup: {len(files)} pipelines of {MODULE} {version} -> {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
