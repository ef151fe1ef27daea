"""End to end on real buildkitd: our client solves LLB built by our builder, exports
through the real registry, and we read the results back from the registry."""

from __future__ import annotations

import asyncio
import time

import pytest

from melange2.buildkit import llb
from melange2.buildkit.client import BuildkitClient, Progress, StepFailed, push_image
from melange2.errors import BuildkitUnavailable, SolveCancelled
from melange2.farm.local import FarmEnv
from melange2.oci.registry import RegistryClient

pytestmark = pytest.mark.e2e
X86 = llb.Platform.from_arch("x86_64")
ARM = llb.Platform.from_arch("aarch64")


async def _solve_and_read(
    farm: FarmEnv, state: llb.State, repo: str, path: str, platform: llb.Platform | None = None
) -> bytes:
    async with BuildkitClient(farm.buildkit_addrs[0]) as bk:
        result = await bk.solve(
            llb.marshal(state), exporters=[push_image(f"{farm.registry}/{repo}:latest")]
        )
    digest = result.exporter_response["containerimage.digest"]
    async with RegistryClient(farm.registry) as reg:
        return await reg.read_file(repo, digest, path, platform)


def test_step_writes_file_exported_through_registry(farm: FarmEnv) -> None:
    step = llb.run(
        llb.image(farm.base_image, platform=X86),
        ["/bin/sh", "-c", "echo 'hello from buildkit' > /out/greeting.txt"],
        mounts=[llb.Mount(dest="/out")],
        name="write greeting",
    )
    content = asyncio.run(
        _solve_and_read(farm, step.output("/out"), "e2e/greeting", "greeting.txt")
    )
    assert content == b"hello from buildkit\n"


def test_arm64_step_runs_emulated(farm: FarmEnv) -> None:
    step = llb.run(
        llb.image(farm.base_image, platform=ARM),
        ["/bin/sh", "-c", "uname -m > /out/arch"],
        mounts=[llb.Mount(dest="/out")],
        name="uname on arm64",
    )
    content = asyncio.run(_solve_and_read(farm, step.output("/out"), "e2e/arch", "arch"))
    assert content.decode().strip() == "aarch64"


def test_env_cwd_user_and_file_ops(farm: FarmEnv) -> None:
    base = llb.image(farm.base_image, platform=X86)
    prepared = llb.mkdir(base, "/work/in", mode=0o777)
    prepared = llb.mkfile(prepared, "/work/in/data.txt", b"payload", mode=0o644)
    prepared = llb.symlink(prepared, "data.txt", "/work/in/link")
    prepared = llb.mkdir(prepared, "/work/out", mode=0o777)
    step = llb.run(
        prepared,
        [
            "/bin/sh",
            "-c",
            'printf "%s|%s|%s|%s" "$(id -u)" "$(pwd)" "$GREETING" "$(cat in/link)" > out/r',
        ],
        env={"GREETING": "hi there", "PATH": "/usr/bin:/bin"},
        cwd="/work",
        user="build",
        name="report identity",
    )
    # copy the result into a fresh tree, as outputs leave the build
    result = llb.copy(step.root, "/work/out/r", llb.scratch(X86), "/report/r")
    content = asyncio.run(_solve_and_read(farm, result, "e2e/identity", "report/r"))
    assert content.decode() == "1000|/work|hi there|payload"


def test_network_none_is_hermetic(farm: FarmEnv) -> None:
    base = llb.image(farm.base_image, platform=X86)

    def interfaces(network: llb.Network) -> llb.State:
        step = llb.run(
            base,
            ["/bin/sh", "-c", "ls /sys/class/net | sort | tr '\\n' ' ' > /out/ifaces"],
            network=network,
            mounts=[llb.Mount(dest="/out")],
            name=f"interfaces with network={network}",
        )
        return step.output("/out")

    hermetic = asyncio.run(_solve_and_read(farm, interfaces("none"), "e2e/net-none", "ifaces"))
    default = asyncio.run(_solve_and_read(farm, interfaces("unset"), "e2e/net-default", "ifaces"))
    assert hermetic.split() == [b"lo"]
    assert len(default.split()) > 1  # the daemon's default network reaches out


def test_progress_and_logs_stream_with_step_names(farm: FarmEnv) -> None:
    seen: list[Progress] = []
    step = llb.run(
        llb.image(farm.base_image, platform=X86),
        ["/bin/sh", "-c", "echo line-one; echo line-two >&2"],
        name="chatty step",
        ignore_cache=True,
    )

    async def go() -> None:
        async with BuildkitClient(farm.buildkit_addrs[1]) as bk:
            await bk.solve(llb.marshal(step.root), on_progress=seen.append)

    asyncio.run(go())
    names = {v.name for p in seen for v in p.vertexes}
    assert "chatty step" in names
    completed = [v for p in seen for v in p.vertexes if v.name == "chatty step" and v.completed]
    assert completed and not completed[-1].error
    logs = [(chunk.stream, chunk.data) for p in seen for chunk in p.logs]
    assert (1, b"line-one\n") in logs
    assert (2, b"line-two\n") in logs


def test_failing_step_names_step_exit_code_and_output(farm: FarmEnv) -> None:
    step = llb.run(
        llb.image(farm.base_image, platform=X86),
        ["/bin/sh", "-c", "echo about to fail; exit 7"],
        name="doomed step",
        ignore_cache=True,
    )

    async def go() -> None:
        async with BuildkitClient(farm.buildkit_addrs[0]) as bk:
            await bk.solve(llb.marshal(step.root))

    with pytest.raises(StepFailed) as info:
        asyncio.run(go())
    assert info.value.step == "doomed step"
    assert info.value.step_exit_code == 7
    assert "about to fail" in info.value.log_tail


def test_cancel_stops_the_solve(farm: FarmEnv) -> None:
    step = llb.run(
        llb.image(farm.base_image, platform=X86),
        ["/bin/sh", "-c", "echo started; sleep 120"],
        name="long step",
        ignore_cache=True,
    )

    async def go() -> float:
        started = asyncio.Event()

        def on_progress(p: Progress) -> None:
            if any(chunk.data == b"started\n" for chunk in p.logs):
                started.set()

        async with BuildkitClient(farm.buildkit_addrs[0]) as bk:
            task = asyncio.create_task(bk.solve(llb.marshal(step.root), on_progress=on_progress))
            await asyncio.wait_for(started.wait(), 60)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises((asyncio.CancelledError, SolveCancelled)):
                await task
            # the daemon stays usable: a new solve goes through
            quick = llb.run(
                llb.image(farm.base_image, platform=X86),
                ["/bin/true"],
                name="after cancel",
                ignore_cache=True,
            )
            await bk.solve(llb.marshal(quick.root))
            return time.monotonic() - t0

    assert asyncio.run(go()) < 60


def test_info_and_workers(farm: FarmEnv) -> None:
    async def go() -> tuple[str, set[str]]:
        async with BuildkitClient(farm.buildkit_addrs[0]) as bk:
            info = await bk.info()
            workers = await bk.list_workers()
        return info.version, {str(p) for w in workers for p in w.platforms}

    version, platforms = asyncio.run(go())
    assert version.startswith("v0.")
    assert {"linux/amd64", "linux/arm64"} <= platforms


def test_unreachable_daemon_is_a_backend_fault() -> None:
    async def go() -> None:
        async with BuildkitClient("tcp://127.0.0.1:1", connect_timeout=2) as bk:
            await bk.info()

    with pytest.raises(BuildkitUnavailable):
        asyncio.run(go())
