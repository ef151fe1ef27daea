"""The SPDX SBOM melange puts in every package, at
``var/lib/db/sbom/<name>-<version>-r<epoch>.spdx.json``.

The document has the shape melange v0.34.0 writes (``pkg/sbom``, ``pkg/build``):

- the operating system of the build environment (from its ``/etc/os-release``, or
  ``unknown``);
- the package itself (license expression, copyright attestations, an ``apk`` purl);
- the build configuration file (a ``github`` purl naming the repository, commit and
  path), related to the package by ``DESCRIBED_BY``;
- each upstream source a ``fetch`` or ``git-checkout`` step names (a ``generic`` or
  ``github`` purl, checksums), related by ``GENERATED_FROM``: the main pipeline's in
  every package's document, a subpackage pipeline's in that subpackage's only;
- the text of every ``copyright[].license-path`` file (``hasExtractedLicensingInfos``).

JSON is written as Go's ``encoding/json`` encoder with two-space indentation and HTML
escaping writes it, so the same document gives the same bytes. The creation time is
SOURCE_DATE_EPOCH. Package URLs are rendered as packageurl-go v0.1.3 (melange's) does.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from melange2.recipe.model import Config, Package, Step

__all__ = [
    "ReleaseData",
    "SbomContext",
    "package_sboms",
    "parse_os_release",
    "purl",
    "sbom_path",
]

NOASSERTION = "NOASSERTION"
TOOL = "melange2"


@dataclass(frozen=True, kw_only=True)
class ReleaseData:
    """What ``/etc/os-release`` of the build environment says (``unknown`` without one)."""

    id: str = "unknown"
    version_id: str = "unknown"


def parse_os_release(text: str) -> ReleaseData:
    """``ID`` and ``VERSION_ID`` of an os-release file (quotes removed)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            values[key] = value.strip().strip("\"'")
    return ReleaseData(id=values.get("ID", "unknown"), version_id=values.get("VERSION_ID", ""))


@dataclass(frozen=True, kw_only=True)
class SbomContext:
    """The facts of a build the SBOM records besides the config."""

    arch: str
    #: ``--namespace`` (melange's default ``unknown``): supplier and purl namespace
    namespace: str = "unknown"
    #: the config file's path as the build was given it
    config_file: str
    #: the commit of the repository holding the config (``unknown`` when not detected)
    config_commit: str = "unknown"
    #: ``--git-repo-url`` (melange's placeholder when not given)
    config_repo_url: str = "https://unknown/unknown/unknown"
    #: ``--license``: the license of the config file itself
    config_license: str = NOASSERTION
    #: SOURCE_DATE_EPOCH
    created: int = 0
    release: ReleaseData = field(default_factory=ReleaseData)
    #: ``copyright[].license`` -> the text of its ``license-path`` file
    licensing_infos: Mapping[str, str] = field(default_factory=dict)
    tool_version: str = "dev"


def sbom_path(name: str, full_version: str) -> str:
    """Where the SBOM of package ``name`` goes inside the package."""
    return f"var/lib/db/sbom/{name}-{full_version}.spdx.json"


# ---------------------------------------------------------------------------- purls


def _query_escape(value: str) -> str:
    """Go's ``url.QueryEscape``."""
    return urllib.parse.quote_plus(value, safe="")


def _segment_escape(value: str) -> str:
    """packageurl-go v0.1.3's ``escape``: QueryEscape with ``+`` as ``%20``."""
    return _query_escape(value).replace("+", "%20")


def _fragment_escape(value: str) -> str:
    """Go's ``url.URL`` fragment escaping."""
    return urllib.parse.quote(value, safe="/:@!$&'()*+,;=?-._~")


