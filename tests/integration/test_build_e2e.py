"""`melange2 build` end to end on real buildkitd: the examples build into signed APKs,
the lib/app pair proves a dependency is installed in the build environment, a failing
step is named with its exit code and output, and builds are reproducible.

The APKs are checked with our reader, with tar(1), gzip(1) and openssl(1), and by the
field's own installer: apko (built from its Go module at set-up) installs the lib/app
pair from the output directories as repositories with our public key, and refuses them
with a wrong one.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from melange2.apk import load_public_keys, read_apk, read_index_tar_gz
from melange2.apk.signing import generate_key
from melange2.farm.local import FarmEnv

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("keys") / "e2e.rsa"
    generate_key(key, key_size=2048)
    return key


def melange2(
    farm: FarmEnv,
    *args: str,
    out_dir: Path,
    extra_repo: Path | None = None,
    key: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "melange2",
        *args,
        "--out-dir",
        str(out_dir),
        "--buildkit-addr",
        farm.buildkit_addrs[0],
        "--registry",
        farm.registry,
        "--repository-append",
        farm.extra["BOOTSTRAP_REPO"],
        "--keyring-append",
        farm.extra["BOOTSTRAP_KEY"],
        "--apk-cache-dir",
        str(out_dir / ".cache"),
        "--plain",
    ]
    if key is not None:
        argv += ["--signing-key", str(key)]
    if extra_repo is not None:
        argv += ["--repository-append", str(extra_repo)]
        if key is not None:
            argv += ["--keyring-append", f"{key}.pub"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)


def tar_list(apk: Path) -> list[str]:
    out = subprocess.run(["tar", "-tzf", str(apk)], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_hello_builds_signed_packages_and_passes_its_test(
    farm: FarmEnv, signing_key: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = melange2(
        farm, "build", "examples/hello/hello.yaml", "--with-test", out_dir=out, key=signing_key
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[done] test hello: greets" in result.stdout
    arch_dir = out / "x86_64"
    main, doc = arch_dir / "hello-1.2.0-r0.apk", arch_dir / "hello-doc-1.2.0-r0.apk"
    keys = load_public_keys([Path(f"{signing_key}.pub")])

    # our reader: signature, metadata, files and modes
    pkg = read_apk(main)
    pkg.verify(keys)
    assert (pkg.info.name, pkg.info.version, pkg.info.arch) == ("hello", "1.2.0", "x86_64")
    assert pkg.info.depends == ("busybox",) and pkg.info.origin == "hello"
    files = {e.path: e for e in pkg.entries}
    assert files["usr/bin/hello"].mode & 0o777 == 0o755
    assert not any(p.startswith("usr/share/doc") for p in files)
    assert "usr/share/doc/hello/README" in {e.path for e in read_apk(doc).entries}

    # independent checks: tar lists all three streams; gzip -t; openssl verifies the signature
    listing = tar_list(main)
    assert listing[0] == ".SIGN.RSA256.e2e.rsa.pub" and ".PKGINFO" in listing
    assert "usr/bin/hello" in listing
    subprocess.run(["gzip", "-t", str(main)], check=True)
    hello = subprocess.run(
        ["tar", "-xzOf", str(main), "usr/bin/hello"], capture_output=True, text=True, check=True
    ).stdout
    assert "Hello from melange2" in hello

    index = read_index_tar_gz(arch_dir / "APKINDEX.tar.gz", keys=keys)
    assert {(r.name, r.version) for r in index.records} == {
        ("hello", "1.2.0-r0"),
        ("hello-doc", "1.2.0-r0"),
    }
    # the full log has a header per step and the steps' names
    log = (out / "logs" / "hello-x86_64.log").read_text()
    assert "==> install" in log and "<== install: done" in log


def test_signature_verifies_with_openssl(farm: FarmEnv, signing_key: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        melange2(
            farm, "build", "examples/libgreet/libgreet.yaml", out_dir=out, key=signing_key
        ).returncode
        == 0
    )
    apk = (out / "x86_64" / "libgreet-0.3.1-r2.apk").read_bytes()
    # split the concatenated gzip streams: signature, control, data
    from melange2.apk import split_streams

    signature_stream, control, _data = split_streams(apk)
    sig = subprocess.run(
        ["tar", "-xzOf", "-", ".SIGN.RSA256.e2e.rsa.pub"],
        input=signature_stream,
        capture_output=True,
        check=True,
    ).stdout
    (tmp_path / "control").write_bytes(control)
    (tmp_path / "sig").write_bytes(sig)
    verified = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            f"{signing_key}.pub",
            "-signature",
            str(tmp_path / "sig"),
            str(tmp_path / "control"),
        ],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0 and "Verified OK" in verified.stdout


def test_app_build_installs_the_library_it_needs(
    farm: FarmEnv, signing_key: Path, tmp_path: Path
) -> None:
    lib_out = tmp_path / "lib"
    lib = melange2(
        farm, "build", "examples/libgreet/libgreet.yaml", out_dir=lib_out, key=signing_key
    )
    assert lib.returncode == 0, lib.stdout + lib.stderr

    # without the library's repository the environment cannot be resolved
    alone = melange2(farm, "build", "examples/greet-app/greet-app.yaml", out_dir=tmp_path / "alone")
    assert alone.returncode != 0
    assert "libgreet" in alone.stderr

    app_out = tmp_path / "app"
    app = melange2(
        farm,
        "build",
        "examples/greet-app/greet-app.yaml",
        out_dir=app_out,
        extra_repo=lib_out,
        key=signing_key,
    )
    assert app.returncode == 0, app.stdout + app.stderr
    # the step that fails when libgreet's files are absent ran and passed
    assert "[done] check libgreet is installed" in app.stdout
    assert "LIBGREET_VERSION=0.3.1-r2" in app.stdout
    app_pkg = read_apk(app_out / "x86_64" / "greet-app-1.0.0-r0.apk")
    assert app_pkg.info.depends == ("libgreet",)

    # apko installs greet-app, resolving its runtime dependency libgreet from the other
    # output directory; signatures checked with our key
    public = signing_key.with_name(signing_key.name + ".pub")
    rootfs = apko_install(tmp_path / "apko", [app_out, lib_out], public, ["greet-app"])
    assert rootfs.returncode == 0, rootfs.stderr
    files = subprocess.run(
        ["tar", "tf", str(tmp_path / "apko" / "rootfs.tar")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "usr/bin/greet-app" in files and "usr/share/libgreet/greet.sh" in files
    # a key that did not sign them: refused
    wrong = tmp_path / "wrong" / "e2e.rsa"
    wrong.parent.mkdir()
    generate_key(wrong, key_size=2048)
    refused = apko_install(
        tmp_path / "apko-wrong", [app_out, lib_out], wrong.with_name("e2e.rsa.pub"), ["greet-app"]
    )
    assert refused.returncode != 0
    assert "signature" in refused.stderr.lower() or "verif" in refused.stderr.lower()


def apko_install(
    workdir: Path, repos: list[Path], key: Path, packages: list[str]
) -> subprocess.CompletedProcess[str]:
    """``apko build-minirootfs`` of ``packages`` from ``repos`` trusting only ``key``
    (busybox comes from nowhere: none of these packages needs it)."""
    apko = ROOT / ".tools" / "bin" / "apko"
    assert apko.exists(), "apko is built by `make setup` (scripts/build-tools.sh)"
    workdir.mkdir(parents=True)
    (workdir / "apko.yaml").write_text(
        "contents:\n"
        "  repositories:\n" + "".join(f"    - {r}\n" for r in repos) + f"  keyring:\n    - {key}\n"
        "  packages:\n" + "".join(f"    - {p}\n" for p in packages)
    )
    return subprocess.run(
        [str(apko), "build-minirootfs", "apko.yaml", "rootfs.tar", "--build-arch", "amd64"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_failing_step_is_named_with_exit_code_and_output(farm: FarmEnv, tmp_path: Path) -> None:
    result = melange2(farm, "build", "examples/broken/broken.yaml", out_dir=tmp_path / "out")
    assert result.returncode == 1
    assert "step run the test suite failed with exit code 3" in result.stderr
    assert "test_answer expected 42, got 41" in result.stderr
    assert "never reached" not in result.stdout
    assert not list((tmp_path / "out").glob("*/*.apk"))


def test_builds_are_reproducible(farm: FarmEnv, signing_key: Path, tmp_path: Path) -> None:
    digests = []
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        result = melange2(farm, "build", "examples/hello/hello.yaml", out_dir=out, key=signing_key)
        assert result.returncode == 0, result.stderr
        digests.append(
            {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "x86_64").iterdir()}
        )
    assert digests[0] == digests[1]


def test_aarch64_build_runs_emulated_steps(
    farm: FarmEnv, signing_key: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = melange2(
        farm,
        "build",
        "examples/hello/hello.yaml",
        "--arch",
        "aarch64",
        "--with-test",
        out_dir=out,
        key=signing_key,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pkg = read_apk(out / "aarch64" / "hello-1.2.0-r0.apk")
    assert pkg.info.arch == "aarch64"


def test_config_errors_come_before_buildkit(farm: FarmEnv, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "package:\n  name: bad\n  version: 1\n"
        "environment:\n  contents:\n    packages: [busybox]\n"
        "pipeline:\n  - uses: no/such-pipeline\n"
    )
    result = melange2(farm, "build", str(config), out_dir=tmp_path / "out")
    assert result.returncode == 2
    assert f"{config}:8" in result.stderr and "no/such-pipeline" in result.stderr
    assert "[step]" not in result.stdout


def test_ctrl_c_cancels_the_solve_on_the_daemon(farm: FarmEnv, tmp_path: Path) -> None:
    marker = f"sleep 77.{os.getpid()}"
    config = tmp_path / "slow.yaml"
    config.write_text(
        "package:\n  name: slow\n  version: 1.0.0\n"
        "environment:\n  contents:\n    packages: [busybox]\n"
        f"pipeline:\n  - name: long step\n    runs: |\n      echo started\n      {marker}\n"
    )
    argv = [
        sys.executable, "-m", "melange2", "build", str(config),
        "--out-dir", str(tmp_path / "out"),
        "--buildkit-addr", farm.buildkit_addrs[0], "--registry", farm.registry,
        "--repository-append", farm.extra["BOOTSTRAP_REPO"],
        "--keyring-append", farm.extra["BOOTSTRAP_KEY"],
        "--apk-cache-dir", str(tmp_path / "cache"), "--plain",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        # as from a terminal: a test run started in the background by a non-interactive
        # shell ignores SIGINT, and its children would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while _running(marker) == 0:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        # 60 s for a loaded machine; still well inside the step's 77 s, so a Ctrl-C that
        # did not cancel the solve fails here
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # the pipes closed here, not by a later test's GC
    assert proc.returncode == 130
    assert b"cancelled" in err and b"Traceback" not in err
    end = time.monotonic() + 30
    while _running(marker) and time.monotonic() < end:
        time.sleep(0.2)
    assert _running(marker) == 0  # the step's process is gone from the daemon


def _running(marker: str) -> int:
    """How many processes run the step's command (inside the daemon's containers)."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return len(out.split())


def test_package_timeout_stops_the_build(farm: FarmEnv, tmp_path: Path) -> None:
    """melange's per-config limit: past ``package.timeout`` the build fails, naming the
    step, and its process is gone from the daemon."""
    marker = f"sleep 3600.{os.getpid()}"
    config = tmp_path / "stuck.yaml"
    config.write_text(
        "package:\n  name: stuck\n  version: 1.0.0\n  timeout: 8s\n"
        "environment:\n  contents:\n    packages: [busybox]\n"
        f"pipeline:\n  - name: stuck step\n    runs: |\n      echo started\n      {marker}\n"
    )
    began = time.monotonic()
    result = melange2(farm, "build", str(config), out_dir=tmp_path / "out")
    assert time.monotonic() - began < 60
    assert result.returncode == 1, result.stderr
    assert "timed out after 8 s (package.timeout) in step 'stuck step'" in result.stderr
    end = time.monotonic() + 30
    while _running(marker) and time.monotonic() < end:
        time.sleep(0.2)
    assert _running(marker) == 0
