"""The differential suite's cases: every example and every config under ``configs/``.

A case is a directory holding exactly one melange YAML file, laid out as a user lays out
a config for ``melange build``: sources in ``<package-name>/`` beside it, reusable
pipelines in ``pipelines/``. The suite walks ``examples/*/`` and
``tests/differential/configs/*/``; adding a case is adding such a directory.

Options go in comment lines of the YAML (melange ignores them)::

    # differential: needs=libgreet        build case libgreet first; its packages are a
                                          repository of this build (each side its own)
    # differential: expect=failure        both sides must refuse or fail the build
    # differential: server=true           also submitted to a real melange-server
    # differential: arch=aarch64          the architecture to build (default x86_64)
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"
CONFIGS = Path(__file__).resolve().parent / "configs"

_OPTION = re.compile(r"^#\s*differential:\s*(?P<body>.*)$", re.MULTILINE)


@dataclass(frozen=True, kw_only=True)
class Case:
    """One config to build with both melange and melange2."""

    name: str
    #: the case directory (config, sources, pipelines)
    directory: Path
    config: Path
    #: the package name (sources are ``<directory>/<package>/``)
    package: str
    arch: str = "x86_64"
    needs: tuple[str, ...] = ()
    expect_failure: bool = False
    server: bool = False

    @property
    def source_dir(self) -> Path | None:
        src = self.directory / self.package
        return src if src.is_dir() else None

    @property
    def pipeline_dir(self) -> Path | None:
        pipelines = self.directory / "pipelines"
        return pipelines if pipelines.is_dir() else None

    def digest(self) -> str:
        """sha256 over every file of the case (path, mode, content)."""
        h = hashlib.sha256()
        for path in sorted(self.directory.rglob("*")):
            rel = path.relative_to(self.directory).as_posix()
            st = path.lstat()
            h.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            elif path.is_file():
                h.update(path.read_bytes())
            h.update(b"\0")
        return h.hexdigest()


def _load_case(directory: Path, name: str) -> Case:
    configs = sorted(directory.glob("*.yaml"))
    if len(configs) != 1:
        raise ValueError(f"{directory}: a case holds exactly one .yaml config, found {configs}")
    config = configs[0]
    text = config.read_text()
    options: dict[str, str] = {}
    for match in _OPTION.finditer(text):
        for word in match["body"].split():
            key, _, value = word.partition("=")
            options[key] = value
    unknown = set(options) - {"needs", "expect", "server", "arch"}
    if unknown:
        raise ValueError(f"{config}: unknown differential options {sorted(unknown)}")
    doc = YAML(typ="safe", pure=True).load(text)
    package = str(doc["package"]["name"])
    return Case(
        name=name,
        directory=directory,
        config=config,
        package=package,
        arch=options.get("arch", "x86_64"),
        needs=tuple(n for n in options.get("needs", "").split(",") if n),
        expect_failure=options.get("expect") == "failure",
        server=options.get("server") == "true",
    )


def discover() -> list[Case]:
    """Every case: ``examples/<name>/`` then ``configs/<name>/`` (names are unique)."""
    cases: list[Case] = []
    for base in (EXAMPLES, CONFIGS):
        for directory in sorted(p for p in base.iterdir() if p.is_dir()):
            cases.append(_load_case(directory, directory.name))
    names = {c.name for c in cases}
    if len(names) != len(cases):
        raise ValueError("two differential cases share a directory name")
    for case in cases:
        missing = [n for n in case.needs if n not in names]
        if missing:
            raise ValueError(f"{case.config}: needs unknown cases {missing}")
    return cases


def needs_order(case: Case, by_name: dict[str, Case]) -> list[Case]:
    """The cases ``case`` needs, transitively, dependencies first (``case`` last)."""
    out: list[Case] = []

    def visit(c: Case, stack: tuple[str, ...]) -> None:
        if c.name in stack:
            raise ValueError(f"differential needs cycle: {' -> '.join((*stack, c.name))}")
        for n in c.needs:
            visit(by_name[n], (*stack, c.name))
        if c not in out:
            out.append(c)

    visit(case, ())
    return out
