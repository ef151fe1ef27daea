"""Architectures as melange (through apko) names them, and the triplets derived from them.

melange accepts both apk spellings (``x86_64``, ``aarch64``, ``armhf``) and OCI ones
(``amd64``, ``arm64``, ``arm/v6``). :func:`parse_arch` maps either to one :class:`Arch`.
The triplet tables follow apko's ``types.Architecture.ToTriplet``/``ToRustTriplet``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Arch", "parse_arch"]

#: apk/OCI aliases -> OCI name (apko ``ParseArchitecture``).
_ALIASES = {
    "x86": "386",
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armhf": "arm/v6",
    "armv7": "arm/v7",
}

#: OCI name -> apk name (apko ``ToAPK``); others map to themselves.
_APK = {"386": "x86", "amd64": "x86_64", "arm64": "aarch64", "arm/v6": "armhf", "arm/v7": "armv7"}

#: OCI name -> qemu name (apko ``ToQEmu``); others map to themselves.
_QEMU = {"386": "i386", "amd64": "x86_64", "arm64": "aarch64", "arm/v6": "arm", "arm/v7": "arm"}

#: OCI name -> GNU triplet pattern; ``{}`` is the libc flavour (``gnu``/``musl``).
_GNU = {
    "386": "i486-pc-linux-{}",
    "amd64": "x86_64-pc-linux-{}",
    "arm64": "aarch64-unknown-linux-{}",
    "arm/v6": "arm-unknown-linux-{}eabihf",
    "arm/v7": "armv7l-unknown-linux-{}eabihf",
    "ppc64le": "powerpc64le-unknown-linux-{}",
    "s390x": "s390x-ibm-linux-{}",
}

#: OCI name -> Rust triplet pattern.
_RUST = {
    "386": "i686-unknown-linux-{}",
    "amd64": "x86_64-unknown-linux-{}",
    "arm64": "aarch64-unknown-linux-{}",
    "arm/v6": "armv6-unknown-linux-{}eabihf",
    "arm/v7": "armv7-unknown-linux-{}eabihf",
    "ppc64le": "powerpc64le-unknown-linux-{}",
    "s390x": "s390x-unknown-linux-{}",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Arch:
    """One CPU architecture.

    >>> a = parse_arch("x86_64")
    >>> (a.apk, a.oci, a.gnu_triplet("gnu"), a.rust_triplet("musl"))
    ('x86_64', 'amd64', 'x86_64-pc-linux-gnu', 'x86_64-unknown-linux-musl')
    """

    #: The OCI spelling (``amd64``); melange's ``${{build.goarch}}``.
    oci: str

    @property
    def apk(self) -> str:
        """The apk spelling (``x86_64``); melange's ``${{build.arch}}``."""
        return _APK.get(self.oci, self.oci)

    @property
    def qemu(self) -> str:
        return _QEMU.get(self.oci, self.oci)

    def gnu_triplet(self, libc: str = "gnu") -> str:
        """The GNU/autoconf triplet, e.g. ``aarch64-unknown-linux-gnu``."""
        return _GNU.get(self.oci, f"{self.qemu}-unknown-linux-{{}}").format(libc)

    def rust_triplet(self, libc: str = "gnu") -> str:
        """The Rust/Cargo triplet, e.g. ``x86_64-unknown-linux-gnu``."""
        return _RUST.get(self.oci, f"{self.qemu}-unknown-linux-{{}}").format(libc)


def parse_arch(name: str) -> Arch:
    """Normalise an apk or OCI architecture name (unknown names pass through)."""
    return Arch(oci=_ALIASES.get(name, name))
