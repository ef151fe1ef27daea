from __future__ import annotations

import pytest

from melange2.errors import RecipeError
from melange2.recipe import (
    Location,
    Package,
    RecipeFieldError,
    Step,
    UndefinedVariable,
    base_substitutions,
    find_references,
    go_regex_replace_all,
    load_config,
    parse_arch,
    resolve_vars,
    subpackage_substitutions,
    substitute,
    substitute_condition,
    substitute_steps,
    substitution_map,
    with_inputs,
)
from melange2.recipe.model import frozen_map

PKG = Package(name="hello", version="2.12.1", epoch=4, description="GNU hello")


def test_substitute_basics() -> None:
    mapping = {"package.name": "hello", "vars.x": "${{vars.y}}"}
    assert substitute("no refs", mapping) == "no refs"
    assert substitute("${{package.name}}/${{ package.name }}", mapping) == "hello/hello"
    # one pass: inserted values are not rescanned
    assert substitute("${{vars.x}}", mapping) == "${{vars.y}}"
    assert substitute("$HOME ${PATH} $${{package.name}}", mapping) == "$HOME ${PATH} $hello"


def test_undefined_variable_names_file_line_field() -> None:
    where = Location(file="hello.yaml", line=20, column=5, path="pipeline[1].runs", literal=True)
    text = "echo one\necho ${{vars.missing}}\n"
    with pytest.raises(UndefinedVariable) as info:
        substitute(text, {}, location=where)
    # literal block: text line 2 is file line 20 + 1 + 1
    assert (
        str(info.value) == "hello.yaml:22: pipeline[1].runs: undefined variable ${{vars.missing}}"
    )
    assert info.value.variable == "vars.missing"
    assert isinstance(info.value, RecipeError)


@pytest.mark.parametrize("text", ["${{", "${{}}", "${{ a b }}", "${{a.b}", "x ${{a!}} y"])
def test_malformed_references(text: str) -> None:
    with pytest.raises(RecipeFieldError, match="malformed substitution"):
        substitute(text, {"a": "1", "a.b": "2"})
    with pytest.raises(RecipeFieldError):
        find_references(text)


def test_passthrough_keeps_unknown_prefixes() -> None:
    mapping = {"inputs.known": "k"}
    text = "${{inputs.x}} ${{ inputs.known }}"
    assert substitute(text, mapping, passthrough=("inputs.",)) == "${{inputs.x}} k"
    with pytest.raises(UndefinedVariable):
        substitute("${{vars.x}}", mapping, passthrough=("inputs.",))
    assert substitute("${{vars.x}} ${{", {}, passthrough=("",)) == "${{vars.x}} ${{"


def test_substitute_condition_quotes_values() -> None:
    expr = substitute_condition("${{build.arch}} == 'x86_64'", {"build.arch": 'x"y'})
    assert expr == '"x\\"y" == \'x86_64\''


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        (
            "x86_64",
            {
                "build.arch": "x86_64",
                "build.goarch": "amd64",
                "host.triplet.gnu": "x86_64-pc-linux-gnu",
                "host.triplet.rust": "x86_64-unknown-linux-gnu",
                "cross.triplet.gnu.glibc": "x86_64-pc-linux-gnu",
                "cross.triplet.gnu.musl": "x86_64-pc-linux-musl",
                "cross.triplet.rust.glibc": "x86_64-unknown-linux-gnu",
                "cross.triplet.rust.musl": "x86_64-unknown-linux-musl",
            },
        ),
        (
            "aarch64",
            {
                "build.arch": "aarch64",
                "build.goarch": "arm64",
                "host.triplet.gnu": "aarch64-unknown-linux-gnu",
                "host.triplet.rust": "aarch64-unknown-linux-gnu",
                "cross.triplet.gnu.glibc": "aarch64-unknown-linux-gnu",
                "cross.triplet.gnu.musl": "aarch64-unknown-linux-musl",
                "cross.triplet.rust.glibc": "aarch64-unknown-linux-gnu",
                "cross.triplet.rust.musl": "aarch64-unknown-linux-musl",
            },
        ),
    ],
)
def test_arch_family(arch: str, expected: dict[str, str]) -> None:
    mapping = base_substitutions(PKG, arch=arch)
    assert {k: mapping[k] for k in expected} == expected
    # OCI spellings are accepted too
    oci = parse_arch(arch).oci
    assert base_substitutions(PKG, arch=oci)["build.arch"] == expected["build.arch"]


def test_musl_host_triplets() -> None:
    mapping = base_substitutions(PKG, arch="x86_64", libc="musl")
    assert mapping["host.triplet.gnu"] == "x86_64-pc-linux-musl"
    assert mapping["host.triplet.rust"] == "x86_64-unknown-linux-musl"
    assert mapping["cross.triplet.gnu.glibc"] == "x86_64-pc-linux-gnu"


