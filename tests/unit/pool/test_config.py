"""The backends YAML: api.md's fields, and a backend's ``tls`` (buildctl's settings as
paths): read at start-up, every error names the file, the backend and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from melange2.errors import ConfigError
from melange2.farm.certs import FarmCerts, make_certs
from melange2.pool.config import load_pool_config
from melange2.pool.pool import BackendPool


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> FarmCerts:
    return make_certs(tmp_path_factory.mktemp("config") / "tls")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "backends.yaml"
    path.write_text(text)
    return path


def test_api_md_fields_and_a_tls_backend(tmp_path: Path, certs: FarmCerts) -> None:
    path = write(
        tmp_path,
        "backends:\n"
        "  - addr: tcp://plain:1234\n    arch: x86_64\n    maxJobs: 2\n"
        "    labels: {tier: standard}\n"
        "  - addr: tcp://secure:1234\n    arch: aarch64\n"
        "    tls:\n"
        f"      caCert: {certs.ca_cert}\n"
        f"      cert: {certs.client_cert}\n"
        f"      key: {certs.client_key}\n"
        "      serverName: buildkit.internal\n"
        "defaultMaxJobs: 3\nfailureThreshold: 5\nrecoveryTimeout: 1m\n",
    )
    config = load_pool_config(path)
    plain, secure = config.backends
    assert plain.tls is None and plain.max_jobs == 2 and plain.labels == {"tier": "standard"}
    assert secure.tls is not None
    assert secure.tls.ca_cert == certs.ca_cert.read_bytes()
    assert secure.tls.cert == certs.client_cert.read_bytes()
    assert secure.tls.key == certs.client_key.read_bytes()
    assert secure.tls.server_name == "buildkit.internal"
    assert (config.default_max_jobs, config.failure_threshold, config.recovery_timeout) == (
        3,
        5,
        60.0,
    )
    pool = BackendPool.from_config(config)
    assert pool.tls_for("tcp://secure:1234") == secure.tls
    assert pool.tls_for("tcp://plain:1234") is None
    assert pool.tls_for("tcp://unknown:1") is None


def test_relative_paths_are_from_the_yaml_files_directory(tmp_path: Path, certs: FarmCerts) -> None:
    # the files sit in <dir>/tls/, the YAML in <dir>/
    path = certs.ca_cert.parent.parent / "backends.yaml"
    path.write_text(
        "backends:\n  - addr: tcp://b:1\n    arch: x86_64\n"
        "    tls: {caCert: tls/ca.pem, cert: tls/client.pem, key: tls/client-key.pem}\n"
    )
    tls = load_pool_config(path).backends[0].tls
    assert tls is not None and tls.key == certs.client_key.read_bytes()


def test_an_empty_tls_mapping_is_tls_with_grpcs_default_roots(tmp_path: Path) -> None:
    config = load_pool_config(
        write(tmp_path, "backends:\n  - addr: tcp://b:1\n    arch: x86_64\n    tls: {}\n")
    )
    tls = config.backends[0].tls
    assert tls is not None and tls.ca_cert is None and tls.cert is None


def backend_with_tls(tmp_path: Path, tls: str) -> str:
    path = write(
        tmp_path,
        "backends:\n  - addr: tcp://ok:1\n    arch: x86_64\n"
        "  - addr: tcp://bad:1\n    arch: x86_64\n"
        f"    tls: {tls}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_pool_config(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("tls", "field", "problem"),
    [
        ("{caCert: /nonexistent/ca.pem}", "caCert", "cannot read /nonexistent/ca.pem: No such"),
        ("{caCert: garbage.txt}", "caCert", "not PEM (no -----BEGIN line)"),
        ("{cert: CLIENT}", "key", "required with cert"),
        ("{cert: CLIENT, key: DIR}", "key", "Is a directory"),
        ("{cert: CLIENT, key: CA}", "key", "not a PEM private key"),
        ("{cert: SERVER, key: SKEY}", "cert", "does not allow client authentication"),
        ("{caCert: CA, tlscacert: CA}", "tlscacert", "unknown field"),
        ("{caCert: 3}", "caCert", "expected a non-empty string"),
        ("{serverName: 'a b'}", "serverName", "not a host name"),
    ],
)
def test_tls_errors_name_the_file_backend_and_field(
    tmp_path: Path, certs: FarmCerts, tls: str, field: str, problem: str
) -> None:
    (tmp_path / "garbage.txt").write_text("not a certificate\n")
    (tmp_path / "dir").mkdir()
    for name, value in {
        "CLIENT": certs.client_cert,
        "SKEY": certs.server_key,
        "SERVER": certs.server_cert,
        "DIR": tmp_path / "dir",
        "CA": certs.ca_cert,
    }.items():
        tls = tls.replace(name, str(value))
    message = backend_with_tls(tmp_path, tls)
    assert message.startswith(
        f"{tmp_path / 'backends.yaml'}: backends[1] (tcp://bad:1).tls.{field}: "
    )
    assert problem in message


def test_tls_must_be_a_mapping(tmp_path: Path) -> None:
    message = backend_with_tls(tmp_path, "yes")
    assert "backends[1] (tcp://bad:1).tls: expected a mapping" in message


def test_a_backends_cpu_and_memory_are_quantities(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "backends:\n"
        "  - {addr: 'tcp://big:1', arch: x86_64, cpu: 16, memory: 64Gi}\n"
        "  - {addr: 'tcp://half:1', arch: x86_64, cpu: 7500m}\n"
        "  - {addr: 'tcp://any:1', arch: x86_64}\n",
    )
    big, half, anything = load_pool_config(path).backends
    assert (big.cpu, big.memory) == (16_000, 64 * 2**30)
    assert (half.cpu, half.memory) == (7_500, None)
    assert (anything.cpu, anything.memory) == (None, None)
    pool = BackendPool.from_config(load_pool_config(path))
    assert pool.backends["tcp://big:1"].capacity.cpu == 16_000


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("cpu: lots", r"backends\[0\]\.cpu: 'lots' is not a quantity"),
        ("memory: 16GB", r"backends\[0\]\.memory: '16GB' is not a quantity"),
        ("cpu: 0", r"backends\[0\]\.cpu: must be more than 0 \(leave it out: unlimited\)"),
        ("memory: -1Gi", r"backends\[0\]\.memory: '-1Gi': must not be negative"),
    ],
)
def test_bad_resources_name_the_file_backend_and_field(
    tmp_path: Path, entry: str, needle: str
) -> None:
    path = write(tmp_path, f"backends:\n  - addr: tcp://x:1\n    arch: x86_64\n    {entry}\n")
    with pytest.raises(ConfigError, match=rf"backends.yaml: {needle}"):
        load_pool_config(path)
