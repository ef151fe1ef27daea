from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from melange2.errors import RecipeError
from melange2.recipe import (
    Config,
    PackageOptions,
    RecipeFieldError,
    UndefinedVariable,
    evaluate_condition,
    load_config,
    load_pipeline,
)

# Modelled on wolfi-dev/os configs: var-transforms, fetch + autoconf, split subpackages.
CURL = textwrap.dedent(
    """\
    package:
      name: curl
      version: 8.5.0
      epoch: 1
      description: "URL retrieval utility and library"
      copyright:
        - license: MIT
      dependencies:
        runtime:
          - libcurl-openssl4=${{package.full-version}}
      options:
        no-commands: yes

    environment:
      contents:
        packages:
          - build-base
          - busybox
          - openssl-dev
      environment:
        CFLAGS: -O2

    var-transforms:
      - from: ${{package.version}}
        match: \\.
        replace: _
        to: underscore-version

    pipeline:
      - uses: git-checkout
        with:
          repository: https://github.com/curl/curl
          tag: curl-${{vars.underscore-version}}
          expected-commit: 7161cb17c01dcff1dc5bf89a18437d9d729f1ecd

      - uses: autoconf/configure
        with:
          opts: |
            --enable-ipv6 \\
            --host=${{host.triplet.gnu}}

      - uses: autoconf/make

      - uses: autoconf/make-install

      - uses: strip

    subpackages:
      - name: curl-dev
        description: "headers for libcurl"
        pipeline:
          - uses: split/dev
        dependencies:
          runtime:
            - libcurl-openssl4
        test:
          pipeline:
            - uses: test/pkgconf

      - name: libcurl-openssl4
        description: "curl library (openssl backend)"
        dependencies:
          provides:
            - libcurl4=${{package.full-version}}
          provider-priority: 5
        pipeline:
          - runs: |
              mkdir -p ${{targets.subpkgdir}}/usr/lib
              mv ${{targets.destdir}}/usr/lib/libcurl.so.* ${{targets.subpkgdir}}/usr/lib/

    update:
      enabled: true
      release-monitor:
        identifier: 381

    test:
      environment:
        contents:
          packages:
            - ca-certificates-bundle
      pipeline:
        - runs: |
            curl --version | grep ${{package.version}}
    """
)

# Modelled on version-streamed packages: vars, data/range subpackages, conditions.
PYTHON = textwrap.dedent(
    """\
    package:
      name: py3-supported-foo
      version: 1.2.3
      epoch: 0
      description: foo for every supported python
      target-architecture: [x86_64, aarch64]

    vars:
      pypi-package: foo
      import: foo_mod

    data:
      - name: py-versions
        items:
          "3.12": "312"
          "3.11": "311"

    pipeline:
      - uses: fetch
        with:
          uri: https://files.pythonhosted.org/${{vars.pypi-package}}-${{package.version}}.tar.gz
          expected-sha256: 0000000000000000000000000000000000000000000000000000000000000000
      - name: arch specific
        if: ${{build.arch}} == 'x86_64'
        working-directory: /home/build/src
        environment:
          ARCH_FLAGS: "-m64"
        pipeline:
          - runs: echo ${{build.goarch}}
          - if: "'${{vars.import}}' == 'foo_mod'"
            runs: echo import ok
            environment:
              EXTRA: "1"

    subpackages:
      - range: py-versions
        name: py${{range.key}}-${{vars.pypi-package}}
        description: python${{range.key}} version of ${{vars.pypi-package}}
        if: "'${{range.value}}' != '39'"
        dependencies:
          provides:
            - py3-${{vars.pypi-package}}
          provider-priority: ${{range.value}}
        pipeline:
          - uses: py/pip-build-install
            with:
              python: python${{range.key}}
          - runs: echo ${{targets.contextdir}} ${{subpkg.name}} ${{context.name}}
        test:
          pipeline:
            - uses: python/import
              with:
                python: python${{range.key}}
                import: ${{vars.import}}
      - name: py3-supported-foo-arm-only
        if: ${{build.arch}} == 'aarch64'
        pipeline:
          - runs: echo ${{targets.package.py3.11-foo}}
    """
)