def test_other_arches() -> None:
    assert parse_arch("armv7").gnu_triplet() == "armv7l-unknown-linux-gnueabihf"
    assert parse_arch("x86").apk == "x86"
    assert parse_arch("386").gnu_triplet() == "i486-pc-linux-gnu"
    assert parse_arch("riscv64").rust_triplet() == "riscv64-unknown-linux-gnu"


def test_package_and_targets_family() -> None:
    mapping = base_substitutions(
        PKG, package_names=["hello-doc"], build_options=["a", "b"], enabled_options=["b"]
    )
    assert mapping["package.name"] == "hello"
    assert mapping["package.version"] == "2.12.1"
    assert mapping["package.epoch"] == "4"
    assert mapping["package.full-version"] == "2.12.1-r4"
    assert mapping["package.description"] == "GNU hello"
    assert mapping["package.srcdir"] == "/home/build"
    assert mapping["targets.outdir"] == "/home/build/melange-out"
    assert mapping["targets.destdir"] == "/home/build/melange-out/hello"
    assert mapping["targets.contextdir"] == "/home/build/melange-out/hello"
    assert mapping["targets.package.hello-doc"] == "/home/build/melange-out/hello-doc"
    assert mapping["context.name"] == "hello"
    assert "targets.subpkgdir" not in mapping
    assert "subpkg.name" not in mapping
    assert mapping["options.a.enabled"] == "false"
    assert mapping["options.b.enabled"] == "true"

    sub = subpackage_substitutions(mapping, "hello-doc")
    assert sub["targets.subpkgdir"] == "/home/build/melange-out/hello-doc"
    assert sub["targets.contextdir"] == "/home/build/melange-out/hello-doc"
    assert sub["targets.destdir"] == "/home/build/melange-out/hello"
    assert sub["subpkg.name"] == sub["context.name"] == "hello-doc"


def test_vars_and_transforms() -> None:
    base = base_substitutions(PKG)
    resolved = resolve_vars(
        {"a": "x", "b": "${{vars.a}}-${{package.version}}"},
        [
            ("${{package.version}}", r"\.", "_", "underscored"),
            ("${{vars.underscored}}", r"^(\d+)_(\d+).*", "${1}_${2}", "short"),
        ],
        base,
    )
    assert resolved == {
        "a": "x",
        "b": "x-2.12.1",
        "underscored": "2_12_1",
        "short": "2_12",
    }


def test_bad_transform_regex_names_location() -> None:
    where = Location(file="f.yaml", line=9, column=12, path="var-transforms[0].match")
    with pytest.raises(RecipeFieldError, match=r"^f\.yaml:9: var-transforms\[0\]\.match: match"):
        resolve_vars(
            {}, [("x", "(", "", "y")], {}, locations={"var-transforms[0].match": where}.get
        )


@pytest.mark.parametrize(
    ("pattern", "text", "template", "expected"),
    [
        (r"\.(\d+)$", "17.0.7.5", "+$1", "17.0.7+5"),
        (r"^(\d+\.\d+\.\d+).(\d+).*", "1.3.6.8", "${1}_${2}", "1.3.6_8"),
        (r"^(\d+)\.(\d+)", "1.2", "$1_$2", "2"),  # $1_ is the (missing) group "1_"
        (r"(?P<maj>\d+)\.(?P<min>\d+)", "3.9", "$min.$maj", "9.3"),
        (r"(?<maj>\d+)", "3", "v${maj}", "v3"),
        (r"a", "banana", "$$", "b$n$n$"),
        (r"x*", "abxd", "-", "-a-b-d-"),  # Go skips the empty match after "x"
        (r"[[:digit:]]+", "v1.23", "N", "vN.N"),
        (r"^", "abc", "$0!", "!abc"),
        (r"b", "abc", "$", "a$c"),  # a lone $ is literal
        (r"(b)", "abc", "${1", "a${1c"),
        (r"(b)", "abc", "$01", "ac"),
        (r"abc\z", "abc", "x", "x"),
    ],
)
def test_go_regex_replace_all(pattern: str, text: str, template: str, expected: str) -> None:
    assert go_regex_replace_all(pattern, text, template) == expected


def test_go_regex_invalid() -> None:
    with pytest.raises(ValueError):
        go_regex_replace_all("(", "x", "y")


