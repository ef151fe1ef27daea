"""Generate the Python gRPC stubs for BuildKit from the pinned module's .proto files.

The .proto files come from the BuildKit module that tools/buildkit/go.mod pins (the same
one buildkitd is built from), so client and daemon always agree. Their imports name
``github.com/moby/buildkit/...``; we copy them under ``melange2/buildkit/_proto/`` and
rewrite those imports so the generated modules live inside our package. The output is
not committed (see .gitignore); ``make setup`` runs this script.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_PKG = ROOT / "src" / "melange2" / "buildkit" / "_proto"
PROTOS = [
    "api/services/control/control.proto",
    "api/types/worker.proto",
    "solver/pb/ops.proto",
    "sourcepolicy/pb/policy.proto",
]
PREFIX = "melange2/buildkit/_proto/"


def module_dir() -> Path:
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "github.com/moby/buildkit"],
        cwd=ROOT / "tools" / "buildkit",
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not out:
        subprocess.run(
            ["go", "mod", "download", "github.com/moby/buildkit"],
            cwd=ROOT / "tools" / "buildkit",
            check=True,
        )
        return module_dir()
    return Path(out)


def main() -> int:
    import grpc_tools
    from grpc_tools import protoc

    src = module_dir()
    digest = hashlib.sha256(str(src).encode())
    for rel in PROTOS:
        digest.update((src / rel).read_bytes())
    stamp = OUT_PKG / ".stamp"
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        for rel in PROTOS:
            text = (src / rel).read_text()
            text = re.sub(r'import "github\.com/moby/buildkit/', f'import "{PREFIX}', text)
            dest = tree / PREFIX / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
        if OUT_PKG.exists():
            shutil.rmtree(OUT_PKG)
        OUT_PKG.mkdir(parents=True)
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        import google.rpc

        googleapis = Path(next(iter(google.rpc.__path__))).parent.parent
        args = [
            "grpc_tools.protoc",
            f"-I{tree}",
            f"-I{googleapis}",
            f"-I{well_known}",
            f"--python_out={ROOT / 'src'}",
            f"--pyi_out={ROOT / 'src'}",
            f"--grpc_python_out={ROOT / 'src'}",
            f"--plugin=protoc-gen-mypy_grpc={Path(sys.executable).parent / 'protoc-gen-mypy_grpc'}",
            f"--mypy_grpc_out={ROOT / 'src'}",
            *[str(tree / PREFIX / rel) for rel in PROTOS],
        ]
        if protoc.main(args) != 0:
            print("gen_protos: protoc failed", file=sys.stderr)
            return 1
    for d in [OUT_PKG, *[p for p in OUT_PKG.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    stamp.write_text(digest.hexdigest())
    print(f"gen_protos: stubs for {len(PROTOS)} protos from {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