def test_curl_like_config() -> None:
    cfg = load_config(CURL, filename="curl.yaml")
    assert isinstance(cfg, Config)
    pkg = cfg.package
    assert (pkg.name, pkg.version, pkg.epoch, pkg.full_version) == ("curl", "8.5.0", 1, "8.5.0-r1")
    assert pkg.licenses == ("MIT",)
    assert pkg.options == PackageOptions(no_commands=True)
    assert pkg.dependencies.runtime == ("libcurl-openssl4=8.5.0-r1",)
    assert cfg.environment.contents.packages == ("build-base", "busybox", "openssl-dev")
    assert cfg.environment.environment["CFLAGS"] == "-O2"
    assert cfg.environment.environment["HOME"] == "/home/build"
    assert cfg.resolved_vars["underscore-version"] == "8_5_0"

    checkout, configure, *_ = cfg.pipeline
    assert checkout.uses == "git-checkout"
    assert checkout.with_["tag"] == "curl-8_5_0"
    assert configure.with_["opts"] == "--enable-ipv6 \\\n--host=x86_64-pc-linux-gnu\n"
    assert [s.uses for s in cfg.pipeline] == [
        "git-checkout",
        "autoconf/configure",
        "autoconf/make",
        "autoconf/make-install",
        "strip",
    ]

    dev, lib = cfg.subpackages
    assert dev.name == "curl-dev"
    assert dev.test is not None and dev.test.pipeline[0].uses == "test/pkgconf"
    assert lib.dependencies.provides == ("libcurl4=8.5.0-r1",)
    assert lib.dependencies.provider_priority == "5"
    assert lib.pipeline[0].runs.splitlines() == [
        "mkdir -p /home/build/melange-out/libcurl-openssl4/usr/lib",
        "mv /home/build/melange-out/curl/usr/lib/libcurl.so.* "
        "/home/build/melange-out/libcurl-openssl4/usr/lib/",
    ]
    assert cfg.test is not None
    assert cfg.test.environment.contents.packages == ("ca-certificates-bundle",)
    assert cfg.test.pipeline[0].runs == "curl --version | grep 8.5.0\n"
    assert cfg.package_names == ("curl", "curl-dev", "libcurl-openssl4")


def test_locations_are_kept() -> None:
    cfg = load_config(CURL, filename="curl.yaml")
    checkout = cfg.pipeline[0]
    assert (checkout.loc.line, checkout.loc.column) == (30, 5)
    assert checkout.loc.path == "pipeline[0]"
    assert checkout.where("with.tag").line == 33
    assert checkout.where("with.tag").path == "pipeline[0].with.tag"
    runs = cfg.subpackages[1].pipeline[0].where("runs")
    assert runs.line == 67
    assert runs.literal
    assert runs.line_of("a\nb", 2) == 69
    assert cfg.package.where("epoch").line == 4
    assert str(cfg.subpackages[0].loc) == "curl.yaml:49"


