"""Reuse records round-trip; the input digest changes with each of its inputs and with
nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from melange2.apk.index import IndexRecord
from melange2.apk.signing import Signer, generate_key
from melange2.build.inputs import input_digest, quick_digest, tree_digest
from melange2.jobs import BuildSpec
from melange2.recipe import load_config
from melange2.service.reuse import ReuseRecord, settle_reuse

CONFIG = """\
package:
  name: foo
  version: 1.2.3
  epoch: 1
  description: foo
environment:
  contents:
    packages: [busybox]
pipeline:
  - runs: echo ${{package.version}}   # a comment
"""


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    key = tmp_path_factory.mktemp("k") / "k.rsa"
    generate_key(key, key_size=2048)
    return Signer.from_files(key)


def _digest(
    tmp_path: Path, text: str, signer: Signer | None, over: dict[str, object] | None = None
) -> str:
    path = tmp_path / f"c{abs(hash(text))}.yaml"
    path.write_text(text)
    args: dict[str, object] = {
        "config": load_config(path, arch="x86_64"),
        "definition": b"llb-bytes",
        "arch": "x86_64",
        "signer": signer,
        "source_date_epoch": 0,
        "with_test": False,
    }
    args.update(over or {})
    return input_digest(**args)  # type: ignore[arg-type]


def test_digest_is_stable_and_ignores_comments(tmp_path: Path, signer: Signer) -> None:
    first = _digest(tmp_path, CONFIG, signer)
    assert first == _digest(tmp_path, CONFIG, signer)
    assert first.startswith("sha256:") and len(first) == 71
    assert _digest(tmp_path, CONFIG.replace("# a comment", "# another"), signer) == first


@pytest.mark.parametrize(
    "change",
    [
        {"definition": b"other-llb"},
        {"arch": "aarch64"},
        {"source_date_epoch": 5},
        {"with_test": True},
        {"base_image_digest": "sha256:" + "0" * 64},
        {"signer": None},
    ],
)
def test_digest_changes_with_each_input(
    tmp_path: Path, signer: Signer, change: dict[str, object]
) -> None:
    assert _digest(tmp_path, CONFIG, signer, change) != _digest(tmp_path, CONFIG, signer)


def test_digest_changes_with_the_config_after_substitution(tmp_path: Path, signer: Signer) -> None:
    assert _digest(tmp_path, CONFIG.replace("1.2.3", "1.2.4"), signer) != _digest(
        tmp_path, CONFIG, signer
    )


def test_reuse_record_round_trips() -> None:
    record = IndexRecord(
        checksum=b"\x01" * 20,
        name="foo",
        version="1.2.3-r1",
        arch="x86_64",
        size=1234,
        installed_size=4096,
        description="foo",
        depends=("bar",),
    )
    reuse = ReuseRecord(
        input_digest="sha256:" + "a" * 64,
        arch="x86_64",
        build_id="bld-0011223344556677",
        package="foo",
        artifacts="bld-0011223344556677-foo",
        records=(record,),
    )
    back = ReuseRecord.decode(reuse.encode())
    assert back == reuse
    assert back.files() == ["x86_64/foo-1.2.3-r1.apk"]


def test_publish_mode_defaults_to_each_package() -> None:
    # as a stored spec reads back (a build stored before the field, or with nonsense)
    assert BuildSpec.from_json({}).publish == "package"
    assert BuildSpec.from_json({"publish": "build"}).publish == "build"
    assert BuildSpec.from_json({"publish": "nonsense"}).publish == "package"


# -- the quick digest and reuse decided at submission -----------------------------------


def _quick(signer: Signer | None, **over: object) -> str:
    args: dict[str, object] = {
        "arch": "x86_64",
        "config_text": CONFIG,
        "pipelines": {"p/x.yaml": b"runs: true"},
        "sources": {"data.txt": b"v1"},
        "environment_key": "e" * 64,
        "options": {"env": {}, "with_test": False, "debug": False},
        "signer": signer,
    }
    args.update(over)
    return quick_digest(**args)  # type: ignore[arg-type]


def test_quick_digest_changes_with_each_input(signer: Signer) -> None:
    base = _quick(signer)
    assert base == _quick(signer) and base.startswith("sha256:")
    variants = [
        _quick(signer, arch="aarch64"),
        _quick(signer, config_text=CONFIG + "# a comment\n"),  # stricter than input_digest
        _quick(signer, pipelines={"p/x.yaml": b"runs: false"}),
        _quick(signer, pipelines={}),
        _quick(signer, sources={"data.txt": b"v2"}),
        _quick(signer, sources={"other.txt": b"v1"}),
        _quick(signer, environment_key="f" * 64),
        _quick(signer, options={"env": {"A": "1"}, "with_test": False, "debug": False}),
        _quick(signer, options={"env": {}, "with_test": True, "debug": False}),
        _quick(signer, options={"env": {}, "with_test": False, "debug": True}),
        _quick(None),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_tree_digest_names_paths_and_contents() -> None:
    assert tree_digest({"a": b"1", "b": b"2"}) == tree_digest({"b": b"2", "a": b"1"})
    assert tree_digest({"a": b"1"}) != tree_digest({"b": b"1"})
    assert tree_digest({"a": b"12"}) != tree_digest({"a1": b"2"})


def test_settle_reuse_keeps_what_nothing_rebuilt_can_change() -> None:
    # lib -> app -> tool; other alone; env: what each one's environment installs
    deps = {"app": ["lib"], "tool": ["app"]}
    outputs = {"lib": {"lib", "lib-dev"}, "app": {"app"}, "tool": {"tool"}, "other": {"other"}}
    installs = {
        "lib": frozenset({"busybox"}),
        "app": frozenset({"busybox", "lib-dev"}),
        "tool": frozenset({"busybox", "app"}),
        "other": frozenset({"busybox", "lib"}),  # installs lib's published package
    }
    names = ["lib", "app", "tool", "other"]

    def settle(candidates: set[str]) -> set[str]:
        return settle_reuse(
            candidates, packages=names, deps=deps, installs=installs, outputs=outputs
        )

    assert settle(set(names)) == set(names)
    # lib will be built again: app (depends on it) and, through app, tool are not reused;
    # other installs lib's package, which the build will replace: not reused either
    assert settle({"app", "tool", "other"}) == set()
    # only tool changed: everything below it is reused
    assert settle({"lib", "app", "other"}) == {"lib", "app", "other"}
    # a subpackage counts: other installs nothing of app's, so app's rebuild leaves it
    assert settle({"lib", "tool", "other"}) == {"lib", "other"}
    # a dependency outside the build does not hold anything back
    assert settle_reuse(
        {"app"}, packages=["app"], deps={"app": ["lib"]}, installs={}, outputs={}
    ) == {"app"}
