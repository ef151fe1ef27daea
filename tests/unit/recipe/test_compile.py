from __future__ import annotations

from pathlib import Path

import pytest

from melange2.errors import RecipeError
from melange2.recipe import (
    DEFAULT_PATH,
    PipelineResolver,
    RecipeFieldError,
    compile_build,
    compile_tests,
    load_config,
)

HELLO = """\
package:
  name: hello
  version: "2.12.1"
  epoch: 3
environment:
  contents:
    packages: [build-base, busybox]
  environment:
    CFLAGS: -O2
pipeline:
  - uses: fetch
    with:
      uri: https://ftp.gnu.org/gnu/hello/hello-${{package.version}}.tar.gz
      expected-sha256: 8b1e3e3ddf0eb6c0f4e0fd9d1b0ca0e3c1fa7a1a4d8b1fbbf6e0fd1b3bb4b0a1
  - uses: autoconf/configure
    with:
      opts: --disable-nls
  - uses: autoconf/make
  - uses: autoconf/make-install
  - name: arm only
    if: ${{build.arch}} == 'aarch64'
    runs: echo arm
  - uses: strip
subpackages:
  - name: hello-dev
    description: headers
    pipeline:
      - uses: split/dev
    test:
      environment:
        contents:
          packages: [pkgconf]
      pipeline:
        - runs: pkg-config --exists hello
  - name: hello-doc
    pipeline:
      - uses: split/manpages
      - uses: split/infodir
  - name: hello-arm-extras
    if: ${{build.arch}} == 'aarch64'
    pipeline:
      - runs: echo extras
test:
  environment:
    contents:
      packages: [coreutils]
  pipeline:
    - name: version
      runs: hello --version
    - uses: git-checkout
      with:
        repository: https://example.com/hello-tests.git
        tag: v${{package.version}}
"""


