"""SCA and linters against melange, beyond what the package comparison shows.

The static cases (``configs/sca``, ``configs/lint-required``, ``configs/lint-carryover``)
run in :mod:`test_differential` like every case. This module adds:

- a case made here, from this machine: its sources are the host's real zlib and
  dpkg-deb (copied at test time) and a Go binary built here with cgo and
  ``GOEXPERIMENT=boringcrypto`` (melange's FIPS check), compared package by package
  like every case;
- the linter warnings, per package and as often as melange logs them, of the cases
  above, compared from both sides' logs (the packages cannot show them);
- the failing cases' reasons: melange's error line is ours.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from melange2.apk import read_apk
from tests.differential.cases import CONFIGS, Case, _load_case
from tests.differential.conftest import Builds
from tests.differential.judge import NOISE, assert_same
from tests.differential.oracle import Outcome

pytestmark = [pytest.mark.differential, pytest.mark.e2e]

GO_FIPS = 'package main\n\nimport "os"\n\nfunc main() { os.Stdout.WriteString("fips\\n") }\n'

HOST_CONFIG = """\
# A case made at test time (tests/differential/test_sca.py): real ELF files of this host.
package:
  name: sca-host
  version: 1.3.0
  epoch: 1
  description: SCA on the host's ELF files
  copyright:
    - license: MIT
environment:
  contents:
    packages:
      - busybox
pipeline:
  - runs: |
      d=${{targets.destdir}}
      mkdir -p $d/usr/lib $d/usr/bin
      cp libz.so.1.x $d/usr/lib/libz.so.1.x
      ln -s libz.so.1.x $d/usr/lib/libz.so.1
      cp dpkg-deb $d/usr/bin/dpkg-deb
      chmod 755 $d/usr/bin/dpkg-deb
subpackages:
  - name: sca-host-dev
    pipeline:
      - runs: |
          mkdir -p ${{targets.subpkgdir}}/usr/lib
          ln -s libz.so.1.x ${{targets.subpkgdir}}/usr/lib/libz.so
  - name: sca-host-go
    pipeline:
      - runs: |
          mkdir -p ${{targets.subpkgdir}}/usr/bin
          cp gofips ${{targets.subpkgdir}}/usr/bin/gofips
          chmod 755 ${{targets.subpkgdir}}/usr/bin/gofips
"""


@pytest.fixture(scope="module")
def host_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    if shutil.which("go") is None:
        pytest.fail("go is needed to build the Go case (run `make setup`)")
    root = tmp_path_factory.mktemp("sca-host-case") / "sca-host"
    src = root / "sca-host"
    src.mkdir(parents=True)
    (root / "sca-host.yaml").write_text(HOST_CONFIG)
    libz = sorted(
        p for p in Path("/usr/lib/x86_64-linux-gnu").glob("libz.so.1.*") if not p.is_symlink()
    )[-1]
    shutil.copyfile(libz, src / "libz.so.1.x")
    shutil.copyfile("/usr/bin/dpkg-deb", src / "dpkg-deb")
    go = tmp_path_factory.mktemp("gofips")
    (go / "main.go").write_text(GO_FIPS)
    (go / "go.mod").write_text("module gofips\n\ngo 1.22\n")
    # no C code: cgo is recorded as enabled without a C compiler being run
    env = {**os.environ, "GOEXPERIMENT": "boringcrypto", "CGO_ENABLED": "1", "GOTOOLCHAIN": "local"}
    subprocess.run(
        ["go", "build", "-trimpath", "-o", str(src / "gofips"), "."],
        cwd=go,
        env=env,
        check=True,
        timeout=600,
    )
    return _load_case(root, "sca-host")


def test_the_hosts_elf_files_and_a_go_fips_binary(builds: Builds, host_case: Case) -> None:
    melange = builds.melange(host_case)
    ours = builds.ours(host_case)
    assert_same(host_case, melange, ours, noise=NOISE)
    # what the comparison covered, so that it cannot pass on empty packages
    infos = {i.name: i for i in (read_apk(p).info for p in melange.apks("x86_64").values())}
    assert "so:libz.so.1=1" in infos["sca-host"].provides
    assert {"so:libc.so.6", "so:ld-linux-x86-64.so.2"} <= set(infos["sca-host"].depends)
    assert infos["sca-host-dev"].depends == ("so:libz.so.1",)
    assert infos["sca-host-go"].depends == ("openssl-config-fipshardened", "so:libcrypto.so.3")


_THEIR_PACKAGE = re.compile(r"linting apk: (\S+)$")
_THEIR_FINDING = re.compile(r" WARN \[([a-z/]+)\] ")
_OUR_PACKAGE = re.compile(r"^linting (\S+):$")
_OUR_FINDING = re.compile(r"^  \[([a-z/]+)\] ")


def _findings(
    text: str, package: re.Pattern[str], finding: re.Pattern[str]
) -> list[tuple[str, str]]:
    current, out = "", []
    for line in text.splitlines():
        if m := package.search(line):
            current = m[1]
        elif (m := finding.search(line)) and current:
            out.append((current, m[1]))
    return sorted(out)


def _our_log(outcome: Outcome, case: Case) -> str:
    log = outcome.out_dir / "logs" / f"{case.package}-{case.arch}.log"
    return log.read_text(errors="replace")


def lint_findings(
    builds: Builds, case: Case
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    melange, ours = builds.melange(case), builds.ours(case)
    theirs = _findings(melange.log, _THEIR_PACKAGE, _THEIR_FINDING)
    mine = _findings(_our_log(ours, case), _OUR_PACKAGE, _OUR_FINDING)
    return theirs, mine


def _case(builds: Builds, name: str) -> Case:
    assert (CONFIGS / name).is_dir()
    return builds.cases[name]


def test_linter_warnings_per_package_are_melanges(builds: Builds, host_case: Case) -> None:
    theirs, mine = lint_findings(builds, _case(builds, "sca"))
    assert mine == theirs
    assert ("sca", "usrmerge") in theirs  # disabled: a warning, not a failure
    assert ("sca-dev", "usrmerge") not in theirs  # carried over: not run at all
    assert theirs.count(("sca", "lddcheck")) == 1
    host_theirs, host_mine = lint_findings(builds, host_case)
    assert host_mine == host_theirs and host_theirs


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("lint-required", 'unable to lint package lint-required: linter "varempty" failed'),
        ("lint-carryover", 'unable to lint package lint-carryover-sub: unknown linter: ""'),
    ],
)
def test_failing_cases_fail_for_melanges_reason(builds: Builds, name: str, reason: str) -> None:
    case = _case(builds, name)
    melange, ours = builds.melange(case), builds.ours(case)
    assert melange.returncode != 0 and ours.returncode != 0
    assert reason in melange.log
    assert reason in ours.log
    theirs, mine = lint_findings(builds, case)
    assert mine == theirs
