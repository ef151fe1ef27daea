"""Build a case both ways: with upstream melange (the oracle, cached) and with melange2.

Both sides get the same inputs: the config at the same path (a staged copy outside any
git repository, so that neither side finds a commit), the same sources, the same
bootstrap repository and keys, the same signing key and the same SOURCE_DATE_EPOCH.

melange runs offline with ``--runner bubblewrap``. Its outputs are cached under
``<cache>/oracle/<key>/`` where the key digests the melange binary, the case's files, the
bootstrap repository, the signing key, the architecture, SOURCE_DATE_EPOCH, how melange
is invoked (:data:`ORACLE_VERSION`) and the keys of the cases it needs: a second run
does not rebuild the oracle side. Ours is built every time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.differential.cases import Case

#: bump when the way melange is invoked changes: every cached oracle output is rebuilt
ORACLE_VERSION = "1"
MELANGE_TIMEOUT = 600


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """What every build of the suite shares."""

    #: the cache root (``$MELANGE2_DIFFERENTIAL_CACHE`` or ``.cache/differential``)
    root: Path
    melange: Path
    melange_digest: str
    bootstrap_repo: Path
    bootstrap_key: Path
    signing_key: Path
    #: melange's source cache (``--cache-dir`` of both sides): the upstream tarballs of
    #: examples/, ``sha256:<hex>``
    source_cache: Path

    @property
    def signing_pub(self) -> Path:
        return self.signing_key.with_name(self.signing_key.name + ".pub")

    def fingerprint(self) -> str:
        """Everything shared that changes melange's output."""
        h = hashlib.sha256()
        h.update(f"oracle {ORACLE_VERSION}\0melange {self.melange_digest}\0".encode())
        for path in (self.bootstrap_key, self.signing_pub):
            h.update(path.read_bytes())
        for index in sorted(self.bootstrap_repo.glob("*/APKINDEX.tar.gz")):
            h.update(index.parent.name.encode() + hashlib.sha256(index.read_bytes()).digest())
        return h.hexdigest()


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One side's build of one case."""

    case: str
    returncode: int
    #: ``<out_dir>/<arch>/*.apk`` and ``APKINDEX.tar.gz``
    out_dir: Path
    log: str
    #: the oracle's cache key ("" for ours)
    key: str = ""
    cached: bool = False

    def apks(self, arch: str) -> dict[str, Path]:
        return {p.name: p for p in sorted((self.out_dir / arch).glob("*.apk"))}


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def stage(case: Case, root: Path) -> Case:
    """Copy the case to ``<root>/stage/<name>/`` (a stable path outside git) and return
    the case as staged; an up-to-date copy is kept."""
    target = root / "stage" / case.name
    stamp = target / ".differential-digest"
    digest = case.digest()
    if not (stamp.exists() and stamp.read_text() == digest):
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(case.directory, target, symlinks=True)
        stamp.write_text(digest)
        # melange copies the source directory into its workspace: an empty one when the
        # case has none, the same for both sides
        (target / ".no-sources").mkdir(exist_ok=True)
    return dataclasses.replace(case, directory=target, config=target / case.config.name)


def _source_dir(case: Case) -> Path:
    return case.source_dir or case.directory / ".no-sources"


def oracle_key(
    case: Case, inputs: Inputs, *, sde: int, needs: list[Outcome], relative: bool = False
) -> str:
    doc = {
        "relative": relative,
        "inputs": inputs.fingerprint(),
        "case": case.name,
        "files": case.digest(),
        "arch": case.arch,
        "sde": sde,
        "needs": [n.key for n in needs],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def run_melange(
    case: Case, inputs: Inputs, *, sde: int, needs: list[Outcome], relative: bool = False
) -> Outcome:
    """melange's build of a staged ``case`` (from the cache when there). With
    ``relative`` the config is given by its file name from its directory, as a server
    build records it (``<name>.yaml``)."""
    key = oracle_key(case, inputs, sde=sde, needs=needs, relative=relative)
    done = inputs.root / "oracle" / key
    result = done / "result.json"
    if result.exists():
        meta = json.loads(result.read_text())
        return Outcome(
            case=case.name,
            returncode=meta["returncode"],
            out_dir=done / "out",
            log=(done / "melange.log").read_text(errors="replace"),
            key=key,
            cached=True,
        )
    (inputs.root / "oracle").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=inputs.root / "oracle", prefix=f".{key}-") as tmp:
        work = Path(tmp)
        out = work / "out"
        argv = [
            str(inputs.melange),
            "build",
            case.config.name if relative else str(case.config),
            "--runner",
            "bubblewrap",
            "--arch",
            case.arch,
            "--repository-append",
            str(inputs.bootstrap_repo),
            "--keyring-append",
            str(inputs.bootstrap_key),
            "--signing-key",
            str(inputs.signing_key),
            "--source-dir",
            str(_source_dir(case)),
            "--out-dir",
            str(out),
            "--cache-dir",
            str(inputs.source_cache),
            "--apk-cache-dir",
            str(inputs.root / "apk-cache"),
        ]
        if case.pipeline_dir is not None:
            argv += ["--pipeline-dir", str(case.pipeline_dir)]
        for need in needs:
            argv += [
                "--repository-append",
                str(need.out_dir),
                "--keyring-append",
                str(inputs.signing_pub),
            ]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(sde)}
        proc = subprocess.run(
            argv,
            cwd=case.directory if relative else work,
            env=env,
            capture_output=True,
            text=True,
            timeout=MELANGE_TIMEOUT,
        )
        (work / "melange.log").write_text("$ " + " ".join(argv) + "\n" + proc.stdout + proc.stderr)
        out.mkdir(exist_ok=True)
        (work / "result.json").write_text(json.dumps({"returncode": proc.returncode}))
        work.rename(done)
    return run_melange(case, inputs, sde=sde, needs=needs, relative=relative)


def run_ours(
    case: Case,
    inputs: Inputs,
    *,
    sde: int,
    needs: list[Outcome],
    out_dir: Path,
    buildkit_addr: str,
    registry: str,
    cache_dir: Path,
) -> Outcome:
    """``melange2 build`` of a staged ``case`` on the real farm (never cached)."""
    argv = [
        sys.executable,
        "-m",
        "melange2",
        "build",
        str(case.config),
        "--arch",
        case.arch,
        "--repository-append",
        str(inputs.bootstrap_repo),
        "--keyring-append",
        str(inputs.bootstrap_key),
        "--signing-key",
        str(inputs.signing_key),
        "--source-dir",
        str(_source_dir(case)),
        "--out-dir",
        str(out_dir),
        "--buildkit-addr",
        buildkit_addr,
        "--registry",
        registry,
        "--cache-dir",
        str(inputs.source_cache),
        "--apk-cache-dir",
        str(cache_dir),
        "--plain",
    ]
    if case.pipeline_dir is not None:
        argv += ["--pipeline-dir", str(case.pipeline_dir)]
    for need in needs:
        argv += [
            "--repository-append",
            str(need.out_dir),
            "--keyring-append",
            str(inputs.signing_pub),
        ]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(sde)}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=MELANGE_TIMEOUT)
    return Outcome(
        case=case.name,
        returncode=proc.returncode,
        out_dir=out_dir,
        log="$ " + " ".join(argv) + "\n" + proc.stdout + proc.stderr,
    )
