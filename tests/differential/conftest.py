"""Fixtures of the differential suite: the oracle's inputs (cache, keys, bootstrap
repository) and a session memo of both sides' builds, so a case another case needs is
built once per side."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from melange2.apk.signing import generate_key
from melange2.farm.bootstrap import build_bootstrap_repo
from melange2.farm.local import FarmEnv
from melange2.farm.toolchain import default_cache_dir
from melange2.farm.upstream import fill_source_cache
from melange2.testenv.require import require_real_part
from tests.conftest import TOOLS, require_real_parts
from tests.differential.cases import Case, discover, needs_order
from tests.differential.oracle import Inputs, Outcome, file_digest, run_melange, run_ours, stage

MELANGE = TOOLS / "bin" / "melange"
#: outside any git repository (melange records the commit of the repository holding a
#: config, and a cached output must not depend on where HEAD is)
CACHE = Path(
    os.environ.get(
        "MELANGE2_DIFFERENTIAL_CACHE",
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "melange2-differential",
    )
)
#: the SOURCE_DATE_EPOCH of every local build of the suite
SDE = 1700000000


def _oracle_missing() -> list[str]:
    missing = []
    if not MELANGE.exists():
        missing.append(f"{MELANGE} (run `make setup`: scripts/build-tools.sh builds it)")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        missing.append("bwrap (Debian's bubblewrap: scripts/setup-system.sh installs it)")
    else:
        probe = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--unshare-user", "true"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            missing.append(f"a working bwrap ({probe.stderr.strip()})")
    return missing


def require_oracle() -> None:
    """Skip (or fail under REQUIRE_BUILDKIT=1) without melange and a working bwrap."""
    missing = _oracle_missing()
    if not missing:
        return
    require_real_part("run the melange oracle", missing)


@pytest.fixture(scope="session")
def differential_inputs() -> Inputs:
    require_oracle()
    require_real_parts()
    keys = CACHE / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    signing = keys / "differential.rsa"
    if not signing.exists():
        generate_key(signing, key_size=2048)
    debs = {
        arch: TOOLS / "debs" / f"busybox-static_{arch}.deb"
        for arch in ("amd64", "arm64")
        if (TOOLS / "debs" / f"busybox-static_{arch}.deb").exists()
    }
    # the toolchain (converted from Debian once per machine) and the examples' upstream
    # tarballs: both sides build zlib, GNU hello and minizip from the same repository
    # and source cache
    toolchain = default_cache_dir()
    bootstrap = build_bootstrap_repo(
        CACHE / "bootstrap", debs, key_size=2048, toolchain_cache=toolchain
    )
    problems = fill_source_cache(CACHE / "sources", toolchain / "sources")
    assert not problems, problems
    return Inputs(
        root=CACHE,
        melange=MELANGE,
        melange_digest=file_digest(MELANGE),
        bootstrap_repo=bootstrap.repo,
        bootstrap_key=bootstrap.public_key,
        signing_key=signing,
        source_cache=CACHE / "sources",
    )


@dataclass
class Builds:
    """Both sides' builds of the cases, memoised for the session."""

    inputs: Inputs
    farm: FarmEnv
    work: Path
    cases: dict[str, Case]
    done: dict[tuple[str, str, int], Outcome] = field(default_factory=dict)

    def staged(self, case: Case) -> Case:
        return stage(case, self.inputs.root)

    def melange(self, case: Case, *, sde: int = SDE, relative: bool = False) -> Outcome:
        memo = (case.name, "melange-relative" if relative else "melange", sde)
        if memo not in self.done:
            needs = [self.melange(self.cases[n], sde=sde, relative=relative) for n in case.needs]
            self.done[memo] = run_melange(
                self.staged(case), self.inputs, sde=sde, needs=needs, relative=relative
            )
        return self.done[memo]

    def ours(self, case: Case, *, sde: int = SDE) -> Outcome:
        memo = (case.name, "ours", sde)
        if memo not in self.done:
            needs = [self.ours(self.cases[n], sde=sde) for n in case.needs]
            self.done[memo] = run_ours(
                self.staged(case),
                self.inputs,
                sde=sde,
                needs=needs,
                out_dir=self.work / "ours" / f"{case.name}-{sde}",
                buildkit_addr=self.farm.buildkit_addrs[
                    len(self.done) % len(self.farm.buildkit_addrs)
                ],
                registry=self.farm.registry,
                cache_dir=self.work / "cache",
            )
        return self.done[memo]

    def chain(self, case: Case) -> list[Case]:
        return needs_order(case, self.cases)


@pytest.fixture(scope="session")
def builds(
    differential_inputs: Inputs, farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Builds]:
    yield Builds(
        inputs=differential_inputs,
        farm=farm,
        work=tmp_path_factory.mktemp("differential"),
        cases={c.name: c for c in discover()},
    )
