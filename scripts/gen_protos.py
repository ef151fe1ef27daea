"""Generate the Python gRPC stubs for BuildKit from the pinned module's .proto files.

The .proto files come from the BuildKit module that tools/buildkit/go.mod pins (the same
one buildkitd is built from), so client and daemon always agree, and from the fsutil module
that BuildKit pins in turn (the file-transfer packets of the session's file sync). Their
imports name ``github.com/moby/buildkit/...`` and ``github.com/tonistiigi/fsutil/...``; we
copy them under ``melange2/buildkit/_proto/`` (fsutil's under ``_proto/fsutil/``) and
rewrite those imports so the generated modules live inside our package. fsutil's protos
carry vtprotobuf options (a Go code-generation hint, no wire meaning); they are dropped.
The output is not committed (see .gitignore); ``make setup`` runs this script.
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
    # the session: secrets provider and file sync (local sources, local exporter)
    "session/secrets/secrets.proto",
    "session/filesync/filesync.proto",
]
FSUTIL_PROTOS = ["types/stat.proto", "types/wire.proto"]
PREFIX = "melange2/buildkit/_proto/"
FSUTIL_PREFIX = PREFIX + "fsutil/"
BUILDKIT = "github.com/moby/buildkit"
FSUTIL = "github.com/tonistiigi/fsutil"
_VTPROTO = re.compile(
    r'^import "github\.com/planetscale/vtprotobuf/vtproto/ext\.proto";\n'
    r"|^\s*option \(vtproto\.[a-z_]+\) = [a-z]+;\n",
    re.M,
)


def _rewrite(text: str) -> str:
    text = re.sub(r'import "github\.com/moby/buildkit/', f'import "{PREFIX}', text)
    text = re.sub(r'import "github\.com/tonistiigi/fsutil/', f'import "{FSUTIL_PREFIX}', text)
    return _VTPROTO.sub("", text)


def module_dir(module: str = BUILDKIT) -> Path:
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", module],
        cwd=ROOT / "tools" / "buildkit",
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not out:
        subprocess.run(
            ["go", "mod", "download", module], cwd=ROOT / "tools" / "buildkit", check=True
        )
        return module_dir(module)
    return Path(out)


def main() -> int:
    import grpc_tools
    from grpc_tools import protoc

    src = module_dir()
    fsutil = module_dir(FSUTIL)
    sources = [(src / rel, PREFIX + rel) for rel in PROTOS]
    sources += [(fsutil / rel, FSUTIL_PREFIX + rel) for rel in FSUTIL_PROTOS]
    digest = hashlib.sha256(f"{src}\n{fsutil}".encode())
    for path, _ in sources:
        digest.update(path.read_bytes())
    stamp = OUT_PKG / ".stamp"
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        for path, rel in sources:
            dest = tree / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(_rewrite(path.read_text()))
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
            *[str(tree / rel) for _, rel in sources],
        ]
        if protoc.main(args) != 0:
            print("gen_protos: protoc failed", file=sys.stderr)
            return 1
    for d in [OUT_PKG, *[p for p in OUT_PKG.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    stamp.write_text(digest.hexdigest())
    print(f"gen_protos: stubs for {len(sources)} protos from {src} and {fsutil}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
