"""The built-in pipelines: melange v0.34.0's 49, installed unchanged from the pinned
module, and melange2's own (go/build/v2, the git-checkout extension). Each loads, compiles
with its required inputs, parses as busybox sh; a few run for real in a directory standing
in for /home/build; our git-checkout runs side by side with melange's."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from melange2.recipe import (
    BUILD_DIR,
    BUILTIN_PIPELINE_DIR,
    MELANGE_PIPELINE_DIR,
    Config,
    ExecStep,
    PipelineResolver,
    builtin_pipelines,
    compile_build,
    load_config,
    load_pipeline,
    pipeline_origin,
)


def _require(tool: str) -> str:
    """A host tool these tests run (installed by `make setup`): missing is a failure."""
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is not installed (make setup installs busybox-static)")
    return found


#: The 49 pipelines melange v0.34.0 ships (pkg/build/pipelines), installed unchanged.
MELANGE_V0_34_0 = {
    "R/build",
    "autoconf/configure",
    "autoconf/make",
    "autoconf/make-install",
    "cargo/build",
    "cmake/build",
    "cmake/configure",
    "cmake/install",
    "fetch",
    "git-checkout",
    "go/build",
    "go/bump",
    "go/covdata",
    "go/install",
    "llvm/covreport",
    "maven/configure-mirror",
    "maven/pombump",
    "meson/compile",
    "meson/configure",
    "meson/install",
    "npm/install",
    "patch",
    "pecl/install",
    "pecl/phpize",
    "perl/cleanup",
    "perl/make",
    "python/build",
    "python/build-wheel",
    "python/import",
    "python/install",
    "python/test",
    "ruby/build",
    "ruby/clean",
    "ruby/install",
    "split/alldocs",
    "split/bin",
    "split/debug",
    "split/dev",
    "split/infodir",
    "split/lib",
    "split/locales",
    "split/manpages",
    "split/static",
    "strip",
    "xcover/ensure",
    "xcover/profile",
    "xcover/status",
    "xcover/stop",
    "xcover/wait",
}
#: melange2's own: beyond v0.34.0 (go/build/v2), and extensions of melange's (git-checkout).
OURS = {"git-checkout", "go/build/v2"}
EXPECTED = MELANGE_V0_34_0 | OURS

#: the required inputs of each pipeline, and a few more
WITH: dict[str, dict[str, str]] = {
    "R/build": {"package": "thing", "version": "1.0"},
    "fetch": {
        "uri": "https://example.com/src-${{package.version}}.tar.gz",
        "expected-sha256": "00" * 32,
        "strip-components": "0",
        "directory": "src",
    },
    "git-checkout": {
        "repository": "https://example.com/repo.git",
        "tag": "v${{package.version}}",
        "expected-commit": "0" * 40,
        "cherry-picks": "main/abc123: fix the build\n",
        "sparse-paths": "cmd/a\nlib",
    },
    "go/build": {"packages": "./cmd/x", "output": "x", "ldflags": "-X main.v=1"},
    "go/build/v2": {"packages": "./cmd/x", "ldflags": "-X main.v=1"},
    "go/bump": {"deps": "golang.org/x/net@v0.38.0"},
    "go/install": {"package": "golang.org/x/tools/cmd/stringer", "version": "v0.31.0"},
    "npm/install": {"package": "cli", "version": "1.0.0"},
    "pecl/install": {"extension": "thing"},
    "python/test": {"command": "python3 -m pytest"},
    "ruby/build": {"gem": "thing"},
    "ruby/install": {"gem": "thing", "version": "1.0"},
    "xcover/profile": {"executable-path": "/usr/bin/x"},
    "patch": {"patches": "a.patch b.patch"},
    "strip": {"opts": "--strip-unneeded"},
    "autoconf/configure": {"opts": "--enable-foo"},
    "autoconf/make-install": {"dir": "build"},
    "cmake/configure": {"opts": "-DFOO=ON"},
    "cmake/build": {"output-dir": "out"},
    "cmake/install": {"output-dir": "out"},
    "meson/configure": {"opts": "-Dfoo=enabled"},
    "split/infodir": {"package": "p"},
    "split/lib": {"patterns": "foo"},
}


def test_the_expected_pipelines_ship() -> None:
    assert set(builtin_pipelines()) == EXPECTED
    assert {n for n in EXPECTED if pipeline_origin(n) == "melange v0.34.0"} == (
        MELANGE_V0_34_0 - OURS
    )
    assert {n for n in EXPECTED if pipeline_origin(n) == "melange2"} == OURS
    assert pipeline_origin("no/such") is None


@pytest.mark.parametrize("name", sorted(MELANGE_V0_34_0))
def test_melange_pipelines_are_melange_files_unchanged(name: str) -> None:
    """A dependency, not a copy: each file is the pinned module's, byte for byte."""
    module = Path(
        subprocess.run(
            ["go", "list", "-m", "-f", "{{.Dir}}", "chainguard.dev/melange"],
            cwd=Path(__file__).resolve().parents[3] / "tools" / "melange",
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    upstream = module / "pkg" / "build" / "pipelines" / f"{name}.yaml"
    assert (MELANGE_PIPELINE_DIR / f"{name}.yaml").read_bytes() == upstream.read_bytes()


def test_our_git_checkout_extends_melanges() -> None:
    """Every input melange's git-checkout declares, with the same default and required."""
    ours = load_pipeline(BUILTIN_PIPELINE_DIR / "git-checkout.yaml")
    theirs = load_pipeline(MELANGE_PIPELINE_DIR / "git-checkout.yaml")
    for key, spec in theirs.inputs.items():
        assert key in ours.inputs, key
        assert (ours.inputs[key].default, ours.inputs[key].required) == (
            spec.default,
            spec.required,
        ), key
    assert ours.needs_packages == theirs.needs_packages
    assert set(ours.inputs) - set(theirs.inputs) == {
        "sparse-paths",
        "expected-commit-is-branch-tip",
        "shallow-submodules",
        "submodule-jobs",
        "max-retries",
        "initial-backoff",
        "max-backoff",
        "reason",
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_loads(name: str) -> None:
    path = PipelineResolver().find(name)
    assert path is not None
    definition = load_pipeline(path)
    assert definition.name
    assert definition.pipeline
    assert all(step.runs or step.uses for step in definition.pipeline)


def _config_using(name: str, with_: Mapping[str, str]) -> Config:
    """A config whose subpackage ``p-sub`` uses ``name`` with ``with_``."""
    lines = [f"          {k}: {json.dumps(v)}" for k, v in with_.items()]
    text = "\n".join(
        [
            "package: {name: p, version: '1.2'}",
            "subpackages:",
            "  - name: p-sub",
            "    pipeline:",
            f"      - uses: {name}",
            *(["        with:"] if lines else []),
            *lines,
        ]
    )
    return load_config(text)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_compiles_with_documented_inputs(name: str) -> None:
    plan = compile_build(_config_using(name, WITH.get(name, {})))
    assert plan.steps
    for step in plan.steps:
        assert step.package == "p-sub"
        assert "${{" not in step.script
        assert step.name.startswith(name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_scripts_are_valid_sh(name: str) -> None:
    """busybox sh (the farm's shell) parses every script."""
    plan = compile_build(_config_using(name, WITH.get(name, {})))
    for step in plan.steps:
        result = subprocess.run(
            [_require("busybox"), "sh", "-n", "-c", step.script],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_required_inputs_are_declared() -> None:
    resolver = PipelineResolver()
    assert resolver.resolve("fetch").inputs["uri"].required
    assert resolver.resolve("git-checkout").inputs["repository"].required
    go = resolver.resolve("go/build")
    assert go.inputs["packages"].required and go.inputs["output"].required
    assert go.needs_packages[0] == "${{inputs.go-package}}"
    v2 = resolver.resolve("go/build/v2")
    assert not any(spec.required for spec in v2.inputs.values())
    assert v2.inputs["packages"].default == "."
    assert [s.uses for s in v2.pipeline] == ["", "strip"]


# -- running them ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busybox_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PATH directory in which every command is a busybox applet."""
    busybox = _require("busybox")
    bindir = tmp_path_factory.mktemp("bin")
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        (bindir / applet).symlink_to(busybox)
    return bindir


@pytest.fixture(scope="module")
def gnu_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GNU wget and patch: what melange's fetch and patch need (wolfi's wget and patch
    packages are GNU's; busybox's lack --dns-timeout, --fuzz, ...), and a tar that finds
    the compression by itself as wolfi's busybox tar does (Debian's busybox-static tar
    does not). First in PATH."""
    bindir = tmp_path_factory.mktemp("gnu")
    for tool in ("wget", "patch", "tar"):
        (bindir / tool).symlink_to(_require(tool))
    return bindir


def run_step(
    step: ExecStep, root: Path, bindir: Path, extra_path: str = "", first: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``step`` under busybox sh with ``root`` standing in for /home/build."""
    script = step.script.replace(BUILD_DIR, str(root))
    env = {k: v.replace(BUILD_DIR, str(root)) for k, v in step.env.items()}
    env["PATH"] = f"{bindir}:{extra_path}" if extra_path else str(bindir)
    shell = [_require("busybox"), "sh"]
    if first is not None:
        env["PATH"] = f"{first}:{env['PATH']}"
        # Debian's busybox-static sh runs its own applets before PATH: use bash, so
        # that the GNU tools in ``first`` are the ones run (as in wolfi's busybox)
        shell = [_require("bash")]
    return subprocess.run(
        [*shell, "-c", script],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def run_plan(
    config_text: str, root: Path, bindir: Path, extra_path: str = "", first: Path | None = None
) -> list[subprocess.CompletedProcess[str]]:
    results = []
    for step in compile_build(load_config(config_text)).steps:
        result = run_step(step, root, bindir, extra_path, first)
        assert result.returncode == 0, f"{step.name}: {result.stdout}{result.stderr}"
        results.append(result)
    return results


def files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()
    }


def populate(root: Path, paths: list[str]) -> None:
    for rel in paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)


def test_split_dev_and_static_for_real(tmp_path: Path, busybox_bin: Path) -> None:
    out = tmp_path / "melange-out"
    main = out / "foo"
    populate(
        main,
        [
            "usr/bin/foo",
            "usr/bin/foo-config",
            "usr/include/foo.h",
            "usr/include/foo/bar.h",
            "usr/lib/libfoo.so.1.0",
            "usr/lib/libfoo.a",
            "usr/lib/pkgconfig/foo.pc",
            "usr/lib/cmake/Foo/FooConfig.cmake",
            "usr/share/man/man1/foo.1",
            "usr/share/locale/de/LC_MESSAGES/foo.mo",
            "usr/share/info/foo.info",
            "usr/share/info/dir",
            "usr/lib/libbar.a",
        ],
    )
    (main / "usr/lib/libfoo.so").symlink_to("libfoo.so.1.0")
    (main / "usr/lib/libfoo.so.1").symlink_to("libfoo.so.1.0")

    config = """
package: {name: foo, version: "1"}
subpackages:
  - name: foo-static
    pipeline:
      - uses: split/static
  - name: foo-dev
    pipeline:
      - uses: split/dev
  - name: foo-doc
    pipeline:
      - uses: split/manpages
      - uses: split/infodir
  - name: foo-lang
    pipeline:
      - uses: split/locales
"""
    run_plan(config, tmp_path, busybox_bin)

    assert files(main) == {
        "usr/bin/foo",
        "usr/lib/libfoo.so.1.0",
        "usr/lib/libfoo.so.1",
    }
    assert files(out / "foo-static") == {"usr/lib/libfoo.a", "usr/lib/libbar.a"}
    assert files(out / "foo-dev") == {
        "usr/bin/foo-config",
        "usr/include/foo.h",
        "usr/include/foo/bar.h",
        "usr/lib/pkgconfig/foo.pc",
        "usr/lib/cmake/Foo/FooConfig.cmake",
        "usr/lib/libfoo.so",
    }
    assert (out / "foo-dev/usr/lib/libfoo.so").is_symlink()
    assert files(out / "foo-doc") == {"usr/share/man/man1/foo.1", "usr/share/info/foo.info"}
    assert files(out / "foo-lang") == {"usr/share/locale/de/LC_MESSAGES/foo.mo"}
    # melange's split/dev removes the directories it empties; the others leave the
    # parents (an empty usr/share stays in the main package, as with melange)
    assert not (main / "usr/include").exists()
    assert (main / "usr/share").is_dir() and not any((main / "usr/share").iterdir())


def test_split_from_another_package(tmp_path: Path, busybox_bin: Path) -> None:
    out = tmp_path / "melange-out"
    populate(out / "foo", ["usr/share/man/man1/foo.1"])
    populate(out / "foo-tools", ["usr/man/man8/tool.8"])
    config = """
package: {name: foo, version: "1"}
subpackages:
  - name: foo-tools
  - name: foo-doc
    pipeline:
      - uses: split/manpages
      - uses: split/manpages
        with: {package: foo-tools}
"""
    run_plan(config, tmp_path, busybox_bin)
    assert files(out / "foo-doc") == {"usr/share/man/man1/foo.1", "usr/share/man/man8/tool.8"}
    assert files(out / "foo-tools") == set()


def test_split_does_not_merge_a_section_twice(tmp_path: Path, busybox_bin: Path) -> None:
    """melange's split/manpages moves whole sections: a second man1 is refused (mv)."""
    out = tmp_path / "melange-out"
    populate(out / "foo", ["usr/share/man/man1/foo.1"])
    populate(out / "foo-tools", ["usr/share/man/man1/tool.1"])
    config = """
package: {name: foo, version: "1"}
subpackages:
  - name: foo-tools
  - name: foo-doc
    pipeline:
      - uses: split/manpages
      - uses: split/manpages
        with: {package: foo-tools}
"""
    first, second = compile_build(load_config(config)).steps
    assert run_step(first, tmp_path, busybox_bin).returncode == 0
    result = run_step(second, tmp_path, busybox_bin)
    assert result.returncode == 1
    assert "Directory not empty" in result.stderr
    assert files(out / "foo-tools") == {"usr/share/man/man1/tool.1"}


def test_split_refuses_the_main_package(tmp_path: Path, busybox_bin: Path) -> None:
    (step,) = compile_build(
        load_config('package: {name: foo, version: "1"}\npipeline:\n  - uses: split/dev\n')
    ).steps
    result = run_step(step, tmp_path, busybox_bin)
    assert result.returncode == 1
    assert "ERROR: Package can not split files from itself!" in result.stdout


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1 (loopback only)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def make_tarball(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_fetch_for_real(
    tmp_path: Path, busybox_bin: Path, gnu_bin: Path, http_root: tuple[Path, str]
) -> None:
    served, base = http_root
    data = make_tarball(
        {"hello-1.0/configure": b"#!/bin/sh\n", "hello-1.0/src/main.c": b"int main;\n"}
    )
    (served / "hello-1.0.tar.gz").write_bytes(data)
    (served / "other.tar.gz").write_bytes(data)
    work = tmp_path / "work"
    work.mkdir()
    config = f"""
package: {{name: hello, version: "1.0"}}
pipeline:
  - uses: fetch
    with:
      uri: {base}/hello-${{{{package.version}}}}.tar.gz
      expected-sha256: {hashlib.sha256(data).hexdigest()}
  - runs: mkdir unpacked  # melange's fetch does not create its directory
  - uses: fetch
    with:
      uri: {base}/other.tar.gz?download=1
      expected-sha512: {hashlib.sha512(data).hexdigest()}
      strip-components: 0
      directory: unpacked
      delete: true
"""
    results = run_plan(config, work, busybox_bin, first=gnu_bin)
    assert f"fetch: Expected sha256: {hashlib.sha256(data).hexdigest()}" in results[0].stdout
    assert (work / "configure").read_bytes() == b"#!/bin/sh\n"
    assert (work / "src/main.c").read_bytes() == b"int main;\n"
    assert (work / "unpacked/hello-1.0/src/main.c").exists()
    # the first download is kept, the second deleted
    assert (work / "hello-1.0.tar.gz").exists()
    assert not (work / "other.tar.gz").exists()
    assert "fetch: Expected sha512: " in results[2].stdout


def test_fetch_rejects_a_wrong_checksum(
    tmp_path: Path, busybox_bin: Path, gnu_bin: Path, http_root: tuple[Path, str]
) -> None:
    served, base = http_root
    (served / "x.tar.gz").write_bytes(make_tarball({"x/a": b"a"}))
    config = f"""
package: {{name: x, version: "1"}}
pipeline:
  - uses: fetch
    with: {{uri: "{base}/x.tar.gz", expected-sha256: "{"0" * 64}"}}
"""
    (step,) = compile_build(load_config(config)).steps
    result = run_step(step, tmp_path, busybox_bin, first=gnu_bin)
    assert result.returncode == 1
    assert "fetch: Expected sha256 does not match found: " in result.stdout
    assert not (tmp_path / "a").exists()


def test_fetch_needs_a_checksum(tmp_path: Path, busybox_bin: Path) -> None:
    config = (
        'package: {name: x, version: "1"}\n'
        'pipeline:\n  - uses: fetch\n    with: {uri: "http://127.0.0.1:9/x"}\n'
    )
    (step,) = compile_build(load_config(config)).steps
    result = run_step(step, tmp_path, busybox_bin)
    assert result.returncode == 1
    assert "One of expected-sha256 or expected-sha512 is required" in result.stdout


def test_patch_for_real(tmp_path: Path, busybox_bin: Path, gnu_bin: Path) -> None:
    (tmp_path / "hello.c").write_text("one\ntwo\nthree\n")
    (tmp_path / "fix.patch").write_text(
        "--- a/hello.c\n+++ b/hello.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n"
    )
    config = (
        'package: {name: x, version: "1"}\n'
        "pipeline:\n  - uses: patch\n    with: {patches: fix.patch}\n"
    )
    run_plan(config, tmp_path, busybox_bin, first=gnu_bin)
    assert (tmp_path / "hello.c").read_text() == "one\nTWO\nthree\n"


def test_make_install_removes_libtool_archives(tmp_path: Path, busybox_bin: Path) -> None:
    make = _require("make")
    (tmp_path / "Makefile").write_text(
        "install:\n"
        "\tmkdir -p $(DESTDIR)/usr/lib\n"
        "\techo lib > $(DESTDIR)/usr/lib/libx.so\n"
        "\techo la > $(DESTDIR)/usr/lib/libx.la\n"
    )
    config = 'package: {name: x, version: "1"}\npipeline:\n  - uses: autoconf/make-install\n'
    run_plan(config, tmp_path, busybox_bin, extra_path=str(Path(make).parent))
    assert files(tmp_path / "melange-out/x") == {"usr/lib/libx.so"}


def test_git_checkout_for_real(tmp_path: Path, busybox_bin: Path) -> None:
    git = _require("git")
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    env = {
        "HOME": str(tmp_path),
        "PATH": os.environ.get("PATH", ""),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }

    def run(*args: str) -> str:
        return subprocess.run(
            [git, "-C", str(upstream), *args], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()

    run("init", "-q", "-b", "main")
    (upstream / "README").write_text("v1\n")
    run("add", "README")
    run("commit", "-q", "-m", "v1")
    run("tag", "v1.0")
    commit = run("rev-parse", "HEAD")
    (upstream / "README").write_text("v2\n")
    run("commit", "-q", "-am", "v2")

    work = tmp_path / "work"
    work.mkdir()
    (work / "melange.yaml").write_text("kept\n")
    config = f"""
package: {{name: x, version: "1.0"}}
pipeline:
  - uses: git-checkout
    with:
      repository: file://{upstream}
      tag: v${{{{package.version}}}}
      expected-commit: {commit}
  - uses: git-checkout
    with:
      repository: file://{upstream}
      tag: v1.0
      expected-commit: {"0" * 40}
      destination: wrong
"""
    first, second = compile_build(load_config(config)).steps
    result = run_step(first, work, busybox_bin, extra_path=str(Path(git).parent))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (work / "README").read_text() == "v1\n"
    assert (work / "melange.yaml").read_text() == "kept\n"
    assert (work / ".git").is_dir()

    result = run_step(second, work, busybox_bin, extra_path=str(Path(git).parent))
    assert result.returncode == 1
    assert f"tag v1.0 is commit {commit}, expected 000" in result.stderr


# -- git-checkout: ours against melange v0.34.0's, run side by side ----------------------


@dataclass(frozen=True)
class Upstream:
    url: str
    commits: dict[str, str]  #: name -> commit id
    tag_object: str  #: the annotated tag v2.0's own object id


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Upstream:
    """A repository: main (c1 <- c2 <- c3), tags v1.0 (c1, lightweight) and v2.0 (c2,
    annotated), branch release (c1 <- r1), and a branch and a tag both named "dup"."""
    git = _require("git")
    repo = tmp_path_factory.mktemp("upstream")
    env = {
        "HOME": str(repo),
        "PATH": os.environ.get("PATH", ""),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_AUTHOR_DATE": "@1700000000 +0000",
        "GIT_COMMITTER_DATE": "@1700000000 +0000",
    }

    def run(*args: str) -> str:
        return subprocess.run(
            [git, "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()

    def commit(message: str, files: dict[str, str]) -> str:
        for rel, text in files.items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_text(text)
            run("add", rel)
        run("commit", "-q", "-m", message)
        return run("rev-parse", "HEAD")

    run("init", "-q", "-b", "main")
    c1 = commit("c1", {"README": "v1\n", "tools/a/main.c": "a\n", "lib/x.c": "x\n"})
    run("tag", "v1.0")
    c2 = commit("c2", {"README": "v2\n"})
    run("tag", "-a", "v2.0", "-m", "release 2.0")
    c3 = commit("c3", {"NEWS": "three\n"})
    run("checkout", "-q", "-b", "release", c1)
    r1 = commit("r1", {"FIX": "fixed\n"})
    run("tag", "dup", c3)
    run("branch", "dup", c1)
    run("checkout", "-q", "main")
    return Upstream(
        url=f"file://{repo}",
        commits={"c1": c1, "c2": c2, "c3": c3, "r1": r1},
        tag_object=run("rev-parse", "v2.0"),
    )


#: inputs of git-checkout ({c1} ... are commit ids, {tagobj} the annotated tag's object)
GIT_CASES: dict[str, dict[str, str]] = {
    "tag": {"tag": "v1.0", "expected-commit": "{c1}"},
    "annotated tag, commit": {"tag": "v2.0", "expected-commit": "{c2}"},
    "annotated tag, tag object": {"tag": "v2.0", "expected-commit": "{tagobj}"},
    "tag, wrong commit": {"tag": "v1.0", "expected-commit": "{c3}"},
    "tag named like a branch": {"tag": "dup", "expected-commit": "{c3}"},
    "branch tip": {"branch": "main", "expected-commit": "{c3}"},
    "branch, older commit": {"branch": "main", "expected-commit": "{c2}"},
    "branch, shallow, older commit": {"branch": "main", "expected-commit": "{c2}", "depth": "1"},
    "default branch": {},
    "destination": {"tag": "v1.0", "destination": "src/sub"},
    "branch and tag": {"branch": "main", "tag": "v1.0"},
    "cherry-pick": {
        "branch": "main",
        "expected-commit": "{c1}",
        "cherry-picks": "release/{r1}: the fix\n# a comment\n",
    },
    "recurse-submodules not a boolean": {"recurse-submodules": "yes"},
}
#: the cases both refuse
GIT_FAILS = {
    "tag, wrong commit",
    "branch, shallow, older commit",
    "branch and tag",
    "recurse-submodules not a boolean",
}


def _checkout(
    resolver: PipelineResolver, inputs: dict[str, str], upstream: Upstream, work: Path, bindir: Path
) -> tuple[int, str, dict[str, str]]:
    """Run git-checkout; return (exit status, HEAD's tree, the checked-out files)."""
    git = _require("git")
    with_ = {"repository": upstream.url}
    for key, value in inputs.items():
        with_[key] = value.format(**upstream.commits, tagobj=upstream.tag_object)
    lines = [f"      {k}: {json.dumps(v)}" for k, v in with_.items()]
    head = ['package: {name: x, version: "1"}', "pipeline:", "  - uses: git-checkout", "    with:"]
    config = "\n".join([*head, *lines])
    (step,) = compile_build(load_config(config), resolver).steps
    work.mkdir()
    (work / "melange.yaml").write_text("kept\n")
    result = run_step(step, work, bindir, extra_path=str(Path(git).parent))
    dest = work / inputs.get("destination", ".")
    tree = ""
    if (dest / ".git").exists():
        tree = subprocess.run(
            [git, "-C", str(dest), "rev-parse", "HEAD^{tree}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    checked_out = {
        p.relative_to(work).as_posix(): p.read_text()
        for p in work.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(work).parts and p.name != ".gitconfig"
    }
    return result.returncode, tree, checked_out


@pytest.mark.parametrize("case", sorted(GIT_CASES))
def test_git_checkout_does_what_melanges_does(
    case: str, tmp_path: Path, busybox_bin: Path, upstream: Upstream
) -> None:
    """Ours (an extension of melange's) and melange v0.34.0's own git-checkout, on the
    same repository with the same inputs: same success or failure, same tree checked
    out, same files in the workspace."""
    inputs = GIT_CASES[case]
    theirs = _checkout(
        PipelineResolver([MELANGE_PIPELINE_DIR]), inputs, upstream, tmp_path / "m", busybox_bin
    )
    ours = _checkout(PipelineResolver(), inputs, upstream, tmp_path / "o", busybox_bin)
    assert (theirs[0] != 0) is (case in GIT_FAILS)
    assert (ours[0] == 0, ours[1], ours[2]) == (theirs[0] == 0, theirs[1], theirs[2])


def test_git_checkout_sparse_paths(tmp_path: Path, busybox_bin: Path, upstream: Upstream) -> None:
    """Beyond v0.34.0: only the listed directories (and top-level files) are checked out."""
    status, _, files = _checkout(
        PipelineResolver(),
        {"tag": "v1.0", "expected-commit": "{c1}", "sparse-paths": "tools/a\n"},
        upstream,
        tmp_path / "w",
        busybox_bin,
    )
    assert status == 0
    assert files == {"melange.yaml": "kept\n", "README": "v1\n", "tools/a/main.c": "a\n"}
