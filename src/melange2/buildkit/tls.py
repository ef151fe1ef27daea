"""Client TLS for BuildKit daemons: what ``buildctl`` takes as ``--tlscacert``,
``--tlscert``, ``--tlskey`` and ``--tlsservername``.

A daemon started as ``buildkitd --tlscert server.pem --tlskey server-key.pem --tlscacert
ca.pem`` speaks TLS only and requires a client certificate signed by ``ca.pem``. Its
clients give the CA its certificate is checked against, their own certificate and key,
and optionally the name to check the daemon's certificate for (by default the host of
its address)::

    tls = load_client_tls(ca_cert=Path("ca.pem"), cert=Path("cert.pem"), key=Path("key.pem"))
    async with BuildkitClient("tcp://buildkit:1234", tls=tls) as bk:
        await bk.info()

The material is read and checked once (:func:`load_client_tls` from files,
:func:`client_tls_from_pem` from text), so that a missing file, a bad PEM block or a key
that is not the certificate's is an error naming the field when the farm starts or the
backend is added, never a failed handshake later. :class:`ClientTLS` keeps it as PEM in
memory; its ``repr`` never shows the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from melange2.errors import ConfigError

#: the settings' names, as the backends YAML and the API spell them
TLSField = Literal["caCert", "cert", "key", "serverName"]

#: buildctl's flag for each setting
FLAGS: dict[TLSField, str] = {
    "caCert": "--tlscacert",
    "cert": "--tlscert",
    "key": "--tlskey",
    "serverName": "--tlsservername",
}

_SERVER_NAME = re.compile(r"^[A-Za-z0-9._:\[\]-]{1,253}$")


class TLSMaterialError(ConfigError):
    """Invalid TLS settings for a BuildKit daemon."""

    def __init__(self, field: TLSField, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        #: which setting is wrong
        self.field: TLSField = field
        #: what is wrong with it (without the field's name)
        self.problem = problem


@dataclass(frozen=True, kw_only=True)
class ClientTLS:
    """How to reach a daemon over TLS. Build it with :func:`load_client_tls` or
    :func:`client_tls_from_pem`, which check it."""

    #: PEM of the CA certificate(s) the daemon's certificate must chain to; ``None``:
    #: gRPC's default roots
    ca_cert: bytes | None = None
    #: PEM of the client certificate (chain) shown to the daemon; ``None``: none
    cert: bytes | None = None
    #: PEM (PKCS#8) of the client certificate's private key
    key: bytes | None = field(default=None, repr=False)
    #: the name the daemon's certificate must carry; "": the host of its address
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_cert, private_key=self.key, certificate_chain=self.cert
        )

    def channel_options(self) -> list[tuple[str, str]]:
        if not self.server_name:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def _read(path: Path | None, name: TLSField) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSMaterialError(name, f"cannot read {path}: {exc.strerror or exc}") from exc


def load_client_tls(
    *,
    ca_cert: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    server_name: str = "",
) -> ClientTLS:
    """Read and check TLS settings from files (paths as buildctl takes them)."""
    return client_tls_from_pem(
        ca_cert=_read(ca_cert, "caCert"),
        cert=_read(cert, "cert"),
        key=_read(key, "key"),
        server_name=server_name,
    )


def _pem_bytes(value: bytes | str | None, name: TLSField) -> bytes | None:
    if value is None:
        return None
    data = value.encode("utf-8", "replace") if isinstance(value, str) else value
    if not data.strip():
        raise TLSMaterialError(name, "empty")
    if b"-----BEGIN " not in data:
        raise TLSMaterialError(name, "not PEM (no -----BEGIN line)")
    return data


def _certificates(data: bytes, name: TLSField) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TLSMaterialError(name, f"not a PEM certificate ({exc})") from exc


def client_tls_from_pem(
    *,
    ca_cert: bytes | str | None = None,
    cert: bytes | str | None = None,
    key: bytes | str | None = None,
    server_name: str = "",
) -> ClientTLS:
    """Check TLS settings given as PEM text, and keep them normalised (certificates as
    PEM, the key as unencrypted PKCS#8 PEM).

    Refused, with :class:`TLSMaterialError` naming the field: text that is not PEM, a
    certificate that does not parse, a key without a certificate or the other way round,
    an encrypted key, a key that is not the certificate's, a certificate whose extended
    key usage does not allow client authentication, a malformed server name.
    """
    ca_pem = _pem_bytes(ca_cert, "caCert")
    cert_pem = _pem_bytes(cert, "cert")
    key_pem = _pem_bytes(key, "key")
    if server_name and not _SERVER_NAME.match(server_name):
        raise TLSMaterialError("serverName", f"not a host name: {server_name!r}")
    ca_out = None
    if ca_pem is not None:
        cas = _certificates(ca_pem, "caCert")
        ca_out = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cas)
    if (cert_pem is None) != (key_pem is None):
        missing: TLSField = "key" if key_pem is None else "cert"
        raise TLSMaterialError(missing, "required with " + ("cert" if key_pem is None else "key"))
    cert_out = key_out = None
    if cert_pem is not None and key_pem is not None:
        chain = _certificates(cert_pem, "cert")
        try:
            private = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError as exc:  # encrypted without a password
            raise TLSMaterialError("key", "encrypted keys are not supported") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise TLSMaterialError("key", f"not a PEM private key ({exc})") from exc
        leaf = chain[0]
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if private.public_key().public_bytes(
            serialization.Encoding.PEM, spki
        ) != leaf.public_key().public_bytes(serialization.Encoding.PEM, spki):
            raise TLSMaterialError("key", "does not belong to the certificate in cert")
        try:
            usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            pass
        else:
            if not {
                ExtendedKeyUsageOID.CLIENT_AUTH,
                ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
            } & set(usage):
                raise TLSMaterialError(
                    "cert", "its extended key usage does not allow client authentication"
                )
        cert_out = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        key_out = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return ClientTLS(ca_cert=ca_out, cert=cert_out, key=key_out, server_name=server_name)
