"""Certificates for a local farm whose daemons speak TLS (``make farm-up FARM_TLS=1``):
a CA of its own, a server certificate for ``127.0.0.1``/``localhost`` that every daemon
serves, and a client certificate the server and the CLI show. Made with
``cryptography`` (EC P-256 keys, valid for 30 days), written with keys readable by
their owner only::

    <dir>/ca.pem                 the CA's certificate (its key is not kept)
    <dir>/server.pem, server-key.pem
    <dir>/client.pem, client-key.pem
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from melange2.buildkit.tls import ClientTLS, load_client_tls

LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True, kw_only=True)
class FarmCerts:
    """Where a farm's TLS files are."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_tls(self, server_name: str = "") -> ClientTLS:
        return load_client_tls(
            ca_cert=self.ca_cert,
            cert=self.client_cert,
            key=self.client_key,
            server_name=server_name,
        )

    def buildkitd_flags(self) -> list[str]:
        """``buildkitd``'s flags to serve TLS and require a client certificate."""
        return [
            "--tlscacert",
            str(self.ca_cert),
            "--tlscert",
            str(self.server_cert),
            "--tlskey",
            str(self.server_key),
        ]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "melange2 local farm"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certs(
    directory: Path,
    *,
    hosts: Sequence[str] = LOCAL_HOSTS,
    ca_name: str = "melange2 local farm CA",
    days: int = 30,
) -> FarmCerts:
    """Make a CA, a server certificate for ``hosts`` and a client certificate under
    ``directory`` (replacing what was there)."""
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(
        common_name: str, usage: x509.ObjectIdentifier, san: Sequence[str]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(h) for h in san]), critical=False
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = issue("buildkitd", ExtendedKeyUsageOID.SERVER_AUTH, hosts)
    client, client_key = issue("melange2 client", ExtendedKeyUsageOID.CLIENT_AUTH, ())
    certs = farm_certs(directory)
    pem = serialization.Encoding.PEM
    _write(certs.ca_cert, ca.public_bytes(pem))
    _write(certs.server_cert, server.public_bytes(pem))
    _write(certs.server_key, _pem(server_key), private=True)
    _write(certs.client_cert, client.public_bytes(pem))
    _write(certs.client_key, _pem(client_key), private=True)
    return certs


def farm_certs(directory: Path) -> FarmCerts:
    """The files :func:`make_certs` wrote under ``directory``."""
    return FarmCerts(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
