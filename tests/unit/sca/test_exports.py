from __future__ import annotations

import melange2.sca as sca
import melange2.sca.lint as lint


def test_public_surface_is_explicit() -> None:
    exported = set(sca.__all__)
    public = {name for name in vars(sca) if not name.startswith("_")}
    modules = {"deps", "elf", "pkgconfig", "shebang", "tree", "lint", "annotations"}
    assert public - modules == exported
    for name in sca.__all__:
        assert getattr(sca, name) is not None


def test_the_lint_module_exports_what_the_executor_uses() -> None:
    for name in ("lint_build", "LintTarget", "LintReport", "LintFinding", "unknown_linters"):
        assert name in lint.__all__
