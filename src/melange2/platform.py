"""Platforms: melange's architecture names and OCI's, in one table.

Below both :mod:`melange2.oci` (image configs, indexes, pulls by platform) and
:mod:`melange2.buildkit` (LLB, the daemons' workers), which both speak OCI platforms;
``melange2.buildkit.llb`` re-exports :class:`Platform` for graph builders."""

from __future__ import annotations

from dataclasses import dataclass

from melange2.errors import ConfigError

#: melange/APK architecture name -> (OCI architecture, OCI variant)
_APK_TO_OCI: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "armv7": ("arm", "v7"),
    "riscv64": ("riscv64", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "x86": ("386", ""),
}
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "386": "x86"}


@dataclass(frozen=True, kw_only=True)
class Platform:
    """A target platform, as BuildKit (OCI) names it."""

    os: str = "linux"
    architecture: str
    variant: str = ""

    @classmethod
    def from_arch(cls, arch: str) -> Platform:
        """The platform of an APK architecture (``x86_64``, ``aarch64``; OCI aliases too)."""
        apk = _ALIASES.get(arch, arch)
        try:
            oci, variant = _APK_TO_OCI[apk]
        except KeyError:
            known = ", ".join(sorted(_APK_TO_OCI))
            raise ConfigError(f"unknown architecture {arch!r} (known: {known})") from None
        return cls(architecture=oci, variant=variant)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` as BuildKit prints it."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else "")

    @property
    def apk_arch(self) -> str:
        """The APK architecture name of this platform."""
        for apk, (oci, variant) in _APK_TO_OCI.items():
            if oci == self.architecture and variant == self.variant:
                return apk
        return self.architecture

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base