def _load(text: str, tmp_path: Path, *, arch: str = "x86_64", name: str = "hello.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_config(path, arch=arch)


def test_realistic_build_plan(tmp_path: Path) -> None:
    config = _load(HELLO, tmp_path)
    plan = compile_build(config, PipelineResolver([]))

    assert [(s.package, s.name) for s in plan.steps] == [
        ("hello", "fetch"),
        ("hello", "autoconf/configure"),
        ("hello", "autoconf/make"),
        (
            "hello",
            'autoconf/make-install / make -C "." install DESTDIR="/home/build/melange-out/hell...',
        ),
        (
            "hello",
            "autoconf/make-install / find /home/build/melange-out/hello -name '*.la' -print -e...",
        ),
        ("hello", "strip"),
        ("hello-dev", "split/dev"),
        ("hello-doc", "split/manpages"),
        ("hello-doc", "split/infodir"),
    ]
    # melange's pipelines' needs, in the order the steps come
    assert plan.needs_packages == (
        "wget",
        "autoconf",
        "automake",
        "make",
        "binutils",
        "scanelf",
        "busybox",
    )
    assert dict(plan.environment) == {
        "CFLAGS": "-O2",
        "HOME": "/home/build",
        "GOPATH": "/home/build/.cache/go",
        "GOMODCACHE": "/var/cache/melange/gomodcache",
    }

    fetch, configure, _, install, _, strip, dev, *_ = plan.steps
    assert fetch.script.startswith(
        "set -e\n[ -d /home/build ] || mkdir -p /home/build\ncd /home/build\n"
    )
    assert fetch.script.endswith("\nexit 0\n")
    assert "'https://ftp.gnu.org/gnu/hello/hello-2.12.1.tar.gz'" in fetch.script
    assert fetch.argv == ("/bin/sh", "-c", fetch.script)
    assert "--host=x86_64-pc-linux-gnu" in configure.script
    assert "--disable-nls" in configure.script
    assert 'DESTDIR="/home/build/melange-out/hello"' in install.script
    assert strip.workdir == "/home/build/melange-out/hello"
    assert "strip -g " in strip.script
    assert 'd="/home/build/melange-out/hello-dev/${i%/*}"' in dev.script
    assert 'PACKAGE_DIR="/home/build/melange-out/hello"' in dev.script
    assert all("${{" not in step.script for step in plan.steps)
    assert dict(fetch.env) == {**plan.environment, "PATH": DEFAULT_PATH}

    # locations: the recipe step, and where the script text came from
    assert str(fetch.location) == f"{tmp_path / 'hello.yaml'}:11"
    assert fetch.location.path == "pipeline[0]"
    assert fetch.source.file.endswith("_melange_pipelines/fetch.yaml")
    assert dev.location.path == "subpackages[0].pipeline[0]"


def test_if_conditions_follow_the_architecture(tmp_path: Path) -> None:
    plan = compile_build(_load(HELLO, tmp_path, arch="aarch64"))
    names = [(s.package, s.name) for s in plan.steps]
    assert ("hello", "arm only") in names
    configure = next(s for s in plan.steps if s.name == "autoconf/configure")
    assert "--host=aarch64-unknown-linux-gnu" in configure.script

    x86 = compile_build(_load(HELLO, tmp_path, arch="x86_64"))
    assert "arm only" not in {s.name for s in x86.steps}


def test_subpackage_if_sees_only_package_vars_and_range(tmp_path: Path) -> None:
    """melange v0.34.0 evaluates a subpackage's ``if`` with only package.*, vars.* and
    range.* substituted (its compile-time substitution is lost, melange#1377): any other
    variable is "", so ``${{build.arch}} == 'aarch64'`` is false on every architecture."""
    for arch in ("aarch64", "x86_64"):
        plan = compile_build(_load(HELLO, tmp_path, arch=arch))
        assert "hello-arm-extras" not in {s.package for s in plan.steps}
    config = _load(
        """
package: {name: p, version: "1"}
vars: {flavour: full}
subpackages:
  - name: p-full
    if: "'${{vars.flavour}}' == 'full' && '${{package.name}}' == 'p'"
    pipeline: [{runs: echo full}]
  - name: p-slim
    if: "'${{vars.flavour}}' == 'slim'"
    pipeline: [{runs: echo slim}]
  - name: p-never
    if: ${{build.arch}} == 'x86_64'
    pipeline: [{runs: echo never}]
  - name: p-always
    if: ${{build.arch}} != 'x86_64'
    pipeline: [{runs: echo always}]
""",
        tmp_path,
    )
    assert [s.package for s in compile_build(config).steps] == ["p-full", "p-always"]


def test_false_condition_drops_needs_and_nested_steps(tmp_path: Path) -> None:
    config = _load(
        """
package: {name: p, version: "1"}
pipeline:
  - if: ${{build.arch}} == 'riscv64'
    uses: go/build
    with: {packages: ., output: p}
  - if: ${{build.arch}} == 'riscv64'
    pipeline:
      - runs: never
  - runs: always
""",
        tmp_path,
    )
    plan = compile_build(config)
    assert [s.name for s in plan.steps] == ["always"]
    assert plan.needs_packages == ()


def test_nested_pipelines_inherit_workdir_and_environment(tmp_path: Path) -> None:
    config = _load(
        """
package: {name: p, version: "1"}
environment:
  environment: {A: global, PATH: /opt/bin}
pipeline:
  - name: outer
    working-directory: src
    environment: {A: outer, B: outer}
    pipeline:
      - runs: make
      - name: inner
        environment: {B: inner}
        working-directory: /opt/elsewhere
        pipeline:
          - runs: ls
      - uses: autoconf/make
  - runs: |
      # a comment
      echo top
""",
        tmp_path,
    )
    steps = compile_build(config).steps
    assert [s.name for s in steps] == [
        "outer / make",
        "outer / inner / ls",
        "outer / autoconf/make",
        "echo top",
    ]
    make, ls, automake, top = steps
    assert make.workdir == "/home/build/src"
    assert make.script.startswith("set -e\n[ -d /home/build/src ] || mkdir -p /home/build/src\n")
    assert "cd /home/build/src\nmake\nexit 0\n" in make.script
    assert (make.env["A"], make.env["B"]) == ("outer", "outer")
    assert ls.workdir == "/opt/elsewhere"
    assert (ls.env["A"], ls.env["B"]) == ("outer", "inner")
    # a uses expands with the calling step's inherited workdir and environment
    assert automake.workdir == "/home/build/src"
    assert automake.env["A"] == "outer"
    # melange sets PATH for every step, over the config's
    assert top.env["PATH"] == DEFAULT_PATH
    assert top.env["A"] == "global"
    assert top.workdir == "/home/build"


def test_user_pipeline_dir_overrides_builtin_and_passes_inputs_on(tmp_path: Path) -> None:
    pipelines = tmp_path / "pipelines"
    (pipelines / "my").mkdir(parents=True)
    (pipelines / "fetch.yaml").write_text(
        """
name: local fetch
needs: {packages: [curl]}
inputs:
  uri: {required: true}
pipeline:
  - runs: curl -fLO ${{inputs.uri}}
"""
    )
    (pipelines / "my" / "build.yaml").write_text(
        """
name: my build
inputs:
  opts: {default: --fast}
  target: {default: "${{package.name}}-bin"}
pipeline:
  - name: configure
    uses: autoconf/configure
    with:
      opts: ${{inputs.opts}} --with-target=${{inputs.target}}
  - runs: install -D ${{inputs.target}} ${{targets.contextdir}}/usr/bin/${{inputs.target}}
"""
    )
    config = _load(
        """
package: {name: tool, version: "1"}
pipeline:
  - uses: fetch
    with: {uri: "https://example.com/tool.tgz"}
  - uses: my/build
subpackages:
  - name: tool-extra
    pipeline:
      - uses: my/build
        with: {opts: --slow}
""",
        tmp_path,
    )
    plan = compile_build(config, PipelineResolver([pipelines]))
    names = [s.name for s in plan.steps]
    assert names[:2] == ["fetch", "my/build / configure"]
    assert names[2].startswith("my/build / install -D tool-bin /home/build/melange-out/tool/")
    assert names[2].endswith("...")  # a long first line is shortened
    assert [s.package for s in plan.steps] == ["tool", "tool", "tool", "tool-extra", "tool-extra"]
    assert "install -D tool-bin /home/build/melange-out/tool/usr/bin/" in plan.steps[2].script
    assert "/home/build/melange-out/tool-extra/usr/bin/tool-bin" in plan.steps[4].script
    assert "curl -fLO https://example.com/tool.tgz" in plan.steps[0].script
    assert "--fast --with-target=tool-bin" in plan.steps[1].script
    assert "--slow --with-target=tool-bin" in plan.steps[3].script
    assert plan.needs_packages == ("curl", "autoconf", "automake")


def test_required_input_missing(tmp_path: Path) -> None:
    config = _load(
        """
package: {name: p, version: "1"}
pipeline:
  - runs: true
  - uses: fetch
    with:
      expected-sha256: 8d99142afd92576f30b0cd7cb42a8dc6809998bc5d607d88761f512e26c7db20
""",
        tmp_path,
    )
    with pytest.raises(RecipeFieldError) as info:
        compile_build(config)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'hello.yaml'}:5: pipeline[1].with: ")
    assert "pipeline 'fetch' requires input 'uri'" in message
    assert isinstance(info.value, RecipeError)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("expected-sha256", "abc"),
        ("expected-sha256", "z" * 64),
        ("expected-sha512", "0" * 64),
    ],
)
def test_checksum_inputs_must_be_hex_of_their_length(tmp_path: Path, key: str, value: str) -> None:
    """melange refuses such a value before anything runs; so do we, naming the input."""
    config = _load(
        f'package: {{name: p, version: "1"}}\npipeline:\n  - uses: fetch\n    with:\n'
        f"      uri: https://example.com/x.tgz\n      {key}: {value}\n",
        tmp_path,
    )
    with pytest.raises(RecipeFieldError) as info:
        compile_build(config)
    assert f":6: pipeline[0].with.{key}: input '{key}' of pipeline 'fetch' must be" in str(
        info.value
    )