def purl(
    type_: str,
    name: str,
    *,
    namespace: str = "",
    version: str = "",
    qualifiers: Mapping[str, str] | None = None,
    subpath: str = "",
    normalize: bool = False,
) -> str:
    """A package URL as packageurl-go v0.1.3's ``ToString`` renders it (qualifiers sorted
    by key, as ``url.Values.Encode``); ``normalize`` applies its ``Normalize`` first."""
    quals = {k: v for k, v in (qualifiers or {}).items()}
    if normalize:
        namespace = namespace.strip("/")
        subpath = subpath.strip("/")
        quals = {k.lower(): v for k, v in quals.items() if v}
        if type_ in ("apk", "github", "alpm", "bitbucket", "composer", "debian", "npm"):
            namespace = namespace.lower()
            name = name.lower()
    parts = [type_, *(_segment_escape(s) for s in namespace.split("/") if s)]
    last = _segment_escape(name)
    if version:
        last += "@" + _segment_escape(version)
    parts.append(last)
    text = "pkg:" + "/".join(parts)
    if quals:
        text += "?" + "&".join(
            f"{_query_escape(k)}={_query_escape(quals[k])}" for k in sorted(quals)
        )
    if subpath:
        text += "#" + _fragment_escape(subpath)
    return text


# -------------------------------------------------------------------- the document


def _identifier(text: str) -> str:
    """melange's ``stringToIdentifier``."""
    out = []
    for ch in text:
        if ch in ":/":
            out.append("-")
        elif ch in "-." or (ch.isascii() and ch.isalnum()):
            out.append(ch)
        else:
            out.append(f"C{ord(ch)}")
    return "".join(out)


@dataclass(frozen=True, kw_only=True)
class _Pkg:
    name: str
    version: str
    namespace: str
    license: str = ""
    copyright: str = ""
    purl: str = ""
    id_components: tuple[str, ...] = ()
    checksums: Mapping[str, str] = field(default_factory=dict)
    download: str = ""

    @property
    def id(self) -> str:
        if not self.id_components:
            return _identifier(f"SPDXRef-Package-{self.name}-{self.version}")
        return _identifier("SPDXRef-Package" + "".join(f"-{c}" for c in self.id_components))

    @property
    def supplier(self) -> str:
        return "Organization: " + _title(self.namespace)

    def spdx(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"SPDXID": self.id, "name": self.name}
        if self.version:
            doc["versionInfo"] = self.version
        doc["filesAnalyzed"] = False
        doc["licenseConcluded"] = NOASSERTION
        doc["licenseDeclared"] = self.license or NOASSERTION
        doc["downloadLocation"] = self.download or NOASSERTION
        if self.supplier:
            doc["originator"] = self.supplier
            doc["supplier"] = self.supplier
        if self.copyright:
            doc["copyrightText"] = self.copyright
        if self.checksums:
            doc["checksums"] = [
                {"algorithm": algo, "checksumValue": self.checksums[algo]}
                for algo in sorted(self.checksums)
            ]
        if self.purl:
            doc["externalRefs"] = [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceLocator": self.purl,
                    "referenceType": "purl",
                }
            ]
        return doc


def _title(text: str) -> str:
    """Go's ``cases.Title(language.English)`` for the simple names namespaces are."""
    out = []
    start = True
    for ch in text:
        if ch.isalnum() or ch == "'":
            out.append(ch.upper() if start else ch.lower())
            start = False
        else:
            out.append(ch)
            start = True
    return "".join(out)


def _license_expression(package: Package) -> str:
    return " AND ".join(c.license for c in package.copyright)


def _full_copyright(package: Package) -> str:
    text = "".join(c.attestation + "\n" for c in package.copyright if c.attestation)
    return text or NOASSERTION


def _apk_purl(namespace: str, name: str, version: str, arch: str) -> str:
    qualifiers = {}
    if namespace != "unknown":
        qualifiers["distro"] = namespace
    if arch:
        qualifiers["arch"] = arch
    return purl("apk", name, namespace=namespace, version=version, qualifiers=qualifiers)


