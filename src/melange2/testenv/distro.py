"""A distribution of real-sized melange configs, made from a real dependency graph.

The repository holds no distribution; ``wolfi-dag.json`` (the benchmark data) has the
names, build-time edges, step and subpackage counts of Wolfi's 3,401 packages. From each
entry :func:`make_distribution` writes a config of the length and shape real ones have:
a source step (``fetch`` or ``git-checkout``), the pipelines of the package's ecosystem
(autoconf, cmake, meson, go, cargo, python, ruby, perl, R, npm, pecl, maven), shell steps
up to the entry's step count, ``strip``, subpackages split with ``split/*`` pipelines (one
per entry of the count, ``-dev`` first), ``test:`` sections (some using pipelines, some
needing packages of the distribution), and a ``pipelines/`` directory of the
distribution's own pipelines that configs use, as Wolfi's repository has.

Everything is deterministic: the same graph gives the same configs, byte for byte.

    configs, pipelines = make_distribution(load_graph(path))
    # configs: [yaml text, ...] in graph order; pipelines: {"py/pip-build-install.yaml": ...}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "GraphPackage",
    "distribution_pipelines",
    "load_graph",
    "make_config",
    "make_distribution",
]

#: The distribution's own pipelines (``pipelines/`` beside the configs).
_PIPELINES: Final[Mapping[str, str]] = {
    "py/pip-build-install.yaml": """\
name: Build and install a Python package with pip

needs:
  packages:
    - py3-pip

inputs:
  python:
    description: The interpreter to build for.
    required: true
  dest:
    description: Where to install.
    default: ${{targets.contextdir}}

