"""The package map holds: read from every module's imports (its source, not a run).

* nothing imports :mod:`melange2.api` but the server entry point and the dashboard
  (:mod:`melange2.web`, the HTTP layer's pages, on the API's services and auth);
* the wire models (:mod:`melange2.wire`) sit below api/ and cli/: they import neither,
  nor the service; the service never imports the wire models (the API converts);
* nothing imports :mod:`melange2.cli` but the CLI and the server's flags (``cli.tls``);
* :class:`~melange2.platform.Platform` lives below oci/ and buildkit/: oci/ does not
  reach into buildkit/."""

from __future__ import annotations

import ast
from pathlib import Path

import melange2

SRC = Path(melange2.__file__).parent


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        if "_proto" in rel.parts:
            continue
        module = ".".join(rel.parts).removesuffix(".__init__")
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        found[module] = {n for n in names if n == "melange2" or n.startswith("melange2.")}
    return found


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _importers(package: str) -> set[str]:
    return {
        m
        for m, names in _imports().items()
        if not _inside(m, package) and any(_inside(n, package) for n in names)
    }


def test_only_the_server_and_the_dashboard_import_the_api() -> None:
    found = _importers("melange2.api")
    assert "melange2.server" in found
    assert {m for m in found if not _inside(m, "melange2.web")} == {"melange2.server"}


def test_the_wire_models_sit_below_api_cli_and_service() -> None:
    wire = _imports()["melange2.wire"]
    for above in ("melange2.api", "melange2.cli", "melange2.service", "melange2.scheduler"):
        assert not any(_inside(n, above) for n in wire), (above, wire)
    assert not any(_inside(m, "melange2.service") for m in _importers("melange2.wire"))


def test_only_the_cli_and_the_server_flags_import_the_cli() -> None:
    assert _importers("melange2.cli") <= {"melange2.server", "melange2.__main__"}


def test_oci_does_not_reach_into_buildkit() -> None:
    for module, names in _imports().items():
        if _inside(module, "melange2.oci"):
            assert not any(_inside(n, "melange2.buildkit") for n in names), module
