from __future__ import annotations

import stat
from pathlib import Path

import pytest

from melange2.apk import (
    ApkFormatError,
    ApkSignatureError,
    SignatureAlgorithm,
    Signer,
    generate_key,
    load_public_key,
    load_public_keys,
    verify,
)

from .conftest import Keys


def test_generate_key_writes_melange_style_pem_files(keys: Keys) -> None:
    pair = keys.pair
    assert pair.private_key.name == "test.rsa"
    assert pair.public_key.name == "test.rsa.pub" == pair.key_name
    assert pair.private_key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    assert pair.public_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600
    assert load_public_key(pair.public_key).key_size == 1024


def test_signer_key_name_is_public_key_file_name(keys: Keys, tmp_path: Path) -> None:
    assert keys.signer.key_name == "test.rsa.pub"
    # SHA-256 by default, as melange v0.34.0 signs
    assert keys.signer.signature_name == ".SIGN.RSA256.test.rsa.pub"
    renamed = tmp_path / "alpine-devel@example.org-1234.rsa.pub"
    renamed.write_bytes(keys.pair.public_key.read_bytes())
    signer = Signer.from_files(keys.pair.private_key, renamed)
    assert signer.signature_name == ".SIGN.RSA256.alpine-devel@example.org-1234.rsa.pub"
    assert signer.public_key_pem() == keys.pair.public_key.read_bytes()
    assert "private_key" not in repr(signer)


def test_sign_and_verify(keys: Keys) -> None:
    signature = keys.signer.sign(b"control stream")
    assert len(signature) == 128
    verify(signature, b"control stream", keys.trusted["test.rsa.pub"])
    verify(signature, b"control stream", keys.pair.public_key.read_bytes())
    with pytest.raises(ApkSignatureError):
        verify(signature, b"control streaM", keys.trusted["test.rsa.pub"])
    with pytest.raises(ApkSignatureError):
        verify(signature, b"control stream", keys.impostor["test.rsa.pub"])
    with pytest.raises(ApkSignatureError):  # right key, wrong digest algorithm
        verify(
            signature,
            b"control stream",
            keys.trusted["test.rsa.pub"],
            algorithm=SignatureAlgorithm.RSA,
        )


@pytest.mark.parametrize("algorithm", list(SignatureAlgorithm))
def test_algorithms(keys: Keys, algorithm: SignatureAlgorithm) -> None:
    signer = Signer.from_files(keys.pair.private_key, algorithm=algorithm)
    assert signer.signature_name == f".SIGN.{algorithm.value}.test.rsa.pub"
    verify(signer.sign(b"x"), b"x", keys.trusted["test.rsa.pub"], algorithm=algorithm)


def test_signature_entry_names() -> None:
    parse = SignatureAlgorithm.parse_entry_name
    assert parse(".SIGN.RSA.key.rsa.pub") == (SignatureAlgorithm.RSA, "key.rsa.pub")
    assert parse(".SIGN.RSA256.a.b") == (SignatureAlgorithm.RSA256, "a.b")
    assert parse(".SIGN.DSA.key.pub") is None
    assert parse(".SIGN.RSA") is None
    assert parse(".PKGINFO") is None


def test_load_public_keys_from_a_directory(keys: Keys, tmp_path: Path) -> None:
    directory = tmp_path / "etc-apk-keys"
    directory.mkdir()
    (directory / "a.rsa.pub").write_bytes(keys.pair.public_key.read_bytes())
    (directory / "b.rsa.pub").write_bytes(keys.pair.public_key.read_bytes())
    assert sorted(load_public_keys([directory])) == ["a.rsa.pub", "b.rsa.pub"]


def test_bad_keys(tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "garbage.rsa").write_bytes(b"not a key")
    with pytest.raises(ApkFormatError):
        Signer.from_files(tmp_path / "garbage.rsa")
    with pytest.raises(ApkFormatError):
        load_public_key(tmp_path / "garbage.rsa")
    with pytest.raises(ApkFormatError):
        Signer(key_name="a/b", private_key=keys.signer.private_key)


def test_generate_key_default_size_is_4096() -> None:
    import inspect

    assert inspect.signature(generate_key).parameters["key_size"].default == 4096