def test_with_inputs_and_substitute_steps() -> None:
    mapping = with_inputs(
        {"package.name": "hello"}, {"prefix": "/usr", "bindir": "${{inputs.prefix}}/bin"}
    )
    assert mapping["inputs.prefix"] == "/usr"
    assert mapping["inputs.bindir"] == "/usr/bin"
    steps = (
        Step(
            name="install ${{package.name}}",
            uses="ignored/${{x}}",
            runs="install -d ${{inputs.bindir}}",
            if_="${{inputs.prefix}} == '/usr'",
            needs_packages=("${{package.name}}-dev",),
            environment=frozen_map({"P": "${{inputs.prefix}}"}),
            working_directory="${{inputs.prefix}}",
            with_=frozen_map({"a": "${{inputs.prefix}}"}),
            pipeline=(Step(runs="echo ${{package.name}}"),),
        ),
    )
    (step,) = substitute_steps(steps, mapping)
    assert step.name == "install hello"
    assert step.uses == "ignored/${{x}}"
    assert step.runs == "install -d /usr/bin"
    assert step.if_ == "\"/usr\" == '/usr'"
    assert step.needs_packages == ("hello-dev",)
    assert dict(step.environment) == {"P": "/usr"}
    assert step.working_directory == "/usr"
    assert dict(step.with_) == {"a": "/usr"}
    assert step.pipeline[0].runs == "echo hello"


def test_substitution_map_from_config() -> None:
    config = load_config(
        """
package: {name: p, version: "1", epoch: 0}
vars: {v: "val"}
options: {fips: {}}
subpackages:
  - name: p-dev
""",
        arch="aarch64",
        enabled_options=["fips"],
    )
    main = substitution_map(config)
    assert main["vars.v"] == "val"
    assert main["build.arch"] == "aarch64"
    assert main["options.fips.enabled"] == "true"
    assert main["targets.package.p-dev"] == "/home/build/melange-out/p-dev"
    sub = substitution_map(config, subpackage="p-dev")
    assert sub["targets.contextdir"] == "/home/build/melange-out/p-dev"


# -- expressions (newer melange's ${{a == "b" && "c" || "d"}}) ----------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('${{range.key == "64" && " (ILP64)" || ""}}', " (ILP64)"),
        ("${{range.key == '32' && ' (ILP64)' || ''}}", ""),
        ('${{ range.key != "64" }}', "false"),
        ('${{range.key == "64"}}', "true"),
        ('${{vars.empty || "fallback"}}', "fallback"),
        ('${{vars.empty && "never"}}', ""),
        ('${{"a" && vars.x}}', "x-value"),
        ('${{(range.key == "32" || range.key == "64") && "wide" || "narrow"}}', "wide"),
        # && binds tighter than ||
        ('${{"" && "a" || "b"}}', "b"),
        ('${{"x" || "a" && ""}}', "x"),
        ('lib${{range.key == "64" && "64" || ""}}.so', "lib64.so"),
        ('${{"quote \\" and \\\\ and \\n"}}', 'quote " and \\ and \n'),
    ],
)
def test_expressions(text: str, expected: str) -> None:
    mapping = {"range.key": "64", "vars.empty": "", "vars.x": "x-value"}
    assert substitute(text, mapping) == expected


def test_expression_in_a_condition_is_quoted() -> None:
    expr = substitute_condition(
        '${{build.arch == "x86_64" && "amd" || "arm"}} == "arm"', {"build.arch": "aarch64"}
    )
    assert expr == '"arm" == "arm"'


def test_expression_names_undefined_variables() -> None:
    with pytest.raises(UndefinedVariable) as info:
        substitute('x ${{vars.nope == "1" && "a"}}', {})
    assert info.value.variable == "vars.nope"
    # left as written when the names are passed through (inputs, before uses is resolved)
    text = '${{inputs.flavour == "gnu" && "--gnu" || ""}}'
    assert substitute(text, {}, passthrough=("inputs.",)) == text
    assert find_references(text)[0].names == ("inputs.flavour",)


@pytest.mark.parametrize(
    "text",
    ["${{a == }}", '${{"open}}', "${{a && }}", '${{(a == "b"}}', '${{a "b"}}', "${{" + "(" * 80],
)
def test_malformed_expressions(text: str) -> None:
    with pytest.raises(RecipeFieldError, match="malformed substitution"):
        substitute(text, {"a": "1"})


def test_expression_in_ranged_subpackages() -> None:
    cfg = load_config(
        """
package: {name: openblas, version: "0.3.28"}
data:
  - name: ints
    items: {"32": LP64, "64": ILP64}
subpackages:
  - range: ints
    name: libopenblas${{range.key == "64" && "64" || ""}}
    description: OpenBLAS${{range.key == "64" && " (ILP64)" || ""}} for ${{package.name}}
    pipeline:
      - runs: make INTERFACE64=${{range.key == "64" && "1" || "0"}} PREFIX=${{targets.contextdir}}
"""
    )
    first, second = cfg.subpackages
    assert (first.name, first.description) == ("libopenblas", "OpenBLAS for openblas")
    assert (second.name, second.description) == (
        "libopenblas64",
        "OpenBLAS (ILP64) for openblas",
    )
    assert first.pipeline[0].runs == (
        "make INTERFACE64=0 PREFIX=/home/build/melange-out/libopenblas"
    )
    assert second.pipeline[0].runs == (
        "make INTERFACE64=1 PREFIX=/home/build/melange-out/libopenblas64"
    )
