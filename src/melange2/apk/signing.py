"""RSA keys and signatures, as apk-tools, abuild and melange use them.

A key pair is two PEM files: ``NAME.rsa`` (PKCS#1 ``RSA PRIVATE KEY``) and
``NAME.rsa.pub`` (``PUBLIC KEY``, SubjectPublicKeyInfo), as ``melange keygen``
writes them. A signature is RSA PKCS#1 v1.5 over the bytes of a gzip stream,
stored in a tar entry named ``.SIGN.<ALGORITHM>.<KEY NAME>``, where the key name
is the public key's file name (the name apk-tools looks up in ``/etc/apk/keys``)::

    pair = generate_key(Path("keys/melange.rsa"))
    signer = Signer.from_files(pair.private_key)
    signature = signer.sign(control_stream)
    verify(signature, control_stream, load_public_key(pair.public_key))

``RSA256`` signs a SHA-256 digest: what melange v0.34.0 writes for packages and for
``APKINDEX.tar.gz`` (``.SIGN.RSA256.<key>.pub``), and the default here. ``RSA`` (SHA-1,
what abuild-sign and older melange wrote) is still verified, so repositories signed
that way stay readable; :class:`Signer` writes it only when asked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from melange2.apk._stream import gzip_member, tar_small_file
from melange2.apk.errors import ApkFormatError, ApkSignatureError

__all__ = [
    "DEFAULT_KEY_SIZE",
    "KeyPair",
    "PublicKeys",
    "SignatureAlgorithm",
    "Signer",
    "generate_key",
    "load_public_key",
    "load_public_keys",
    "signature_stream",
    "verify",
]

DEFAULT_KEY_SIZE = 4096
SIGNATURE_PREFIX = ".SIGN."

#: Trusted public keys by key name (the ``.rsa.pub`` file name).
PublicKeys = Mapping[str, rsa.RSAPublicKey]


class SignatureAlgorithm(StrEnum):
    """The ``<ALGORITHM>`` part of a ``.SIGN.<ALGORITHM>.<KEY NAME>`` entry."""

    RSA = "RSA"
    RSA256 = "RSA256"
    RSA512 = "RSA512"

    def hash(self) -> hashes.HashAlgorithm:
        match self:
            case SignatureAlgorithm.RSA:
                return hashes.SHA1()
            case SignatureAlgorithm.RSA256:
                return hashes.SHA256()
            case SignatureAlgorithm.RSA512:
                return hashes.SHA512()

    def entry_name(self, key_name: str) -> str:
        """The tar entry name of a signature by ``key_name``."""
        return f"{SIGNATURE_PREFIX}{self.value}.{key_name}"

    @classmethod
    def parse_entry_name(cls, name: str) -> tuple[SignatureAlgorithm, str] | None:
        """``(algorithm, key name)`` of a signature entry, ``None`` for unknown algorithms."""
        if not name.startswith(SIGNATURE_PREFIX):
            return None
        algorithm, dot, key_name = name[len(SIGNATURE_PREFIX) :].partition(".")
        if not dot or not key_name or algorithm not in cls.__members__:
            return None
        return cls(algorithm), key_name


@dataclass(frozen=True, kw_only=True)
class KeyPair:
    """Where :func:`generate_key` put the two halves."""

    private_key: Path
    public_key: Path

    @property
    def key_name(self) -> str:
        return self.public_key.name


def generate_key(path: Path, *, key_size: int = DEFAULT_KEY_SIZE) -> KeyPair:
    """Write a new RSA key to ``path`` (private, mode 0600) and ``path.pub`` (public).

    ``path`` is conventionally ``NAME.rsa``, like ``melange keygen NAME.rsa``.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public_path = path.with_name(path.name + ".pub")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    public_path.write_bytes(_public_pem(key.public_key()))
    return KeyPair(private_key=path, public_key=public_path)


