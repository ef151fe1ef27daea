"""A smoke build on the local farm: on every daemon and platform, run a step in the base
image that writes a file, push the result as an image, pull the file back."""

from __future__ import annotations

from dataclasses import dataclass

from melange2.buildkit import llb
from melange2.buildkit.client import BuildkitClient, push_image
from melange2.farm.local import FarmEnv
from melange2.oci.registry import RegistryClient

ARCHES = ("x86_64", "aarch64")


@dataclass(frozen=True, kw_only=True)
class SmokeResult:
    daemon: str
    arch: str
    uname: str
    image: str


def smoke_definition(base_image: str, arch: str) -> llb.State:
    """Write ``uname -m`` into /out/uname on ``arch``; the result is /out alone."""
    platform = llb.Platform.from_arch(arch)
    step = llb.run(
        llb.image(base_image, platform=platform),
        ["/bin/sh", "-c", "uname -m > /out/uname"],
        mounts=[llb.Mount(dest="/out")],
        name=f"smoke: uname on {arch}",
    )
    return step.output("/out")


async def run_smoke(env: FarmEnv) -> list[SmokeResult]:
    results = []
    tls = env.client_tls()
    async with RegistryClient(env.registry) as reg:
        for n, addr in enumerate(env.buildkit_addrs):
            async with BuildkitClient(addr, tls=tls) as bk:
                for arch in ARCHES:
                    repo = f"smoke/daemon-{n}"
                    solved = await bk.solve(
                        llb.marshal(smoke_definition(env.base_image, arch)),
                        exporters=[push_image(f"{env.registry}/{repo}:{arch}")],
                    )
                    digest = solved.exporter_response["containerimage.digest"]
                    uname = (await reg.read_file(repo, digest, "uname")).decode().strip()
                    results.append(
                        SmokeResult(
                            daemon=addr,
                            arch=arch,
                            uname=uname,
                            image=f"{env.registry}/{repo}@{digest}",
                        )
                    )
    return results