@pytest.mark.parametrize(
    ("arch", "sub_names", "x86_if"),
    [
        ("x86_64", ["py3.11-foo", "py3.12-foo", "py3-supported-foo-arm-only"], True),
        ("aarch64", ["py3.11-foo", "py3.12-foo", "py3-supported-foo-arm-only"], False),
    ],
)
def test_range_vars_and_conditions(arch: str, sub_names: list[str], x86_if: bool) -> None:
    cfg = load_config(PYTHON, arch=arch)
    assert cfg.arch == arch
    assert cfg.package.builds_for(arch)
    assert not cfg.package.builds_for("ppc64le")
    assert [sp.name for sp in cfg.subpackages] == sub_names

    step = cfg.pipeline[1]
    assert evaluate_condition(step.if_) is x86_if
    inner_go, inner_if = step.pipeline
    # children inherit working-directory and environment
    assert inner_go.working_directory == "/home/build/src"
    assert dict(inner_go.environment) == {"ARCH_FLAGS": "-m64"}
    assert dict(inner_if.environment) == {"ARCH_FLAGS": "-m64", "EXTRA": "1"}
    assert inner_go.runs == "echo " + ("amd64" if arch == "x86_64" else "arm64")
    assert evaluate_condition(inner_if.if_)

    py311, py312, arm = cfg.subpackages
    assert (py311.range, py311.range_key, py311.range_value) == ("py-versions", "3.11", "311")
    assert py311.description == "python3.11 version of foo"
    assert py311.dependencies.provider_priority == "311"
    assert py311.dependencies.provides == ("py3-foo",)
    assert py311.pipeline[0].with_["python"] == "python3.11"
    assert py311.pipeline[1].runs == (
        "echo /home/build/melange-out/py3.11-foo py3.11-foo py3.11-foo"
    )
    assert py311.test is not None
    assert dict(py311.test.pipeline[0].with_) == {"python": "python3.11", "import": "foo_mod"}
    assert evaluate_condition(py312.if_)
    # a subpackage's if keeps every variable but package/vars/range, which melange
    # v0.34.0 then evaluates as "" (melange#1377): false on every architecture
    assert arm.if_ == "${{build.arch}} == 'aarch64'"
    assert evaluate_condition(arm.if_) is False
    assert arm.pipeline[0].runs == "echo /home/build/melange-out/py3.11-foo"


def test_load_from_path_and_extra_vars(tmp_path: Path) -> None:
    path = tmp_path / "py.yaml"
    path.write_text(PYTHON.replace("py3.11-foo}}", "py3.11-bar}}"))
    cfg = load_config(path, extra_vars={"pypi-package": "bar"})
    assert cfg.subpackages[0].name == "py3.11-bar"
    assert cfg.pipeline[0].loc.file == str(path)
    assert load_config(PYTHON.encode()).package.name == "py3-supported-foo"


def test_inputs_are_left_for_uses_resolution() -> None:
    cfg = load_config(
        """
package: {name: p, version: "1"}
pipeline:
  - uses: go/build
    with:
      output: ${{inputs.packages}}-x
"""
    )
    assert cfg.pipeline[0].with_["output"] == "${{inputs.packages}}-x"


def test_vars_in_conditions_are_inserted_as_written() -> None:
    # melange substitutes package/vars at parse time without quoting: users quote them.
    cfg = load_config(
        """
package: {name: p, version: "1"}
vars: {flag: "on"}
pipeline:
  - if: "'${{vars.flag}}' == 'on' && ${{options.x.enabled}} == 'false'"
    runs: "true"
options:
  x: {}
"""
    )
    assert cfg.pipeline[0].if_ == "'on' == 'on' && \"false\" == 'false'"
    assert evaluate_condition(cfg.pipeline[0].if_)


def test_unknown_sections_and_keys_are_ignored() -> None:
    cfg = load_config(
        """
package:
  name: p
  version: "1.10"
  resources: {cpu: "4"}
  scriptlets: {post-install: "#!/bin/sh"}
capabilities: {add: [CAP_NET_ADMIN]}
future-section: [1, 2, 3]
environment:
  accounts: {run-as: root}
pipeline:
  - runs: make
    retry: {attempts: 3}
"""
    )
    assert cfg.package.version == "1.10"  # the original text, not the float 1.1
    assert cfg.pipeline[0].runs == "make"


def test_scalars_keep_their_text() -> None:
    cfg = load_config(
        """
package: {name: p, version: 2.0, epoch: 0x10}
vars: {a: 010, b: true, c: ~, d: 1e3}
"""
    )
    assert cfg.package.version == "2.0"
    assert cfg.package.epoch == 16
    assert dict(cfg.resolved_vars) == {"a": "010", "b": "true", "c": "", "d": "1e3"}


def test_anchors_and_merge_keys() -> None:
    cfg = load_config(
        """
package: {name: p, version: "1"}
x-common: &common
  runs: echo common
  environment: {A: "1"}
pipeline:
  - <<: *common
    name: first
  - <<: *common
    runs: echo override
"""
    )
    assert [s.runs for s in cfg.pipeline] == ["echo common", "echo override"]
    assert cfg.pipeline[0].name == "first"


