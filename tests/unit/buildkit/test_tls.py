"""Client TLS settings, read and checked before any daemon is dialled: real certificates
(made as the TLS farm makes them), every refusal names the field, the key never shows."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from melange2.buildkit.errors import map_grpc_errors
from melange2.buildkit.tls import (
    ClientTLS,
    TLSMaterialError,
    client_tls_from_pem,
    load_client_tls,
)
from melange2.errors import BuildkitUnavailable, ConfigError
from melange2.farm.certs import FarmCerts, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> FarmCerts:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> FarmCerts:
    return make_certs(tmp_path_factory.mktemp("other-tls"), ca_name="another CA")


def refused(field: str, match: str, **kw: object) -> None:
    with pytest.raises(TLSMaterialError, match=match) as info:
        if any(isinstance(v, Path) for v in kw.values()):
            load_client_tls(**kw)  # type: ignore[arg-type]
        else:
            client_tls_from_pem(**kw)  # type: ignore[arg-type]
    assert info.value.field == field
    assert isinstance(info.value, ConfigError)
    assert str(info.value).startswith(f"{field}: ")


def test_files_are_read_and_kept_as_pem(certs: FarmCerts) -> None:
    tls = load_client_tls(
        ca_cert=certs.ca_cert, cert=certs.client_cert, key=certs.client_key, server_name="localhost"
    )
    assert tls.ca_cert == certs.ca_cert.read_bytes()
    assert tls.cert == certs.client_cert.read_bytes()
    assert tls.key == certs.client_key.read_bytes()
    assert tls.server_name == "localhost"
    assert tls.channel_options() == [("grpc.ssl_target_name_override", "localhost")]
    assert isinstance(tls.credentials(), grpc.ChannelCredentials)
    assert "PRIVATE" not in repr(tls) and "key=" not in repr(tls)


def test_ca_only_and_server_name_only_are_tls_without_a_client_certificate(
    certs: FarmCerts,
) -> None:
    assert load_client_tls(ca_cert=certs.ca_cert).cert is None
    by_name = client_tls_from_pem(server_name="buildkit.internal")
    assert by_name == ClientTLS(server_name="buildkit.internal")
    assert by_name.channel_options() == [("grpc.ssl_target_name_override", "buildkit.internal")]


def test_a_traditional_key_is_kept_as_pkcs8(certs: FarmCerts) -> None:
    key = serialization.load_pem_private_key(certs.client_key.read_bytes(), password=None)
    traditional = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert b"EC PRIVATE KEY" in traditional
    tls = client_tls_from_pem(cert=certs.client_cert.read_text(), key=traditional.decode())
    assert tls.key == certs.client_key.read_bytes()


def test_unreadable_files_name_the_field(certs: FarmCerts, tmp_path: Path) -> None:
    refused("caCert", "cannot read .*missing.pem: No such file", ca_cert=tmp_path / "missing.pem")
    refused("key", "cannot read .*: Is a directory", cert=certs.client_cert, key=tmp_path)


def test_bad_pem_names_the_field(certs: FarmCerts, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    refused("caCert", r"not PEM \(no -----BEGIN line\)", ca_cert=garbage)
    refused("caCert", "empty", ca_cert="  \n")
    refused("caCert", "not a PEM certificate", ca_cert=certs.client_key.read_text())
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    refused("cert", "not a PEM certificate", cert=broken, key=certs.client_key.read_text())
    refused(
        "key",
        "not a PEM private key",
        cert=certs.client_cert.read_text(),
        key=certs.ca_cert.read_text(),
    )


def test_cert_and_key_go_together(certs: FarmCerts) -> None:
    refused("key", "required with cert", cert=certs.client_cert.read_text())
    refused("cert", "required with key", key=certs.client_key.read_text())


def test_a_key_of_another_certificate_is_refused(certs: FarmCerts, other: FarmCerts) -> None:
    refused(
        "key",
        "does not belong to the certificate",
        cert=certs.client_cert,
        key=other.client_key,
    )


def test_an_encrypted_key_is_refused(certs: FarmCerts) -> None:
    key = serialization.load_pem_private_key(certs.client_key.read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    refused(
        "key",
        "encrypted keys are not supported",
        cert=certs.client_cert.read_bytes(),
        key=encrypted,
    )


def test_a_server_only_certificate_is_not_a_client_certificate(certs: FarmCerts) -> None:
    usage = x509.load_pem_x509_certificate(certs.server_cert.read_bytes()).extensions
    assert usage.get_extension_for_class(x509.ExtendedKeyUsage)
    refused(
        "cert",
        "does not allow client authentication",
        cert=certs.server_cert,
        key=certs.server_key,
    )


def test_a_malformed_server_name_is_refused() -> None:
    refused("serverName", "not a host name", server_name="bad name\n")


def _unavailable(details: str, *, tls: bool) -> str:
    with pytest.raises(BuildkitUnavailable) as info, map_grpc_errors("tcp://d:1", tls=tls):
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details
        )
    return info.value.message


def test_failed_handshakes_get_a_hint() -> None:
    prefix = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: "
    assert "serves TLS" in _unavailable(prefix + "Socket closed", tls=False)
    assert "refused the client certificate" in _unavailable(
        prefix + "Unwrap failed (TSI_DATA_CORRUPTED)", tls=True
    )
    assert "not signed by the given CA" in _unavailable(
        prefix + "Tls handshake failed: CERTIFICATE_VERIFY_FAILED", tls=True
    )
    assert "set the TLS server name" in _unavailable(
        prefix + "Hostname Verification Check failed.", tls=True
    )
    assert "does the daemon serve TLS?" in _unavailable(
        prefix.replace("UNAVAILABLE", "UNKNOWN")
        + "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: WRONG_VERSION_NUMBER",
        tls=True,
    )
    # a refused connection is no TLS matter
    refused_conn = prefix + "Connection refused"
    assert _unavailable(refused_conn, tls=True).endswith("Connection refused")
    assert _unavailable(refused_conn, tls=False).endswith("Connection refused")
