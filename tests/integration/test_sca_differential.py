"""SCA and linters against upstream melange v0.34.0: the same configs, built by
``.tools/bin/melange build --runner bubblewrap`` and by ``melange2 build`` on the real
farm, give the same ``depend``/``provides`` in every package's ``.PKGINFO``, the same
linter warnings per package, and fail (or not) on the same linters.

The source directory holds real ELF files copied from this machine (zlib, dpkg-deb,
gzip), the committed aarch64 library, a Go binary built here with cgo and
``GOEXPERIMENT=boringcrypto``, an ELF file cut short and one that is garbage after the
magic. Differences allowed: none in what is compared (melange also writes
``# vendored = ...`` comments, which apk ignores and which are not compared).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from melange2.apk import read_apk
from melange2.apk.signing import generate_key
from melange2.farm.local import FarmEnv
from tests.unit.sca.conftest import AARCH64_LIB

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent.parent
MELANGE = ROOT / ".tools" / "bin" / "melange"

GO_FIPS = """package main

import "os"

func main() { os.Stdout.WriteString("fips\\n") }
"""

SCA_CONFIG = """
package:
  name: scafid
  version: 2.4.1
  epoch: 3
  description: SCA fidelity
  copyright:
    - license: MIT
  dependencies:
    runtime:
      - zzz-declared
      - so:libz.so.1
      - busybox
      - busybox
    provides:
      - scafid-virtual=1
  checks:
    disabled:
      - usrmerge

environment:
  contents:
    packages:
      - busybox

pipeline:
  - runs: |
      inst() { cp "$2" "$3" && chmod "$1" "$3"; }
      d=${{targets.destdir}}
      mkdir -p $d/usr/lib/pkgconfig $d/usr/share/pkgconfig $d/usr/bin $d/sbin \\
        $d/usr/lib/scafid $d/etc/ld.so.conf.d $d/opt/scafid/lib/pkgconfig \\
        $d/usr/lib/python3.12/site-packages/scafid $d/usr/local/bin
      inst 644 libz.so.1.2.13 $d/usr/lib/libz.so.1.2.13
      ln -s libz.so.1.2.13 $d/usr/lib/libz.so.1
      inst 755 dpkg-deb $d/usr/bin/dpkg-deb
      inst 755 gzip $d/sbin/gzip
      inst 644 libattr.so.1.1.2501 $d/usr/lib/scafid/libattr.so.1.1.2501
      echo /usr/lib/scafid > $d/etc/ld.so.conf.d/scafid.conf
      inst 644 libz.so.1.2.13 $d/opt/scafid/lib/libz.so.1
      inst 644 scafid.pc $d/usr/lib/pkgconfig/scafid.pc
      inst 644 bad.pc $d/usr/share/pkgconfig/bad.pc
      inst 644 scafid.pc $d/opt/scafid/lib/pkgconfig/vendored.pc
      inst 755 perl-script $d/usr/bin/perl-script
      inst 644 bash-script $d/usr/bin/bash-script
      inst 755 sh-script $d/usr/bin/sh-script
      inst 755 tcl-script $d/usr/local/bin/tcl-script
      inst 755 env-alone $d/usr/bin/env-alone
      echo pass > $d/usr/lib/python3.12/site-packages/scafid/__init__.py
      inst 644 truncated.so $d/usr/lib/libtruncated.so.2
      inst 755 garbage $d/usr/bin/garbage

