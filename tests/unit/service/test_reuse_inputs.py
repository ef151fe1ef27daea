"""Reuse records round-trip; the input digest changes with each of its inputs and with
nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from melange2.apk.index import IndexRecord
from melange2.apk.signing import Signer, generate_key
from melange2.build.inputs import input_digest
from melange2.ids import BuildId
from melange2.jobs import Build, BuildStatus
from melange2.recipe import load_config
from melange2.service.reuse import ReuseRecord
from melange2.service.runner import publish_mode

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
    def build(spec: dict[str, str]) -> Build:
        from datetime import UTC, datetime

        return Build(
            id=BuildId("bld-00"),
            status=BuildStatus.PENDING,
            packages=(),
            spec=spec,
            created_at=datetime.now(UTC),
        )

    assert publish_mode(build({})) == "package"
    assert publish_mode(build({"publish": "build"})) == "build"
    assert publish_mode(build({"publish": "nonsense"})) == "package"