def _config_package(ctx: SbomContext) -> _Pkg:
    url = ctx.config_repo_url.removeprefix("https://github.com/")
    namespace, _, name = url.partition("/")
    return _Pkg(
        name=ctx.config_file,
        version=ctx.config_commit,
        namespace=ctx.namespace,
        license=ctx.config_license,
        purl=purl(
            "github",
            name,
            namespace=namespace,
            version=ctx.config_commit,
            subpath=ctx.config_file,
            normalize=True,
        ),
    )


def _upstream(
    step: Step, unique: str, license_: str, supplier: str, with_: Mapping[str, str]
) -> _Pkg | None:
    """melange's ``SBOMPackageForUpstreamSource`` of one step (``None`` for most);
    ``with_`` is the step's ``with:`` with the pipeline's defaults filled in."""
    if step.uses == "fetch":
        args = {"download_url": with_.get("uri", "")}
        checksums = {}
        if with_.get("expected-sha256"):
            args["checksum"] = "sha256:" + with_["expected-sha256"]
            checksums["SHA256"] = with_["expected-sha256"]
        if with_.get("expected-sha512"):
            args["checksum"] = "sha512:" + with_["expected-sha512"]
            checksums["SHA512"] = with_["expected-sha512"]
        name, version = with_.get("purl-name", ""), with_.get("purl-version", "")
        return _Pkg(
            name=name,
            version=version,
            namespace=supplier,
            checksums=checksums,
            purl=purl("generic", name, version=version, qualifiers=args, normalize=True),
            id_components=tuple(c for c in (name, version, unique)),
            download=args["download_url"],
        )
    if step.uses == "git-checkout":
        return _git_package(with_, unique, license_, supplier)
    return None


def _git_package(
    with_: Mapping[str, str], unique: str, license_: str, supplier: str
) -> _Pkg | None:
    """melange's ``getGitSBOMPackage``."""
    repo = with_.get("repository", "")
    tag, commit = with_.get("tag", ""), with_.get("expected-commit", "")
    hint = with_.get("type-hint", "")
    cleaned = repo.removeprefix("https://").removeprefix("http://")
    components = [c for c in (cleaned, with_.get("branch", ""), tag, commit) if c]
    if unique:
        components.append(unique)
    ref = commit or tag
    if not ref:
        return None
    url = urllib.parse.urlsplit(repo)
    host = url.netloc
    trimmed = url.path.removeprefix("/")
    namespace, _, name = trimmed.partition("/")
    name = name.removesuffix(".git")
    if host == "github.com":
        type_ = "github"
        download = f"{url.scheme}://github.com/{namespace}/{name}/archive/{ref}.tar.gz"
    elif host == "gitlab.com":
        type_ = "gitlab"
        download = f"{url.scheme}://gitlab.com/{namespace}/{name}/-/archive/{ref}/{ref}.tar.gz"
    elif host.startswith("gitlab") or hint == "gitlab":
        type_ = "generic"
        download = f"{url.scheme}://{host}/{namespace}/{name}/-/archive/{ref}/{ref}.tar.gz"
    else:
        type_ = "generic"
        namespace = supplier
        name = trimmed.removesuffix(".git")
        digest = hashlib.sha256(name.encode()).hexdigest()
        download = f"https://tarballs.cgr.dev/{name[:1]}/{digest}-{ref}.tar.gz"
    vcs = repo if repo.startswith("git") else "git+" + repo
    if commit:
        vcs += "@" + commit
    version = tag or commit
    if type_ in ("github", "gitlab"):
        locator = purl(type_, name, namespace=namespace, version=version, normalize=True)
    else:
        locator = purl(
            "generic", name, version=version, qualifiers={"vcs_url": vcs}, normalize=True
        )
    return _Pkg(
        name=name,
        version=version,
        namespace=namespace,
        license=license_,
        purl=locator,
        id_components=tuple(components),
        download=download,
    )


