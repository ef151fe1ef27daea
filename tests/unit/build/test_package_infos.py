"""Which packages a build writes: the main one and the subpackages melange builds."""

from __future__ import annotations

from melange2.build.executor import as_built, package_infos
from melange2.recipe import load_config


def test_a_subpackage_whose_if_is_false_is_not_packaged() -> None:
    config = load_config(
        """
package: {name: p, version: "1.0", epoch: 2}
vars: {flavour: full}
subpackages:
  - name: p-full
    if: "'${{vars.flavour}}' == 'full'"
  - name: p-slim
    if: "'${{vars.flavour}}' == 'slim'"
  - name: p-arm
    if: ${{build.arch}} == 'aarch64'
  - name: p-doc
""",
        arch="aarch64",
    )
    infos = package_infos(as_built(config), "aarch64")
    # p-arm: melange v0.34.0 sees only package/vars/range in a subpackage's if
    assert list(infos) == ["p", "p-full", "p-doc"]
    assert infos["p-full"].version == "1.0" and infos["p-full"].epoch == 2