subpackages:
  - name: scafid-dev
    pipeline:
      - runs: |
          s=${{targets.subpkgdir}}
          mkdir -p $s/usr/lib $s/usr/sbin
          ln -s libz.so.1.2.13 $s/usr/lib/libz.so
          echo z > $s/usr/sbin/z
  - name: scafid-doc
    pipeline:
      - runs: |
          s=${{targets.subpkgdir}}
          mkdir -p $s/usr/share/man/man1 $s/usr/share/info
          echo man > $s/usr/share/man/man1/scafid.1
          echo info > $s/usr/share/info/scafid.info
  - name: scafid-tools
    options:
      no-commands: true
    dependencies:
      runtime:
        - python3
    pipeline:
      - runs: |
          inst() { cp "$2" "$3" && chmod "$1" "$3"; }
          s=${{targets.subpkgdir}}
          mkdir -p $s/usr/bin $s/usr/lib/python3.11/site-packages
          inst 755 bash-script $s/usr/bin/tool
          inst 755 dpkg-deb $s/usr/bin/dpkg-deb-copy
          echo x > $s/usr/lib/python3.11/site-packages/x.py
  - name: scafid-virtual
    options:
      no-provides: true
      no-depends: true
    pipeline:
      - runs: |
          inst() { cp "$2" "$3" && chmod "$1" "$3"; }
          mkdir -p ${{targets.subpkgdir}}/usr/bin
          inst 755 dpkg-deb ${{targets.subpkgdir}}/usr/bin/dpkg-deb-v
  - name: scafid-ruby
    pipeline:
      - runs: |
          s=${{targets.subpkgdir}}
          mkdir -p $s/usr/lib/ruby/gems/3.3.0/gems/foo-1.0
          echo 'puts 1' > $s/usr/lib/ruby/gems/3.3.0/gems/foo-1.0/foo.rb
  - name: scafid-go
    pipeline:
      - runs: |
          inst() { cp "$2" "$3" && chmod "$1" "$3"; }
          mkdir -p ${{targets.subpkgdir}}/usr/bin
          inst 755 gofips ${{targets.subpkgdir}}/usr/bin/gofips
"""

PC_FILE = """prefix=/usr
libdir=${prefix}/lib

Name: scafid
Description: scafid
Version: 2.4.1
Requires: zlib >= 1.2, libfoo
Requires.private: bar
Libs: -L${libdir} -lscafid
"""

# a required linter finds something in the main package: both refuse the build
VAREMPTY_CONFIG = """
package:
  name: lintfail
  version: 1.0.0
  description: a required linter fails
  copyright:
    - license: MIT
environment:
  contents:
    packages:
      - busybox
pipeline:
  - runs: |
      mkdir -p ${{targets.destdir}}/var/empty ${{targets.destdir}}/usr/bin
      echo x > ${{targets.destdir}}/var/empty/leftover
      echo x > ${{targets.destdir}}/usr/bin/fine
"""

# melange v0.34.0 carries a package's disabled required linters over to the next
# package; with four names the freed slot stays empty: `unknown linter: ""`
CARRY_OVER_CONFIG = """
package:
  name: carryover
  version: 1.0.0
  description: four disabled checks
  copyright:
    - license: MIT
  checks:
    disabled:
      - usrmerge
      - empty
      - documentation
      - strip
environment:
  contents:
    packages:
      - busybox
pipeline:
  - runs: |
      mkdir -p ${{targets.destdir}}/bin
      echo x > ${{targets.destdir}}/bin/x
subpackages:
  - name: carryover-sub
    pipeline:
      - runs: |
          mkdir -p ${{targets.subpkgdir}}/usr/share/carryover
          echo y > ${{targets.subpkgdir}}/usr/share/carryover/y