def test_required_input_given_empty_is_missing(tmp_path: Path) -> None:
    config = _load(
        """
package: {name: p, version: "1"}
pipeline:
  - uses: go/build
    with:
      packages: .
      output: ""
""",
        tmp_path,
    )
    with pytest.raises(RecipeFieldError, match=r":7: pipeline\[0\]\.with\.output: .*'output'"):
        compile_build(config)


def test_unknown_uses_names_file_line_and_search_path(tmp_path: Path) -> None:
    config = _load(
        """
package: {name: p, version: "1"}
subpackages:
  - name: p-x
    pipeline:
      - runs: true
      - uses: autoconf/nope
""",
        tmp_path,
    )
    pipelines = tmp_path / "pipelines"
    with pytest.raises(RecipeFieldError) as info:
        compile_build(config, PipelineResolver([pipelines]))
    message = str(info.value)
    assert message.startswith(
        f"{tmp_path / 'hello.yaml'}:7: subpackages[0].pipeline[1].uses: "
        "unknown pipeline 'autoconf/nope'"
    )
    assert str(pipelines / "autoconf" / "nope.yaml") in message
    assert "recipe/pipelines/autoconf/nope.yaml" in message


@pytest.mark.parametrize("uses", ["../etc/passwd", "/abs", "a//b", "a/../b"])
def test_uses_must_be_a_plain_name(tmp_path: Path, uses: str) -> None:
    config = _load(f'package: {{name: p, version: "1"}}\npipeline:\n  - uses: "{uses}"\n', tmp_path)
    with pytest.raises(RecipeFieldError, match="invalid pipeline name"):
        compile_build(config)