pipeline:
  - runs: |
      ${{inputs.python}} -m pip wheel --no-deps --no-build-isolation -w dist .
      ${{inputs.python}} -m pip install --no-deps --root="${{inputs.dest}}" --prefix=/usr dist/*.whl
      find "${{inputs.dest}}" -name '__pycache__' -prune -exec rm -rf {} +
""",
    "test/tw/ldd-check.yaml": """\
name: Check that every ELF file's libraries resolve

needs:
  packages:
    - ldd-check

inputs:
  packages:
    description: The packages whose files are checked.
    default: ${{context.name}}
  verbose:
    description: Print every file checked.
    default: "false"

pipeline:
  - runs: |
      ldd-check --packages="${{inputs.packages}}" --verbose="${{inputs.verbose}}"
""",
    "test/tw/ver-check.yaml": """\
name: Check that binaries print the package version

inputs:
  bins:
    description: The binaries to run, space separated.
    required: true
  version:
    description: The version they must print.
    default: ${{package.version}}
  version-flag:
    description: The flag that prints the version.
    default: --version

pipeline:
  - runs: |
      for bin in ${{inputs.bins}}; do
        "$bin" ${{inputs.version-flag}} 2>&1 | grep -F "${{inputs.version}}"
      done
""",
    "test/tw/help-check.yaml": """\
name: Check that binaries answer --help

inputs:
  bins:
    description: The binaries to run, space separated.
    required: true
  help-flag:
    description: The flag that prints help.
    default: --help

pipeline:
  - runs: |
      for bin in ${{inputs.bins}}; do
        "$bin" ${{inputs.help-flag}} >/dev/null 2>&1 || "$bin" -h >/dev/null 2>&1
      done
""",
    "test/tw/devpackage.yaml": """\
name: Check a -dev package (headers, pkg-config files, .so links)

needs:
  packages:
    - pkgconf

inputs:
  package:
    description: The -dev package.
    default: ${{context.name}}

pipeline:
  - runs: |
      apk info -L "${{inputs.package}}" | grep -E '(\\.h|\\.pc|\\.so)$'
""",
    "test/tw/staticpackage.yaml": """\
name: Check that a package holds static libraries only

inputs:
  package:
    description: The package.
    default: ${{context.name}}

pipeline:
  - runs: |
      apk info -L "${{inputs.package}}" | grep -v -E '(\\.a|/)$' && exit 1 || exit 0
""",
    "test/docs.yaml": """\
name: Check a documentation package

inputs:
  path:
    description: Where the documentation is installed.
    default: /usr/share

pipeline:
  - runs: |
      test -n "$(find ${{inputs.path}} -type f | head -n 1)"
""",
}

_LICENSES: Final = ("Apache-2.0", "MIT", "GPL-2.0-or-later", "BSD-3-Clause", "LGPL-2.1-or-later")
_SPLITS: Final = (
    ("dev", "split/dev"),
    ("doc", "split/manpages"),
    ("static", "split/static"),
    ("lang", "split/locales"),
    ("libs", "split/lib"),
    ("bin", "split/bin"),
    ("dbg", "split/debug"),
    ("info", "split/infodir"),
    ("docs", "split/alldocs"),
)
_SHELL: Final = (
    'find . -name "*.orig" -delete',
    'sed -i "s|/usr/local|/usr|g" Makefile.in',
    "install -Dm644 LICENSE ${{targets.contextdir}}/usr/share/licenses/${{package.name}}/LICENSE",
    "mkdir -p ${{targets.contextdir}}/usr/share/doc/${{package.name}}",
    "cp -r README* ${{targets.contextdir}}/usr/share/doc/${{package.name}}/ || true",
    "ln -sf ${{package.name}} ${{targets.contextdir}}/usr/bin/${{package.name}}-compat",
    "rm -rf ${{targets.contextdir}}/usr/share/info/dir",
    'export CFLAGS="$CFLAGS -fno-omit-frame-pointer"',
)


@dataclass(frozen=True, kw_only=True, slots=True)
class GraphPackage:
    """One entry of the graph: what a config must look like from outside."""

    name: str
    #: build-time dependencies (package names of the graph), cycle edges included
    deps: tuple[str, ...]
    steps: int
    subpackages: int


def load_graph(path: Path) -> list[GraphPackage]:
    """Read ``wolfi-dag.json`` (``packages[]`` of name, deps, cycle_deps, steps, ...)."""
    data = json.loads(path.read_text())
    return [
        GraphPackage(
            name=p["name"],
            deps=tuple(dict.fromkeys((*p["deps"], *p.get("cycle_deps", ())))),
            steps=int(p.get("steps", 3)),
            subpackages=int(p.get("subpackages", 0)),
        )
        for p in data["packages"]
    ]


def distribution_pipelines() -> dict[str, str]:
    """The ``pipelines/`` directory the generated configs use (path -> YAML)."""
    return dict(_PIPELINES)


def _digest(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def _hex(name: str, length: int) -> str:
    out = ""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(f"{name}:{counter}".encode()).hexdigest()
        counter += 1
    return out[:length]


def _family(name: str) -> str:
    if name.startswith(("py3-", "py3.")):
        return "python"
    if name.startswith("ruby"):
        return "ruby"
    if name.startswith("perl-"):
        return "perl"
    if name.startswith("R-"):
        return "R"
    if name.startswith("php-"):
        return "pecl"
    if name.startswith(("rust", "cargo")) or name.endswith("-rs"):
        return "cargo"
    if name.startswith(("node", "npm-")) or name.endswith("-js"):
        return "npm"
    if name.endswith(("-jdk", "-java")) or "maven" in name:
        return "maven"
    return ("autoconf", "cmake", "meson", "go")[_digest(name, "family") % 4]


def _version(name: str) -> str:
    h = _digest(name, "version")
    return f"{h % 9}.{(h >> 8) % 40}.{(h >> 16) % 20}"


def make_config(package: GraphPackage, first_subpackage: Mapping[str, str]) -> str:
    """One config's YAML. ``first_subpackage`` maps a graph package to the name of its
    first subpackage (``<name>-dev``), so dependencies on subpackages are written too."""
    name = package.name
    family = _family(name)
    h = _digest(name)
    lines = [
        "package:",
        f"  name: {name}",
        f'  version: "{_version(name)}"',
        f"  epoch: {h % 5}",
        f"  description: {name.replace('-', ' ')}, built from source",
        "  copyright:",
        f"    - license: {_LICENSES[h % len(_LICENSES)]}",
        "  dependencies:",
        "    runtime:",
        "      - busybox",
        *(
            ["  resources:", f'    cpu: "{2 + h % 14}"', f"    memory: {4 + h % 28}Gi"]
            if h % 5 == 0
            else []
        ),
        "",
        "environment:",
        "  contents:",
        "    packages:",
    ]
    needs: list[str] = []
    for dep in ("busybox", *package.deps):
        # every third dependency with subpackages is named by its -dev subpackage
        sub = first_subpackage.get(dep) if dep != "busybox" else None
        needs.append(sub if sub is not None and _digest(name, dep) % 3 == 0 else dep)
    lines += [f"      - {n}" for n in dict.fromkeys(needs)]
    lines += [
        "  environment:",
        "    CFLAGS: -O2 -Wall",
        "",
        "vars:",
        f"  upstream: https://example.org/{name}",
        "",
    ]
    if h % 3 == 1:
        lines += [
            "var-transforms:",
            "  - from: ${{package.version}}",
            "    match: \\.",
            "    replace: _",
            "    to: mangled-package-version",
            "",
        ]
    lines.append("pipeline:")
    steps: list[list[str]] = []
    if h % 3:
        steps.append(
            [
                "  - uses: fetch",
                "    with:",
                "      uri: ${{vars.upstream}}/releases/"
                "${{package.name}}-${{package.version}}.tar.gz",
                f"      expected-sha256: {_hex(name, 64)}",
            ]
        )
    else:
        steps.append(
            [
                "  - uses: git-checkout",
                "    with:",
                "      repository: ${{vars.upstream}}.git",
                "      tag: v${{package.version}}",
                f"      expected-commit: {_hex(name, 40)}",
            ]
        )
    steps += _family_steps(family, name)
    i = 0
    while len(steps) < max(package.steps - 1, 1):
        script = [_SHELL[(h + i + k) % len(_SHELL)] for k in range(3 + (h + i) % 4)]
        steps.append([f"  - name: step {i + 1}", "    runs: |", *(f"      {s}" for s in script)])
        i += 1
    if family not in ("python", "ruby", "npm", "maven"):
        steps.append(["  - uses: strip"])
    for step in steps:
        lines += step
    lines.append("")
    if package.subpackages:
        lines.append("subpackages:")
        for k in range(package.subpackages):
            suffix, uses = _SPLITS[k % len(_SPLITS)]
            sub_name = f"{name}-{suffix}" if k < len(_SPLITS) else f"{name}-{suffix}{k}"
            lines += [
                f"  - name: {sub_name}",
                f"    description: {name} ({suffix})",
                "    pipeline:",
                f"      - uses: {uses}",
            ]
            if suffix == "dev":
                lines += [
                    "    dependencies:",
                    "      runtime:",
                    f"        - {name}",
                    "    test:",
                    "      pipeline:",
                    "        - uses: test/tw/devpackage",
                    "        - uses: test/tw/ldd-check",
                ]
            elif suffix == "doc":
                lines += ["    test:", "      pipeline:", "        - uses: test/docs"]
            elif suffix == "static":
                lines += ["    test:", "      pipeline:", "        - uses: test/tw/staticpackage"]
        lines.append("")
    lines += [
        "update:",
        "  enabled: true",
        "  github:",
        f"    identifier: example/{name}",
        "    strip-prefix: v",
        "    use-tag: true",
        "",
    ]
    lines += _test_section(package, family)
    return "\n".join(lines) + "\n"


def _family_steps(family: str, name: str) -> list[list[str]]:
    if family == "autoconf":
        return [
            ["  - uses: autoconf/configure", "    with:", "      opts: --disable-static"],
            ["  - uses: autoconf/make"],
            ["  - uses: autoconf/make-install"],
        ]
    if family == "cmake":
        return [
            ["  - uses: cmake/configure", "    with:", "      opts: -DBUILD_TESTING=OFF"],
            ["  - uses: cmake/build"],
            ["  - uses: cmake/install"],
        ]
    if family == "meson":
        return [
            ["  - uses: meson/configure", "    with:", "      opts: -Ddocs=disabled"],
            ["  - uses: meson/compile"],
            ["  - uses: meson/install"],
        ]
    if family == "go":
        return [
            [
                "  - uses: go/build",
                "    with:",
                f"      packages: ./cmd/{name}",
                f"      output: {name}",
                "      ldflags: -s -w -X main.version=${{package.version}}",
            ]
        ]
    if family == "cargo":
        return [["  - uses: cargo/build", "    with:", f"      output: {name}"]]
    if family == "python":
        return [
            ["  - uses: py/pip-build-install", "    with:", "      python: python3.12"],
        ]
    if family == "ruby":
        gem = name.split("-", 1)[-1]
        return [
            ["  - uses: ruby/build", "    with:", f"      gem: {gem}"],
            [
                "  - uses: ruby/install",
                "    with:",
                f"      gem: {gem}",
                "      version: ${{package.version}}",
            ],
            ["  - uses: ruby/clean"],
        ]
    if family == "perl":
        return [["  - uses: perl/make"], ["  - uses: autoconf/make"], ["  - uses: perl/cleanup"]]
    if family == "R":
        return [
            [
                "  - uses: R/build",
                "    with:",
                f"      package: {name[2:]}",
                "      version: ${{package.version}}",
            ]
        ]
    if family == "pecl":
        return [
            ["  - uses: pecl/phpize"],
            ["  - uses: autoconf/configure"],
            ["  - uses: autoconf/make"],
            ["  - uses: pecl/install", "    with:", f"      extension: {name.split('-')[-1]}"],
        ]
    if family == "npm":
        return [
            [
                "  - uses: npm/install",
                "    with:",
                f"      package: {name}",
                "      version: ${{package.version}}",
            ]
        ]
    return [["  - uses: maven/configure-mirror"], ["  - runs: mvn -B -DskipTests package"]]


def _test_section(package: GraphPackage, family: str) -> list[str]:
    h = _digest(package.name, "test")
    if h % 4 == 0:
        return []
    lines = ["test:"]
    # a test needs packages of the distribution: some of what the build needs
    test_deps = [d for i, d in enumerate(package.deps) if _digest(package.name, d, "t") % 4 == 0]
    if test_deps:
        lines += ["  environment:", "    contents:", "      packages:"]
        lines += [f"        - {d}" for d in test_deps[:3]]
    lines.append("  pipeline:")
    if family == "python":
        module = package.name.split("-", 1)[-1].replace("-", "_")
        lines += ["    - uses: python/import", "      with:", f"        import: {module}"]
    else:
        lines += [
            "    - uses: test/tw/ldd-check",
            "    - uses: test/tw/ver-check",
            "      with:",
            f"        bins: {package.name}",
            "    - uses: test/tw/help-check",
            "      with:",
            f"        bins: {package.name}",
            "    - name: smoke",
            "      runs: |",
            f"        {package.name} --version || {package.name} --help",
            f'        test -x "$(command -v {package.name})"',
        ]
    return lines


def make_distribution(graph: Sequence[GraphPackage]) -> tuple[list[str], dict[str, str]]:
    """Every config of ``graph`` (in its order) and the ``pipelines/`` they use."""
    first_subpackage = {p.name: f"{p.name}-dev" for p in graph if p.subpackages}
    return [make_config(p, first_subpackage) for p in graph], distribution_pipelines()