"""


@dataclass(frozen=True)
class Outcome:
    ok: bool
    output: str
    packages: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    #: (package, linter) of every warning or failure logged, as often as logged
    findings: list[tuple[str, str]]


@pytest.fixture(scope="module")
def tools() -> None:
    missing = [str(p) for p in (MELANGE,) if not p.exists()]
    missing += [b for b in ("bwrap", "go") if shutil.which(b) is None]
    if missing:
        pytest.fail(f"the differential suite needs {', '.join(missing)} (run `make setup`)")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "sca.rsa"
    generate_key(path, key_size=2048)
    return path


@pytest.fixture(scope="module")
def gofips(tmp_path_factory: pytest.TempPathFactory, tools: None) -> Path:
    """A static Go binary recorded as built with cgo and boringcrypto (no C code: no C
    compiler needed); Go's build cache makes it quick after the first time."""
    work = tmp_path_factory.mktemp("gofips")
    (work / "main.go").write_text(GO_FIPS)
    (work / "go.mod").write_text("module gofips\n\ngo 1.22\n")
    env = {
        **os.environ,
        "GOEXPERIMENT": "boringcrypto",
        "CGO_ENABLED": "1",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=mod",
    }
    subprocess.run(
        ["go", "build", "-trimpath", "-o", "gofips", "."],
        cwd=work,
        env=env,
        check=True,
        timeout=600,
    )
    return work / "gofips"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, gofips: Path) -> Path:
    src = tmp_path_factory.mktemp("sca-src")
    libz = sorted(
        p for p in Path("/usr/lib/x86_64-linux-gnu").glob("libz.so.1.*") if not p.is_symlink()
    )[-1]
    shutil.copyfile(libz, src / "libz.so.1.2.13")
    shutil.copyfile("/usr/bin/dpkg-deb", src / "dpkg-deb")
    shutil.copyfile("/usr/bin/gzip", src / "gzip")
    shutil.copyfile(AARCH64_LIB, src / AARCH64_LIB.name)
    shutil.copyfile(gofips, src / "gofips")
    (src / "truncated.so").write_bytes(libz.read_bytes()[:3000])
    (src / "garbage").write_bytes(b"\x7fELF" + bytes(range(256)) * 8)
    (src / "scafid.pc").write_text(PC_FILE)
    (src / "bad.pc").write_text("Name: bad\nRequires: ${missing}\n")
    (src / "perl-script").write_text("#!/usr/bin/env perl\nprint 1;\n")
    (src / "bash-script").write_text("#!/bin/bash\necho\n")
    (src / "sh-script").write_text("#!/bin/sh\necho\n")
    (src / "tcl-script").write_text("#!/usr/bin/env -S tclsh -x\n")
    (src / "env-alone").write_text("#!/usr/bin/env\n")
    return src


def _packages(out: Path) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    found = {}
    for apk in sorted((out / "x86_64").glob("*.apk")):
        info = read_apk(apk).info
        found[info.name] = (info.depends, info.provides)
    return found


_MELANGE_LINTING = re.compile(r"linting apk: (\S+)$")
_MELANGE_FINDING = re.compile(r" WARN \[([a-z/]+)\] ")
_OUR_LINTING = re.compile(r"^linting (\S+):$")
_OUR_FINDING = re.compile(r"^  \[([a-z/]+)\] ")


def _findings(
    text: str, linting: re.Pattern[str], finding: re.Pattern[str]
) -> list[tuple[str, str]]:
    current = ""
    out = []
    for line in text.splitlines():
        if m := linting.search(line):
            current = m[1]
        elif (m := finding.search(line)) and current:
            out.append((current, m[1]))
    return sorted(out)


def build_with_melange(config: Path, src: Path, out: Path, farm: FarmEnv, key: Path) -> Outcome:
    argv = [
        str(MELANGE),
        "build",
        str(config),
        "--runner",
        "bubblewrap",
        "--arch",
        "x86_64",
        "--repository-append",
        farm.extra["BOOTSTRAP_REPO"],
        "--keyring-append",
        farm.extra["BOOTSTRAP_KEY"],
        "--source-dir",
        str(src),
        "--out-dir",
        str(out),
        "--signing-key",
        str(key),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=config.parent)
    text = run.stdout + run.stderr
    return Outcome(
        ok=run.returncode == 0,
        output=text,
        packages=_packages(out) if run.returncode == 0 else {},
        findings=_findings(text, _MELANGE_LINTING, _MELANGE_FINDING),
    )