def test_undeclared_input_is_an_error(tmp_path: Path) -> None:
    config = _load(
        """
package: {name: p, version: "1"}
pipeline:
  - uses: fetch
    with:
      uri: https://example.com/x.tgz
      expected-sha265: abc
""",
        tmp_path,
    )
    with pytest.raises(RecipeFieldError) as info:
        compile_build(config)
    assert ":7: pipeline[0].with.expected-sha265: pipeline 'fetch' has no input" in str(info.value)


def test_undefined_variables(tmp_path: Path) -> None:
    # ${{inputs.*}} outside a uses pipeline has no value
    config = _load(
        'package: {name: p, version: "1"}\npipeline:\n  - runs: echo ${{inputs.x}}\n', tmp_path
    )
    with pytest.raises(RecipeFieldError, match=r":3: pipeline\[0\]\.runs: undefined variable"):
        compile_build(config)

    # inside a user pipeline: blame the recipe step and the pipeline file
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "bad.yaml").write_text("pipeline:\n  - runs: |\n      echo ${{inputs.nope}}\n")
    config = _load('package: {name: p, version: "1"}\npipeline:\n  - uses: bad\n', tmp_path)
    with pytest.raises(RecipeFieldError) as info:
        compile_build(config, PipelineResolver([pipelines]))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'hello.yaml'}:3: pipeline[0].uses: in pipeline 'bad'")
    assert f"{pipelines / 'bad.yaml'}:3: pipeline[0].runs: undefined variable" in message


def test_recursive_uses_is_refused(tmp_path: Path) -> None:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "a.yaml").write_text("pipeline:\n  - uses: b\n")
    (pipelines / "b.yaml").write_text("pipeline:\n  - uses: a\n")
    config = _load('package: {name: p, version: "1"}\npipeline:\n  - uses: a\n', tmp_path)
    with pytest.raises(RecipeFieldError, match=r"'a' uses itself \(a -> b -> a\)"):
        compile_build(config, PipelineResolver([pipelines]))