@dataclass(frozen=True, kw_only=True)
class Signer:
    """An RSA private key and the name its signatures are filed under."""

    #: the public key's file name, e.g. ``melange.rsa.pub``
    key_name: str
    private_key: rsa.RSAPrivateKey = field(repr=False, compare=False)
    algorithm: SignatureAlgorithm = SignatureAlgorithm.RSA256

    def __post_init__(self) -> None:
        if not self.key_name or "/" in self.key_name or "\0" in self.key_name:
            raise ApkFormatError(f"invalid key name: {self.key_name!r}")

    @classmethod
    def from_pem(
        cls,
        pem: bytes,
        *,
        key_name: str,
        algorithm: SignatureAlgorithm = SignatureAlgorithm.RSA256,
        passphrase: bytes | None = None,
    ) -> Signer:
        try:
            key = serialization.load_pem_private_key(pem, password=passphrase)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ApkFormatError(f"cannot load private key {key_name}: {exc}") from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ApkFormatError(f"{key_name} is not an RSA private key")
        return cls(key_name=key_name, private_key=key, algorithm=algorithm)

    @classmethod
    def from_files(
        cls,
        private_key: Path,
        public_key: Path | None = None,
        *,
        algorithm: SignatureAlgorithm = SignatureAlgorithm.RSA256,
        passphrase: bytes | None = None,
    ) -> Signer:
        """Load ``private_key``; the key name is ``public_key``'s file name
        (by default ``private_key``'s name plus ``.pub``, as melange does)."""
        key_name = public_key.name if public_key is not None else private_key.name + ".pub"
        return cls.from_pem(
            private_key.read_bytes(), key_name=key_name, algorithm=algorithm, passphrase=passphrase
        )

    @property
    def signature_name(self) -> str:
        """The tar entry name, e.g. ``.SIGN.RSA256.melange.rsa.pub``."""
        return self.algorithm.entry_name(self.key_name)

    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def public_key_pem(self) -> bytes:
        return _public_pem(self.private_key.public_key())

    def sign(self, data: bytes) -> bytes:
        """The PKCS#1 v1.5 signature of ``data`` under :attr:`algorithm`'s digest."""
        return self.private_key.sign(data, padding.PKCS1v15(), self.algorithm.hash())


def verify(
    signature: bytes,
    data: bytes,
    pubkey: rsa.RSAPublicKey | bytes,
    *,
    algorithm: SignatureAlgorithm = SignatureAlgorithm.RSA256,
) -> None:
    """Check ``signature`` over ``data``; raise :class:`ApkSignatureError` if it does not hold.

    ``pubkey`` is a loaded key or PEM bytes.
    """
    key = pubkey if isinstance(pubkey, rsa.RSAPublicKey) else _load_public_pem(pubkey, "<pem>")
    try:
        key.verify(signature, data, padding.PKCS1v15(), algorithm.hash())
    except InvalidSignature as exc:
        raise ApkSignatureError("signature does not verify") from exc


def signature_stream(signer: Signer, signed: bytes, *, mtime: int = 0) -> bytes:
    """The signature gzip stream that goes in front of ``signed``.

    It is a tar *segment* (no end-of-archive blocks, as ``abuild-tar --cut`` leaves it)
    with one root-owned 0644 entry, ``signer.signature_name``, holding the signature
    of the ``signed`` bytes, compressed like ``gzip -n -9``.
    """
    entry = tar_small_file(signer.signature_name, signer.sign(signed), mode=0o644, mtime=mtime)
    return gzip_member(entry, level=9)


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    return _load_public_pem(path.read_bytes(), path.name)


def load_public_keys(paths: Iterable[Path]) -> dict[str, rsa.RSAPublicKey]:
    """Trusted keys by file name; a directory contributes every file in it (like /etc/apk/keys)."""
    keys: dict[str, rsa.RSAPublicKey] = {}
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for file in files:
            keys[file.name] = load_public_key(file)
    return keys


def _public_pem(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_public_pem(pem: bytes, name: str) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ApkFormatError(f"cannot load public key {name}: {exc}") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ApkFormatError(f"{name} is not an RSA public key")
    return key