def test_load_pipeline_file() -> None:
    definition = load_pipeline(
        """
name: Run make
needs:
  packages:
    - make
inputs:
  dir:
    description: where
    default: .
  opts:
    required: true
pipeline:
  - runs: make -C ${{inputs.dir}} ${{inputs.opts}}
""",
        filename="pipelines/autoconf/make.yaml",
    )
    assert definition.name == "Run make"
    assert definition.needs_packages == ("make",)
    assert definition.inputs["dir"].default == "."
    assert definition.inputs["opts"].required
    assert definition.pipeline[0].runs == "make -C ${{inputs.dir}} ${{inputs.opts}}"
    assert definition.pipeline[0].loc.file == "pipelines/autoconf/make.yaml"


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        (
            'package:\n  name: p\n  version: "1"\n  epoch: "abc"\n',
            "cfg.yaml:4: package.epoch: expected an integer, got the string 'abc'",
        ),
        (
            "package:\n  name: p\n  version: 1\n  epoch: -1\n",
            "cfg.yaml:4: package.epoch: -1 is out of range",
        ),
        (
            "package:\n  name: p\n  version: 1\npipeline: 5\n",
            "cfg.yaml:4: pipeline: expected a list, got the number '5'",
        ),
        (
            "package:\n  version: 1\n",
            "cfg.yaml:2: package.name: required field is missing",
        ),
        (
            "package:\n  name: p\n",
            "cfg.yaml:2: package.version: required field is missing",
        ),
        (
            "package:\n  name: p\n  version: ''\n",
            "cfg.yaml:3: package.version: must not be empty",
        ),
        ("pipeline: []\n", "cfg.yaml:1: package: required section is missing"),
        ("", "cfg.yaml: empty config"),
        ("- a\n- b\n", "cfg.yaml:1: expected a mapping, got a list"),
        (
            "package:\n  name: p\n  version: 1\npipeline:\n  - runs: [1]\n",
            "cfg.yaml:5: pipeline[0].runs: expected a string, got a list",
        ),
        (
            "package:\n  name: p\n  version: 1\npipeline:\n"
            "  - runs: |\n      a\n      b ${{vars.nope}}\n",
            "cfg.yaml:7: pipeline[0].runs: undefined variable ${{vars.nope}}",
        ),
        (
            "package:\n  name: p\n  version: 1\npipeline:\n  - runs: echo ${{targets.subpkgdir}}\n",
            "cfg.yaml:5: pipeline[0].runs: undefined variable ${{targets.subpkgdir}}",
        ),
        (
            "package:\n  name: p\n  version: 1\nsubpackages:\n  - name: x\n    range: nope\n",
            "cfg.yaml:6: subpackages[0].range: undefined range 'nope'",
        ),
        (
            "package:\n  name: p\n  version: 1\nsubpackages:\n  - name: x\n  - name: x\n",
            "cfg.yaml:6: subpackages[1].name: subpackage name 'x' is already used by subpackage #0",
        ),
        (
            "package:\n  name: p\n  version: 1\nsubpackages:\n  - name: p\n",
            "cfg.yaml:5: subpackages[0].name: subpackage name 'p' is already used by the main",
        ),
        (
            "package:\n  name: p\n  version: 1\nsubpackages:\n  - name: 'a b'\n",
            "cfg.yaml:5: subpackages[0].name: subpackage name 'a b' must match",
        ),
        (
            "package:\n  name: p\n  version: 1\npipeline:\n  - with: {a: b}\n    runs: x\n",
            "cfg.yaml:5: pipeline[0].with: 'with' is only valid together with 'uses'",
        ),
        (
            "package:\n  name: p\n  version: 1\npipeline:\n  - uses: fetch\n    runs: x\n",
            "cfg.yaml:6: pipeline[0].runs: a step cannot have both 'uses'",
        ),
        (
            "package:\n  name: p\n  version: 1\npipeline:\n  - if: x86_64 == 'x'\n    runs: x\n",
            "cfg.yaml:5: pipeline[0].if: invalid condition",
        ),
        (
            "package:\n  name: p\n  version: 1\n  dependencies:\n    provider-priority: high\n",
            "cfg.yaml:5: package.dependencies.provider-priority: priority must be an integer",
        ),
        (
            "package:\n  name: p\n  version: 1\n  options: {no-provides: maybe}\n",
            "cfg.yaml:4: package.options.no-provides: expected true or false",
        ),
        (
            "package:\n  name: p\n  version: 1\nvar-transforms:\n  - from: x\n    match: '('\n"
            "    replace: y\n    to: z\n",
            "cfg.yaml:6: var-transforms[0].match: match '(' is not a valid regular expression",
        ),
        (
            "package:\n  name: p\n  version: 1\n  name: q\n",
            "cfg.yaml:4: package: key 'name' is already defined on line 2",
        ),
        ("package: [\n", "cfg.yaml:2: invalid YAML"),
        ("a: 1\n---\nb: 2\n", "cfg.yaml:2: invalid YAML"),
        ("package: *nope\n", "cfg.yaml:1: invalid YAML"),
        (
            "package:\n  name: p\n  version: 1\n  copyright:\n    - paths: ['*']\n",
            "cfg.yaml:5: package.copyright[0]: must specify either 'license'",
        ),
    ],
)
def test_error_messages(yaml: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_config(yaml, filename="cfg.yaml")
    assert str(info.value).startswith(message), str(info.value)


def test_undefined_variable_error_carries_details() -> None:
    with pytest.raises(UndefinedVariable) as info:
        load_config(CURL.replace("grep ${{package.version}}", "grep ${{package.verzion}}"))
    assert info.value.variable == "package.verzion"
    assert info.value.location is not None
    assert info.value.location.path == "test.pipeline[0].runs"
    assert isinstance(info.value, RecipeFieldError)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(RecipeError, match="cannot read"):
        load_config(tmp_path / "bin.yaml")


def test_recursive_alias_does_not_hang() -> None:
    text = "package: {name: p, version: '1'}\npipeline: &p\n  - pipeline: *p\n"
    with pytest.raises(RecipeError, match="nested"):
        load_config(text)


def test_alias_bomb_is_bounded() -> None:
    lines = ["package: {name: p, version: '1'}", "a0: &a0 [{runs: x}, {runs: x}]"]
    for i in range(1, 24):
        lines.append(f"a{i}: &a{i} [{{pipeline: *a{i - 1}}}, {{pipeline: *a{i - 1}}}]")
    lines.append("pipeline: *a23")
    with pytest.raises(RecipeError):
        load_config("\n".join(lines))


def test_package_resources_are_kept_as_written() -> None:
    config = load_config(
        textwrap.dedent(
            """\
            package:
              name: big
              version: 1.0.0
              resources:
                cpu: 16
                memory: 64Gi
                disk: 200Gi
                cpumodel: host
            pipeline:
              - runs: make
            """
        )
    )
    resources = config.package.resources
    assert resources is not None
    assert (resources.cpu, resources.memory, resources.disk, resources.cpumodel) == (
        "16",
        "64Gi",
        "200Gi",
        "host",
    )
    assert config.package.where("resources.memory").line == 6
    plain = load_config("package: {name: small, version: 1.0.0}\npipeline: [{runs: make}]\n")
    assert plain.package.resources is None


@pytest.mark.parametrize(
    ("field", "value", "line"),
    [("cpu", "lots", 5), ("memory", "16 GB", 6), ("disk", "-1Gi", 7)],
)
def test_package_resources_must_be_quantities(field: str, value: str, line: int) -> None:
    values = {"cpu": "4", "memory": "16Gi", "disk": "10Gi", field: value}
    text = (
        "package:\n  name: big\n  version: 1.0.0\n  resources:\n"
        + "".join(f"    {k}: {v!r}\n" for k, v in values.items())
        + "pipeline:\n  - runs: make\n"
    )
    with pytest.raises(RecipeFieldError, match=rf"^<string>:{line}: package\.resources\.{field}: "):
        load_config(text)