def test_needs_use_inputs(tmp_path: Path) -> None:
    config = _load(
        """
package: {name: p, version: "1"}
pipeline:
  - uses: go/build
    needs: {packages: [git]}
    with: {packages: ./cmd/p, output: p, go-package: go-1.22, tags: fips}
""",
        tmp_path,
    )
    plan = compile_build(config)
    # go/build declares needs: as in melange they replace the calling step's (git)
    assert plan.needs_packages == ("go-1.22", "busybox", "ca-certificates-bundle")
    (step,) = plan.steps
    assert 'BASE_PATH="usr/bin/p"' in step.script
    assert 'go build -o "/home/build/melange-out/p"/${BASE_PATH}' in step.script
    assert '-tags "netgo,osusergo,fips"' in step.script

    # a pipeline that declares no needs keeps the step's
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "plain.yaml").write_text("pipeline:\n  - runs: echo plain\n")
    config = _load(
        'package: {name: p, version: "1"}\npipeline:\n'
        "  - uses: plain\n    needs: {packages: [git]}\n",
        tmp_path,
    )
    assert compile_build(config, PipelineResolver([pipelines])).needs_packages == ("git",)


def test_compile_tests(tmp_path: Path) -> None:
    config = _load(HELLO, tmp_path)
    main, dev = compile_tests(config)

    assert main.package == "hello"
    assert main.contents.packages == ("coreutils", "hello", "git")
    assert [s.name for s in main.steps] == ["version", "git-checkout"]
    assert all(s.workdir == "/home/build" and s.package == "hello" for s in main.steps)
    assert "tag='v2.12.1'" in main.steps[1].script
    assert main.environment["HOME"] == "/home/build"

    assert dev.package == "hello-dev"
    assert dev.contents.packages == ("pkgconf", "hello-dev")
    assert [s.name for s in dev.steps] == ["pkg-config --exists hello"]


def test_compile_tests_context_is_the_subpackage(tmp_path: Path) -> None:
    config = _load(
        """
package: {name: p, version: "1"}
subpackages:
  - name: p-sub
    test:
      pipeline:
        - runs: ls ${{targets.contextdir}}
  - name: p-skipped
    if: ${{build.arch}} == 'riscv64'
    test:
      pipeline:
        - runs: ls
""",
        tmp_path,
    )
    (plan,) = compile_tests(config)
    assert plan.package == "p-sub"
    assert "ls /home/build/melange-out/p-sub\n" in plan.steps[0].script


def test_without_steps_the_same_needs_and_errors(tmp_path: Path) -> None:
    """What a submission compiles: no ExecStep, the same needs, the same errors."""
    config = _load(HELLO, tmp_path)
    full, bare = compile_build(config), compile_build(config, steps=False)
    assert bare.steps == () and full.steps
    assert bare.needs_packages == full.needs_packages
    assert [t.contents for t in compile_tests(config, steps=False)] == [
        t.contents for t in compile_tests(config)
    ]
    broken = _load(
        'package: {name: p, version: "1"}\npipeline:\n  - runs: echo ${{inputs.nope}}\n', tmp_path
    )
    with pytest.raises(RecipeFieldError, match="undefined variable"):
        compile_build(broken, steps=False)


def test_an_invalid_pipeline_file_names_the_use_and_the_file(tmp_path: Path) -> None:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "bad.yaml").write_text("name: bad\ninputs:\n  - not a mapping\n")
    config = _load('package: {name: p, version: "1"}\npipeline:\n  - uses: bad\n', tmp_path)
    with pytest.raises(RecipeFieldError) as info:
        compile_build(config, PipelineResolver([pipelines]))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'hello.yaml'}:3: pipeline[0].uses: pipeline 'bad'")
    assert f"{pipelines / 'bad.yaml'}:3: inputs: expected a mapping" in message