def build_with_melange2(config: Path, src: Path, out: Path, farm: FarmEnv, key: Path) -> Outcome:
    log = out / "build.log"
    argv = [
        sys.executable,
        "-m",
        "melange2",
        "build",
        str(config),
        "--source-dir",
        str(src),
        "--out-dir",
        str(out),
        "--buildkit-addr",
        farm.buildkit_addrs[0],
        "--registry",
        farm.registry,
        "--repository-append",
        farm.extra["BOOTSTRAP_REPO"],
        "--keyring-append",
        farm.extra["BOOTSTRAP_KEY"],
        "--cache-dir",
        str(out / ".cache"),
        "--signing-key",
        str(key),
        "--log-file",
        str(log),
        "--plain",
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    text = log.read_text() if log.exists() else ""
    return Outcome(
        ok=run.returncode == 0,
        output=run.stdout + run.stderr + text,
        packages=_packages(out) if run.returncode == 0 else {},
        findings=_findings(text, _OUR_LINTING, _OUR_FINDING),
    )


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("sca-configs")
    for name, text in (
        ("scafid", SCA_CONFIG),
        ("lintfail", VAREMPTY_CONFIG),
        ("carryover", CARRY_OVER_CONFIG),
    ):
        (root / f"{name}.yaml").write_text(textwrap.dedent(text).lstrip())
    yield root


def both(
    name: str, configs: Path, sources: Path, farm: FarmEnv, key: Path, tmp_path: Path
) -> tuple[Outcome, Outcome]:
    config = configs / f"{name}.yaml"
    theirs = build_with_melange(config, sources, tmp_path / "melange", farm, key)
    ours = build_with_melange2(config, sources, tmp_path / "melange2", farm, key)
    return theirs, ours


def test_automatic_dependencies_and_warnings_are_melanges(
    farm: FarmEnv, configs: Path, sources: Path, key: Path, tmp_path: Path
) -> None:
    theirs, ours = both("scafid", configs, sources, farm, key, tmp_path)
    assert theirs.ok, theirs.output[-3000:]
    assert ours.ok, ours.output[-3000:]
    assert set(ours.packages) == set(theirs.packages)
    for name in sorted(theirs.packages):
        assert ours.packages[name] == theirs.packages[name], name
    assert ours.findings == theirs.findings
    # what the comparison covers, so that it cannot pass on empty packages
    depends, provides = theirs.packages["scafid"]
    assert {"so:libc.so.6", "cmd:perl", "cmd:bash", "python-3.12-base", "pc:zlib"} <= set(depends)
    assert {"so:libz.so.1=1", "so:libattr.so.1=1", "cmd:gzip=2.4.1-r3"} <= set(provides)
    assert theirs.packages["scafid-dev"][0] == ("so:libz.so.1",)
    assert theirs.packages["scafid-go"][0] == ("openssl-config-fipshardened", "so:libcrypto.so.3")
    assert ("scafid", "usrmerge") in theirs.findings  # disabled: a warning
    assert ("scafid-dev", "usrmerge") not in theirs.findings  # carried over: not run at all
    # the warnings melange does not give: an unreadable ELF file and a foreign one
    for path in ("usr/lib/libtruncated.so.2", "usr/bin/garbage", "usr/lib/scafid/libattr"):
        assert path in ours.output


def test_a_required_linter_fails_both(
    farm: FarmEnv, configs: Path, sources: Path, key: Path, tmp_path: Path
) -> None:
    theirs, ours = both("lintfail", configs, sources, farm, key, tmp_path)
    assert not theirs.ok and not ours.ok
    assert 'linter "varempty" failed' in theirs.output
    assert 'linter "varempty" failed for lintfail' in ours.output
    assert "var/empty/leftover" in ours.output
    assert ours.findings == theirs.findings == [("lintfail", "varempty")]
    assert not list((tmp_path / "melange2" / "x86_64").glob("*.apk"))


def test_disabled_checks_carry_over_as_in_melange(
    farm: FarmEnv, configs: Path, sources: Path, key: Path, tmp_path: Path
) -> None:
    theirs, ours = both("carryover", configs, sources, farm, key, tmp_path)
    assert not theirs.ok and not ours.ok
    expected = 'unable to lint package carryover-sub: unknown linter: ""'
    assert expected in theirs.output
    assert expected in ours.output
    assert ours.findings == theirs.findings