def package_sboms(
    config: Config,
    ctx: SbomContext,
    *,
    inputs_of: Callable[[Step], Mapping[str, str]] | None = None,
) -> dict[str, bytes]:
    """The SBOM file of every package the config makes, by package name.

    ``config`` is the config as built: subpackages whose ``if`` is false already left out.
    ``inputs_of`` gives a ``fetch``/``git-checkout`` step's inputs with the pipeline's
    defaults (``purl-name`` ...); without it, the step's ``with:`` alone.
    """
    pkg = config.package
    license_ = _license_expression(pkg)
    full = pkg.full_version
    inputs = inputs_of or (lambda step: step.with_)

    def sources(steps: Sequence[Step]) -> list[_Pkg]:
        # top-level steps only, numbered by position, as melange does
        found = []
        for i, step in enumerate(steps):
            if step.uses in ("fetch", "git-checkout"):
                source = _upstream(step, str(i), license_, ctx.namespace, inputs(step))
                if source is not None:
                    found.append(source)
        return found

    main_sources = sources(config.pipeline)
    docs: dict[str, bytes] = {}
    for name, steps in [
        (pkg.name, ()),
        *((sp.name, sp.pipeline) for sp in config.subpackages),
    ]:
        own = sources(steps)
        described = _Pkg(
            name=name,
            version=full,
            namespace=ctx.namespace,
            license=license_,
            copyright=_full_copyright(pkg),
            purl=_apk_purl(ctx.namespace, name, full, ctx.arch),
        )
        docs[name] = render_document(described, [*main_sources, *own], ctx)
    return docs


def render_document(described: _Pkg, sources: Sequence[_Pkg], ctx: SbomContext) -> bytes:
    config_pkg = _config_package(ctx)
    os_pkg = {
        "SPDXID": "SPDXRef-OperatingSystem",
        "name": ctx.release.id,
        **({"versionInfo": ctx.release.version_id} if ctx.release.version_id else {}),
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "description": "Operating System",
        "downloadLocation": NOASSERTION,
        "originator": described.supplier,
        "supplier": described.supplier,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
    }
    relationships = [
        {
            "spdxElementId": described.id,
            "relationshipType": "DESCRIBED_BY",
            "relatedSpdxElement": config_pkg.id,
        },
        *(
            {
                "spdxElementId": described.id,
                "relationshipType": "GENERATED_FROM",
                "relatedSpdxElement": s.id,
            }
            for s in sources
        ),
    ]
    namespace_hash = _fnv128a(f"apk-{described.namespace}-{described.version}".encode())
    created = datetime.fromtimestamp(ctx.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc: dict[str, Any] = {
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"apk-{described.name}-{described.version}",
        "spdxVersion": "SPDX-2.3",
        "creationInfo": {
            "created": created,
            "creators": [f"Tool: {TOOL} ({ctx.tool_version})", "Organization: Chainguard, Inc"],
            "licenseListVersion": "3.22",
        },
        "dataLicense": "CC0-1.0",
        "documentNamespace": "https://spdx.org/spdxdocs/chainguard/melange/" + namespace_hash,
        "documentDescribes": [described.id],
        "packages": [os_pkg, described.spdx(), config_pkg.spdx(), *(s.spdx() for s in sources)],
        "relationships": relationships,
    }
    if ctx.licensing_infos:
        doc["hasExtractedLicensingInfos"] = [
            {"licenseId": lid, "extractedText": text}
            for lid, text in sorted(ctx.licensing_infos.items())
        ]
    return go_json(doc)


def _fnv128a(data: bytes) -> str:
    """FNV-1a, 128 bits (Go's ``hash/fnv.New128a``), as hex."""
    value = 0x6C62272E07BB014262B821756295C58D
    prime = 0x0000000001000000000000000000013B
    for byte in data:
        value ^= byte
        value = (value * prime) % (1 << 128)
    return value.to_bytes(16, "big").hex()


def go_json(doc: Any) -> bytes:
    """Go's ``json.Encoder`` with ``SetIndent("", "  ")`` and HTML escaping: same bytes."""
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    text = (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
    return (text + "\n").encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
