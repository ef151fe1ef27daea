"""The packaging step without BuildKit: a melange-out tree in, linted and analysed, APKs
out with melange's depend/provides, or LintFailed before any APK is written."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from melange2.apk import read_apk
from melange2.build.executor import BuildOptions, prepare, write_packages
from melange2.errors import LintFailed
from melange2.recipe import RecipeFieldError
from tests.unit.sca.conftest import _host_libz, make_tree

CONFIG = """
package:
  name: demo
  version: 1.0.0
  epoch: 2
  description: demo
  copyright:
    - license: MIT
  dependencies:
    runtime:
      - zlib-declared
      - so:libz.so.1
  checks:
    disabled:
      - lddcheck
environment:
  contents:
    packages:
      - busybox
pipeline:
  - runs: "true"
subpackages:
  - name: demo-dev
    pipeline:
      - runs: "true"
"""


def options(tmp_path: Path, text: str) -> BuildOptions:
    config = tmp_path / "demo.yaml"
    config.write_text(textwrap.dedent(text))
    return BuildOptions(
        config=config,
        arch="x86_64",
        buildkit_addr="unix:///nowhere",
        registry="registry.invalid",
        out_dir=tmp_path / "out",
        cache_dir=tmp_path / "cache",
    )


def test_packages_carry_what_sca_found(tmp_path: Path) -> None:
    libz, dpkg_deb = _host_libz(), Path("/usr/bin/dpkg-deb")
    opts = options(tmp_path, CONFIG)
    config, _ = prepare(opts)
    tree = tmp_path / "melange-out"
    make_tree(
        tree / "demo",
        {
            "usr/lib/libz.so.1.2.13": libz,
            "usr/lib/libz.so.1": ("link", "libz.so.1.2.13"),
            "usr/bin/dpkg-deb": ("exec", dpkg_deb),
        },
    )
    make_tree(tree / "demo-dev", {"usr/lib/libz.so": ("link", "libz.so.1.2.13")})
    lines: list[str] = []
    built, _ = write_packages(config, tree, opts, None, log=lines.append)
    infos = {b.name: read_apk(b.path).info for b in built}
    main = infos["demo"]
    assert "so:libz.so.1" not in main.depends  # declared, but the package provides it
    assert main.depends[-1] == "zlib-declared" and list(main.depends) == sorted(main.depends)
    assert {"so:libc.so.6", "so:ld-linux-x86-64.so.2"} <= set(main.depends)
    assert main.provides == (
        "cmd:dpkg-deb=1.0.0-r2",
        "so-ver:libz.so.1=1.0.0-r2",
        "so:libz.so.1=1",
    )
    assert infos["demo-dev"].depends == ("so:libz.so.1",)
    assert "demo: provides cmd:dpkg-deb=1.0.0-r2 so-ver:libz.so.1=1.0.0-r2 so:libz.so.1=1" in lines
    # disabling a warning linter does not quiet it: melange appends it to the warning list
    # (so it runs twice); checks.disabled only turns required linters into warnings
    assert sum("[lddcheck] demo contains" in line for line in lines) == 2
    assert sum("[lddcheck] demo-dev contains" in line for line in lines) == 1
    # the SBOMs go into the packages from memory: the exported trees are left as they were
    assert not (tree / "demo" / "var").exists() and not (tree / "demo-dev" / "var").exists()
    for b in built:
        entries = {e.path: e for e in read_apk(b.path).entries}
        sbom = entries[f"var/lib/db/sbom/{b.name}-1.0.0-r2.spdx.json"]
        assert (sbom.mode, sbom.uid, sbom.gid) == (0o644, 0, 0)
        assert [entries[d].mode for d in ("var", "var/lib", "var/lib/db", "var/lib/db/sbom")] == [
            0o755
        ] * 4


def test_a_required_linter_stops_packaging(tmp_path: Path) -> None:
    opts = options(tmp_path, CONFIG)
    config, _ = prepare(opts)
    tree = tmp_path / "melange-out"
    make_tree(tree / "demo", {"usr/bin/ok": "x"})
    make_tree(tree / "demo-dev", {"tmp/leftover": "x"})
    lines: list[str] = []
    with pytest.raises(LintFailed) as caught:
        write_packages(config, tree, opts, None, log=lines.append)
    assert str(caught.value) == (
        'unable to lint package demo-dev: linter "tempdir" failed for demo-dev: '
        "demo-dev writes to a temp dir (tmp/leftover)"
    )
    assert any("[tempdir]" in line for line in lines)
    assert not (opts.out_dir / "x86_64").exists() or not list((opts.out_dir / "x86_64").iterdir())


def test_an_unknown_linter_is_refused_before_building(tmp_path: Path) -> None:
    opts = options(tmp_path, CONFIG.replace("- lddcheck", "- lddcheck\n      - no-such-linter"))
    with pytest.raises(RecipeFieldError) as caught:
        prepare(opts)
    assert "unknown linter 'no-such-linter'" in str(caught.value)
    assert "demo.yaml:" in str(caught.value)
