"""What melange puts in every package besides the files its pipelines made.

For each package of a build (the origin package and each subpackage whose ``if`` holds):

- the SPDX SBOM at ``var/lib/db/sbom/<name>-<version>-r<epoch>.spdx.json``
  (:mod:`melange2.build.sbom`), handed to the APK writer in memory and packaged as
  melange packages the file it writes into the tree (mode 0644, with the directories
  ``var/lib/db/sbom`` needs, 0755, root): the exported tree itself is left as it is;
- ``.melange.yaml`` in the control stream: the config as melange re-serialises it
  (:mod:`melange2.build.melange_yaml`);
- the scriptlets (``.pre-install`` ... ``.trigger``) and ``triggers`` paths;
- owners as melange writes them: ids kept, the build user (uid/gid 1000) mapped to
  root, names from the build environment's ``/etc/passwd`` and ``/etc/group``.

The build exports, beside ``melange-out``, a ``.melange2/`` directory holding the build
environment's account files and os-release and the ``license-path`` files of the
workspace (:data:`META_DIR`): what melange reads from its guest and workspace.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melange2.apk.writer import Owner, Scriptlet
from melange2.build.sbom import ReleaseData, SbomContext, package_sboms, parse_os_release, sbom_path
from melange2.recipe.model import Config, Scriptlets, Step

__all__ = [
    "BUILD_UID",
    "META_DIR",
    "PackageExtras",
    "detect_git_commit",
    "package_extras",
    "scriptlet_files",
]

#: inside the exported tree: what the packaging reads besides melange-out
META_DIR = ".melange2"
#: melange's build user and group (its accounts default), mapped to root in packages
BUILD_UID = 1000


def detect_git_commit(config: Path) -> str:
    """The HEAD commit of the git repository holding ``config`` ("" when none)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(config.parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def scriptlet_files(scriptlets: Scriptlets | None) -> dict[Scriptlet, bytes]:
    """The control-stream scripts of a package's ``scriptlets`` (empty ones left out)."""
    if scriptlets is None:
        return {}
    pairs = [
        (Scriptlet.TRIGGER, scriptlets.trigger),
        (Scriptlet.PRE_INSTALL, scriptlets.pre_install),
        (Scriptlet.POST_INSTALL, scriptlets.post_install),
        (Scriptlet.PRE_DEINSTALL, scriptlets.pre_deinstall),
        (Scriptlet.POST_DEINSTALL, scriptlets.post_deinstall),
        (Scriptlet.PRE_UPGRADE, scriptlets.pre_upgrade),
        (Scriptlet.POST_UPGRADE, scriptlets.post_upgrade),
    ]
    return {name: text.encode() for name, text in pairs if text}


def _names(path: Path) -> dict[int, str]:
    """id -> name of a passwd or group file (first entry of an id wins)."""
    names: dict[int, str] = {}
    if not path.is_file():
        return names
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            names.setdefault(int(parts[2]), parts[0])
    return names


@dataclass(frozen=True, kw_only=True)
class PackageExtras:
    """What :func:`melange2.apk.write_apk` needs besides the tree, per package."""

    scripts: Mapping[str, Mapping[Scriptlet, bytes]] = field(default_factory=dict)
    control_files: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)
    #: package -> path inside it -> owner (the build user already mapped to root)
    owners: Mapping[str, Mapping[str, Owner]] = field(default_factory=dict)
    user_names: Mapping[int, str] = field(default_factory=dict)
    group_names: Mapping[int, str] = field(default_factory=dict)
    #: package -> path inside it -> content: the SBOM, added to the data from memory
    files: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)

    def apk_options(self, package: str) -> dict[str, Any]:
        """Keyword arguments of ``write_apk`` for ``package``."""
        return {
            "scripts": self.scripts.get(package, {}),
            "control_files": self.control_files.get(package, {}),
            "owners": self.owners.get(package, {}),
            "user_names": self.user_names,
            "group_names": self.group_names,
            "extra_files": self.files.get(package, {}),
        }


def _owners_by_package(
    owners: Mapping[str, tuple[int, int]], packages: tuple[str, ...]
) -> dict[str, dict[str, Owner]]:
    """The exported tree's owners split by package, the build user mapped to root."""
    out: dict[str, dict[str, Owner]] = {name: {} for name in packages}
    for path, (uid, gid) in owners.items():
        name, _, rel = path.partition("/")
        if rel and name in out:
            out[name][rel] = Owner(
                uid=0 if uid == BUILD_UID else uid, gid=0 if gid == BUILD_UID else gid
            )
    return out


def package_extras(
    config: Config,
    tree: Path,
    *,
    context: SbomContext,
    melange_yaml: bytes | None = None,
    inputs_of: Callable[[Step], Mapping[str, str]] | None = None,
    owners: Mapping[str, tuple[int, int]] | None = None,
) -> PackageExtras:
    """Each package's SBOM (in memory, for ``write_apk``'s ``extra_files``) and the rest.

    ``config`` is the config as built (disabled subpackages left out); ``tree`` the
    exported ``melange-out`` with :data:`META_DIR` beside the package directories.
    """
    meta = tree / META_DIR
    release = ReleaseData()
    os_release = meta / "etc" / "os-release"
    if os_release.is_file():
        release = parse_os_release(os_release.read_text(errors="replace"))
    licensing = {}
    for entry in config.package.copyright:
        if entry.license_path:
            licensing[entry.license] = (meta / "workspace" / entry.license_path).read_text(
                errors="replace"
            )
    ctx = SbomContext(
        arch=context.arch,
        namespace=context.namespace,
        config_file=context.config_file,
        config_commit=context.config_commit,
        config_repo_url=context.config_repo_url,
        config_license=context.config_license,
        created=context.created,
        release=release,
        licensing_infos=licensing,
        tool_version=context.tool_version,
    )
    full = config.package.full_version
    files = {
        name: {sbom_path(name, full): document}
        for name, document in package_sboms(config, ctx, inputs_of=inputs_of).items()
    }
    scripts = {config.package.name: scriptlet_files(config.package.scriptlets)}
    for sp in config.subpackages:
        scripts[sp.name] = scriptlet_files(sp.scriptlets)
    control = (
        {name: {".melange.yaml": melange_yaml} for name in config.package_names}
        if melange_yaml is not None
        else {}
    )
    return PackageExtras(
        scripts=scripts,
        control_files=control,
        owners=_owners_by_package(owners or {}, config.package_names),
        user_names=_names(meta / "etc" / "passwd"),
        group_names=_names(meta / "etc" / "group"),
        files=files,
    )
