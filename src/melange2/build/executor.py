"""Build one melange config on one BuildKit daemon into signed APKs.

The steps, in order:

1. parse the config and compile its pipelines into shell steps (every error about the
   config is raised here, before anything reaches BuildKit);
2. resolve and compose the build environment image (:mod:`.environment_resolve`), or
   use a plain base image when the config installs nothing;
3. hash the source directory (:mod:`.sources`: the daemon reads it through the solve's
   session, a ``local://`` source); the source cache's files the pipelines expect go
   as one small image (:mod:`.source_cache`), mounted read-only at /var/cache/melange;
4. solve: environment -> sources into /home/build -> one exec per step -> the
   melange-out tree alone, sent back to this process by the ``local`` exporter through
   the solve's session (:mod:`melange2.buildkit.filesync`; no registry round trip);
5. lint that tree and find each package's automatic dependencies (:mod:`.analysis`,
   melange's linters and SCA), and write one APK per package and subpackage into
   ``<out-dir>/<arch>/``, then the signed ``APKINDEX.tar.gz``;
6. optionally run the config's tests in fresh environments with the new packages.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ruamel.yaml import YAML

import melange2
from melange2 import tracing
from melange2.apk.pkginfo import PackageInfo
from melange2.apk.signing import Signer
from melange2.apk.writer import write_apk
from melange2.build.analysis import (
    AnalysedPackage,
    analyse_packages,
    check_linter_names,
    lint_packages,
    package_trees,
)
from melange2.build.emit import META_DIR, detect_git_commit, package_extras
from melange2.build.environment_resolve import EnvironmentBuilder, EnvironmentRequest
from melange2.build.inputs import input_digest
from melange2.build.melange_yaml import BuildFacts, render_melange_yaml, step_inputs
from melange2.build.progress import ProgressTracker, StepSink
from melange2.build.sbom import SbomContext
from melange2.build.source_cache import CACHE_MOUNT, SourceCache, cache_image
from melange2.build.sources import SOURCES_NAME, source_digest
from melange2.buildkit import llb
from melange2.buildkit._proto.solver.pb.ops_pb2 import Definition
from melange2.buildkit.client import BuildkitClient, local_export
from melange2.buildkit.session import Session
from melange2.buildkit.solver import Connect
from melange2.buildkit.tls import ClientTLS
from melange2.errors import BuildkitError, ConfigError, LintFailed
from melange2.oci.image import ImageRef
from melange2.oci.registry import RegistryClient
from melange2.recipe import Config, Scriptlets, load_config, substitution_map
from melange2.recipe.compile import (
    BuildPlan,
    ExecStep,
    PipelineResolver,
    compile_build,
    compile_tests,
    environment_packages,
    subpackage_enabled,
)
from melange2.repo.directory import index_directory
from melange2.repo.policy import FetchPolicy
from melange2.repo.repository import Repository
from melange2.timing import PhaseTimer

WORKSPACE = "/home/build"
#: the step that lints the built trees, finds their dependencies and writes the APKs
PACKAGE_STEP = "lint, find dependencies, write packages"
DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": WORKSPACE,
}


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """What ``melange2 build`` takes (melange's flags where melange has them)."""

    config: Path
    arch: str
    buildkit_addr: str
    registry: str
    out_dir: Path
    cache_dir: Path
    source_dir: Path | None = None
    pipeline_dirs: Sequence[Path] = ()
    signing_key: Path | None = None
    repositories: Sequence[str | Repository] = ()  #: --repository-append
    keyrings: Sequence[str] = ()  #: --keyring-append
    env: Mapping[str, str] = field(default_factory=dict)  #: --env-file
    vars: Mapping[str, str] = field(default_factory=dict)  #: --vars-file
    base_image: str | None = None
    network: llb.Network = "unset"
    with_test: bool = False
    source_date_epoch: int = 0
    #: BuildKit registry cache (CACHE_REGISTRY / CACHE_MODE on the server)
    cache_ref: str = ""
    cache_mode: str = "min"
    #: trace every command of every step in the log (``set -x``, as melange's --debug)
    debug: bool = False
    #: reach the daemon over TLS (--tlscacert, --tlscert, --tlskey, --tlsservername)
    buildkit_tls: ClientTLS | None = None
    #: ``--namespace``: the packages' ``maintainer`` and the SBOM's supplier (melange's
    #: default ``unknown``)
    namespace: str = "unknown"
    #: ``--git-commit`` / ``--git-repo-url`` / ``--license`` of the config file (the
    #: commit defaults to the HEAD of the repository holding the config, or ``unknown``)
    git_commit: str = ""
    git_repo_url: str = ""
    config_license: str = "NOASSERTION"
    #: the config's path as the SBOM records it (default: ``config`` as given)
    config_name: str = ""
    #: the repositories and keys ``.melange.yaml`` records (default: ``repositories`` and
    #: ``keyrings``); a server leaves out its per-build staging repository, which would
    #: make every build's package differ
    recorded_repositories: Sequence[str] | None = None
    recorded_keyrings: Sequence[str] | None = None
    #: rebuild for real: the build's steps, and the copies of their result that follow,
    #: bypass BuildKit's cache (``ignore_cache``); the environment, the sources and the
    #: workspace's set-up are not invalidated. Not an input: the input digest is the
    #: same with or without it
    force: bool = False
    #: melange's source cache (``--cache-dir``): what ``fetch`` finds in /var/cache/melange
    source_cache: SourceCache | None = None
    #: environment variables every step gets as BuildKit secrets (name -> value): the
    #: LLB names only the variables, the values travel in the solve's session
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, kw_only=True)
class BuiltPackage:
    name: str
    path: Path


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    config: Config
    packages: tuple[BuiltPackage, ...]
    index: Path
    input_digest: str = ""


@dataclass(frozen=True, kw_only=True)
class PlannedBuild:
    """A build ready to solve; ``input_digest`` names everything it depends on."""

    opts: BuildOptions
    config: Config
    signer: Signer | None
    definition: Definition
    input_digest: str
    #: the environment image's key (:func:`~melange2.build.environment.environment_key`);
    #: "" when the build runs on a ``--base-image``
    environment_key: str = ""
    #: the environment's packages, ``name=version`` (melange's locked configuration)
    locked: tuple[str, ...] = ()
    #: the directory the solve's session serves as the sources (None: no sources)
    sources: Path | None = None
    #: what the environment installs, ``name-version (repository)``, in install order
    environment_installs: tuple[str, ...] = ()
    #: the downloads the plan expects (``sha256:<hex>``) that the source cache lacks
    source_cache_missing: tuple[str, ...] = ()


def prepare(opts: BuildOptions) -> tuple[Config, BuildPlan]:
    """Parse and compile: everything that can be wrong with the config, before BuildKit."""
    config = load_config(opts.config, arch=opts.arch, extra_vars=dict(opts.vars) or None)
    if not config.package.builds_for(opts.arch):
        raise ConfigError(
            f"{opts.config}: package {config.package.name} does not build for {opts.arch} "
            f"(target-architecture: {', '.join(config.package.target_architecture)})"
        )
    check_linter_names(as_built(config))
    dirs = [*opts.pipeline_dirs, opts.config.parent / "pipelines"]
    plan = compile_build(config, PipelineResolver([d for d in dirs if d.is_dir()]))
    return config, plan


def step_env(plan_env: Mapping[str, str], step: ExecStep, opts: BuildOptions) -> dict[str, str]:
    env = {
        **DEFAULT_ENV,
        "SOURCE_DATE_EPOCH": str(opts.source_date_epoch),
        **plan_env,
        **step.env,
        **opts.env,
    }
    for name in opts.secrets:  # a secret's name is the secret's, never a plain value
        env.pop(name, None)
    return env


def secret_env(opts: BuildOptions) -> dict[str, str]:
    """Each secret as the variable of its name (secret ids are the names)."""
    return {name: name for name in opts.secrets}


def secret_session(
    opts: BuildOptions, local_dirs: Mapping[str, Path] | None = None
) -> Session | None:
    """The session that serves the build's secrets and ``local_dirs`` (``None``: there
    is nothing to serve)."""
    if not opts.secrets and not local_dirs:
        return None
    return Session(
        secrets={k: v.encode() for k, v in opts.secrets.items()}, local_dirs=dict(local_dirs or {})
    )


def build_graph(
    config: Config,
    plan: BuildPlan,
    opts: BuildOptions,
    *,
    environment: str,
    sources: bool,
    source_cache: ImageRef | None = None,
) -> llb.State:
    """The LLB of the build: the environment, the sources (with ``sources``: the session's
    ``local://`` :data:`~.sources.SOURCES_NAME`), one exec per step (with the source
    cache's files the build expects read-only at /var/cache/melange), and the melange-out
    tree alone as the result."""
    platform = llb.Platform.from_arch(opts.arch)
    mounts = (
        [
            llb.Mount(
                dest=CACHE_MOUNT,
                source=llb.image(str(source_cache), platform=platform, name="source cache"),
                readonly=True,
            )
        ]
        if source_cache is not None
        else []
    )
    env_root = root = llb.image(environment, platform=platform, name="build environment")
    for name in config.package_names:
        root = llb.mkdir(root, f"{WORKSPACE}/melange-out/{name}", name=f"mkdir melange-out/{name}")
    if sources:
        # one name per package: BuildKit keeps its last transfer and asks only for what
        # changed; owners and times are made fixed, as the input digest leaves them out
        key = f"melange2-sources-{config.package.name}"
        root = llb.copy(
            llb.local(SOURCES_NAME, unique_id=key, shared_key_hint=key, platform=platform),
            "/",
            root,
            WORKSPACE,
            name="copy sources into /home/build",
            owner=(0, 0),
            timestamp=0,
        )
    for step in plan.steps:
        script = f"set -x\n{step.script}" if opts.debug else step.script
        root = llb.run(
            root,
            ["/bin/sh", "-c", script],
            env=step_env(plan.environment, step, opts),
            secret_env=secret_env(opts),
            cwd=step.workdir,
            network=opts.network,
            mounts=mounts,
            name=step.name,
            ignore_cache=opts.force,
        ).root
    out = llb.copy(
        root,
        f"{WORKSPACE}/melange-out",
        llb.scratch(platform),
        "/",
        name="collect melange-out",
        ignore_cache=opts.force,
    )
    return _collect_meta(config, env_root, root, out, force=opts.force)


def _collect_meta(
    config: Config, env_root: llb.State, root: llb.State, out: llb.State, *, force: bool
) -> llb.State:
    """Beside melange-out, what packaging reads as melange does (:mod:`.emit`): the
    environment's account files and os-release, the workspace's license-path files.
    With ``force`` these copies bypass BuildKit's cache too: they build on the steps'
    result, and BuildKit would otherwise answer for them with the earlier tree."""
    for name in ("passwd", "group", "os-release"):
        # a wildcard of one name: copied when present, nothing when absent
        out = llb.copy(
            env_root,
            f"/etc/{name[:-1]}[{name[-1]}]",
            out,
            f"/{META_DIR}/etc/",
            allow_wildcard=True,
            allow_empty_wildcard=True,
            contents_only=False,
            name=f"collect /etc/{name}",
            ignore_cache=force,
        )
    for entry in config.package.copyright:
        if entry.license_path:
            out = llb.copy(
                root,
                f"{WORKSPACE}/{entry.license_path}",
                out,
                f"/{META_DIR}/workspace/{entry.license_path}",
                contents_only=False,
                name=f"collect license {entry.license_path}",
                ignore_cache=force,
            )
    return out


def package_infos(
    config: Config,
    arch: str,
    *,
    namespace: str = "unknown",
    commit: str = "unknown",
    analysed: Mapping[str, AnalysedPackage] | None = None,
) -> dict[str, PackageInfo]:
    """``.PKGINFO`` of the package and each subpackage, from the config, as melange
    writes it: ``maintainer`` is the namespace, ``commit`` the config's (or the repository's
    commit), one ``license`` line per copyright entry, a subpackage's own ``url``; with
    ``analysed`` (:func:`~melange2.build.analysis.analyse_packages`), ``depend`` and
    ``provides`` are the config's merged with what SCA found."""
    pkg = config.package
    licenses = tuple(c.license for c in pkg.copyright)

    def triggers(scriptlets: Scriptlets | None) -> tuple[str, ...]:
        return scriptlets.trigger_paths if scriptlets is not None and scriptlets.trigger else ()

    infos = {
        pkg.name: PackageInfo(
            name=pkg.name,
            version=pkg.version,
            epoch=pkg.epoch,
            arch=arch,
            description=pkg.description,
            url=pkg.url,
            license=licenses[0] if licenses else "",
            licenses=licenses if len(licenses) > 1 else (),
            origin=pkg.name,
            commit=pkg.commit or commit,
            maintainer=namespace,
            depends=tuple(pkg.dependencies.runtime),
            provides=tuple(pkg.dependencies.provides),
            replaces=tuple(pkg.dependencies.replaces),
            provider_priority=int(pkg.dependencies.provider_priority)
            if pkg.dependencies.provider_priority
            else None,
            replaces_priority=int(pkg.dependencies.replaces_priority)
            if pkg.dependencies.replaces_priority
            else None,
            triggers=triggers(pkg.scriptlets),
        )
    }
    for sub in config.subpackages:
        infos[sub.name] = PackageInfo(
            name=sub.name,
            version=pkg.version,
            epoch=pkg.epoch,
            arch=arch,
            description=sub.description,
            url=sub.url,
            license=licenses[0] if licenses else "",
            licenses=licenses if len(licenses) > 1 else (),
            origin=pkg.name,
            commit=sub.commit or pkg.commit or commit,
            maintainer=namespace,
            depends=tuple(sub.dependencies.runtime),
            provides=tuple(sub.dependencies.provides),
            replaces=tuple(sub.dependencies.replaces),
            provider_priority=int(sub.dependencies.provider_priority)
            if sub.dependencies.provider_priority
            else None,
            replaces_priority=int(sub.dependencies.replaces_priority)
            if sub.dependencies.replaces_priority
            else None,
            triggers=triggers(sub.scriptlets),
        )
    for name, found in (analysed or {}).items():
        deps = found.dependencies
        infos[name] = infos[name].evolve(
            depends=deps.depends, provides=deps.provides, vendored=deps.vendored
        )
    return infos


def as_built(config: Config) -> Config:
    """``config`` without the subpackages whose ``if`` is false (melange skips them)."""
    enabled = tuple(sp for sp in config.subpackages if subpackage_enabled(config, sp))
    return (
        config if len(enabled) == len(config.subpackages) else replace(config, subpackages=enabled)
    )


def config_commit(opts: BuildOptions) -> str:
    """The config's commit: ``--git-commit``, else its repository's HEAD, else ``unknown``."""
    return opts.git_commit or detect_git_commit(opts.config) or "unknown"


def write_packages(
    config: Config,
    tree: Path,
    opts: BuildOptions,
    signer: Signer | None,
    owners: Mapping[str, tuple[int, int]] | None = None,
    locked: Sequence[str] = (),
    log: Callable[[str], None] = lambda line: None,
) -> tuple[list[BuiltPackage], Path]:
    """Lint the package dirs of the melange-out ``tree`` (:class:`LintFailed` before any
    APK is written), find their automatic dependencies, write one APK per package dir;
    then the index. Linter warnings and what SCA found go to ``log``."""
    config = as_built(config)
    # as melange: lint before the SBOMs exist. melange's SCA runs after it has written
    # them into the trees, but no analyzer takes a 0644 JSON file under var/lib/db/sbom
    # (not ELF, not .pc, not executable, not Python), so SCA here walks the trees as
    # exported and the SBOMs go to write_apk from memory (never into the tree)
    trees = package_trees(config, tree)
    lint_packages(config, trees, log)
    arch_dir = opts.out_dir / opts.arch
    arch_dir.mkdir(parents=True, exist_ok=True)
    commit = config_commit(opts)
    dirs = [*opts.pipeline_dirs, opts.config.parent / "pipelines"]
    resolver = PipelineResolver([d for d in dirs if d.is_dir()])
    mapping = substitution_map(config)
    melange_yaml = render_melange_yaml(
        config,
        YAML(typ="safe").load(opts.config.read_text()) or {},
        BuildFacts(
            arch=opts.arch,
            commit=commit,
            repositories=[
                str(r)
                for r in (
                    opts.repositories
                    if opts.recorded_repositories is None
                    else opts.recorded_repositories
                )
            ],
            keyring=list(
                opts.keyrings if opts.recorded_keyrings is None else opts.recorded_keyrings
            ),
            locked=locked,
        ),
        resolver,
    )
    extras = package_extras(
        config,
        tree,
        context=SbomContext(
            arch=opts.arch,
            namespace=opts.namespace,
            config_file=opts.config_name or str(opts.config),
            config_commit=commit,
            config_repo_url=opts.git_repo_url or "https://unknown/unknown/unknown",
            config_license=opts.config_license,
            created=opts.source_date_epoch,
            tool_version=f"v{melange2.__version__}",
        ),
        owners=owners,
        melange_yaml=melange_yaml,
        inputs_of=lambda step: step_inputs(step, mapping, resolver),
    )
    analysed = analyse_packages(config, trees, opts.arch, log)
    built = []
    infos = package_infos(
        config, opts.arch, namespace=opts.namespace, commit=commit, analysed=analysed
    )
    for name, info in infos.items():
        target = arch_dir / info.filename
        tmp = target.with_name(f".{target.name}.tmp")
        with tmp.open("wb") as out:
            write_apk(
                tree / name,
                info,
                signer,
                out,
                source_date_epoch=opts.source_date_epoch,
                **extras.apk_options(name),
            )
        tmp.replace(target)
        built.append(BuiltPackage(name=name, path=target))
    index_directory(arch_dir, signer, source_date_epoch=opts.source_date_epoch)
    return built, arch_dir / "APKINDEX.tar.gz"


class Builder:
    """Builds configs on one daemon; keeps the environment cache between builds.
    ``policy``: which repositories and keys configs may name (:mod:`melange2.repo.policy`);
    ``connect``: how a daemon is reached (:mod:`melange2.buildkit.solver`; a real one
    over gRPC unless given)."""

    def __init__(
        self,
        registry: RegistryClient,
        cache_dir: Path,
        policy: FetchPolicy | None = None,
        *,
        connect: Connect = BuildkitClient,
    ) -> None:
        self.registry = registry
        self.connect = connect
        self.environments = EnvironmentBuilder(registry, cache_dir, policy)
        #: what the last environment resolved installs (set and read without an await between)
        self.last_installs: tuple[str, ...] = ()
        #: by key file: (its mtime, the signer); one entry per key
        self._signers: dict[Path, tuple[float, Signer]] = {}

    async def aclose(self) -> None:
        await self.environments.aclose()

    def _signer(self, key: Path) -> Signer:
        """Loading (and checking) an RSA key costs tens of milliseconds: once per key."""
        path, mtime = key.resolve(), key.stat().st_mtime
        held = self._signers.get(path)
        if held is not None and held[0] == mtime:
            return held[1]
        signer = Signer.from_files(key)
        self._signers[path] = (mtime, signer)
        return signer

    async def environment(
        self,
        opts: BuildOptions,
        packages: Sequence[str],
        repositories: Sequence[str | Repository],
        keyring: Sequence[str],
        untrusted: Sequence[str | Repository] = (),
    ) -> tuple[str, str]:
        """The environment image and its key ("" for a ``--base-image``)."""
        image, key, _ = await self.locked_environment(
            opts, packages, repositories, keyring, untrusted
        )
        return image, key

    async def locked_environment(
        self,
        opts: BuildOptions,
        packages: Sequence[str],
        repositories: Sequence[str | Repository],
        keyring: Sequence[str],
        untrusted: Sequence[str | Repository] = (),
    ) -> tuple[str, str, tuple[str, ...]]:
        """The environment image, its key and its packages (``name=version``)."""
        if not packages:
            if opts.base_image is None:
                raise ConfigError(
                    f"{opts.config}: environment.contents.packages is empty and no --base-image "
                    "was given: nothing to build in"
                )
            return opts.base_image, "", ()
        prepared = await self.environments.prepare(
            EnvironmentRequest(
                arch=opts.arch,
                packages=packages,
                repositories=[*repositories, *opts.repositories],
                keyring=[*keyring, *opts.keyrings],
                untrusted_repositories=untrusted,
            )
        )
        locked = tuple(
            sorted(f"{p.record.name}={p.record.version}" for p in prepared.resolution.packages)
        )
        self.last_installs = tuple(
            f"{p.record.name}-{p.record.version} ({p.repository.location})"
            for p in prepared.resolution.packages
        )
        return str(prepared.image), prepared.key, locked

    async def plan(self, opts: BuildOptions) -> PlannedBuild:
        """Everything before the solve: parse and compile, compose the environment, hash
        the sources, make the LLB; and the digest of all of it (:mod:`.inputs`)."""
        config, plan = await asyncio.to_thread(prepare, opts)
        signer = (
            await asyncio.to_thread(self._signer, opts.signing_key) if opts.signing_key else None
        )
        contents = config.environment.contents
        with tracing.span("environment"):
            env_image, env_key, locked = await self.locked_environment(
                opts,
                environment_packages(config, plan),
                contents.repositories,
                contents.keyring,
            )
        installs = self.last_installs if env_key else ()
        platform = llb.Platform.from_arch(opts.arch)
        sources = (
            opts.source_dir if opts.source_dir is not None and opts.source_dir.is_dir() else None
        )
        sources_digest = await asyncio.to_thread(source_digest, sources) if sources else ""
        cached = None
        cache_missing: tuple[str, ...] = ()
        if opts.source_cache is not None and plan.source_digests:
            found = await cache_image(
                opts.source_cache, plan.source_digests, platform, self.registry
            )
            cached, cache_missing = found.image, found.missing
        state = build_graph(
            config,
            plan,
            opts,
            environment=env_image,
            sources=sources is not None,
            source_cache=cached,
        )
        definition = llb.marshal(state)
        # ``force`` is not an input: what it changes (the ops' ``ignore_cache``) is
        # left out of the digest, so a forced build is reused as any other
        raw = llb.without_ignore_cache(definition).SerializeToString(deterministic=True)
        base_digest = ""
        if env_image == opts.base_image and "@sha256:" not in env_image:
            # a tag can move: the digest it names now is the input
            ref = ImageRef.parse(env_image)
            if ref.host == self.registry.host:
                base_digest = (await self.registry.get_manifest(ref.repo, ref.reference)).digest
        digest = input_digest(
            config=config,
            definition=raw,
            arch=opts.arch,
            signer=signer,
            source_date_epoch=opts.source_date_epoch,
            with_test=opts.with_test,
            base_image_digest=base_digest,
            sources_digest=sources_digest,
        )
        return PlannedBuild(
            opts=opts,
            config=config,
            signer=signer,
            definition=definition,
            input_digest=digest,
            environment_key=env_key,
            locked=locked,
            sources=sources,
            environment_installs=installs,
            source_cache_missing=cache_missing,
        )

    async def build(self, opts: BuildOptions, sinks: Sequence[StepSink] = ()) -> BuildResult:
        return await self.run(await self.plan(opts), sinks)

    async def run(
        self,
        planned: PlannedBuild,
        sinks: Sequence[StepSink] = (),
        timer: PhaseTimer | None = None,
    ) -> BuildResult:
        """Solve a planned build, write its packages (and run its tests if asked)."""
        opts, config, signer = planned.opts, planned.config, planned.signer
        timer = timer or PhaseTimer()
        tracker = ProgressTracker(sinks=sinks)
        out = tempfile.TemporaryDirectory(prefix="melange2-out-")
        try:
            tree = Path(out.name)
            with timer.phase("solve"):
                owners = await self._solve(planned, tree, tracker)
            with timer.phase("package"):
                built, index = await self._package(
                    config, tree, opts, signer, tracker, owners, planned.locked
                )
        finally:
            # removing the tree is a few ms of rmdir per directory on some disks: not on
            # the event loop, which a server shares with every other build
            await asyncio.shield(asyncio.to_thread(out.cleanup))
        if opts.with_test:
            with timer.phase("test"):
                await self.test(opts, config, sinks, built_repo=opts.out_dir)
        return BuildResult(
            config=config, packages=tuple(built), index=index, input_digest=planned.input_digest
        )

    async def _package(
        self,
        config: Config,
        tree: Path,
        opts: BuildOptions,
        signer: Signer | None,
        tracker: ProgressTracker,
        owners: Mapping[str, tuple[int, int]],
        locked: Sequence[str],
    ) -> tuple[list[BuiltPackage], Path]:
        """:func:`write_packages` in a thread, shown as a step of its own in the log: its
        linter findings and automatic dependencies are the step's output."""
        step = PACKAGE_STEP
        lines: list[str] = []
        for sink in tracker.sinks:
            sink.started(step)
        began = time.monotonic()
        error = ""
        try:
            return await asyncio.to_thread(
                write_packages, config, tree, opts, signer, owners, locked, lines.append
            )
        except LintFailed as exc:
            error = str(exc)
            raise
        finally:
            # file names need not be UTF-8: their bytes show escaped
            output = "".join(f"{line}\n" for line in lines).encode("utf-8", "backslashreplace")
            for sink in tracker.sinks:
                if output:
                    sink.output(step, output)
                sink.finished(step, seconds=time.monotonic() - began, cached=False, error=error)

    async def _solve(
        self, planned: PlannedBuild, tree: Path, tracker: ProgressTracker
    ) -> Mapping[str, tuple[int, int]]:
        """Solve; the result (``melange-out`` and :data:`~.emit.META_DIR`) comes back into
        ``tree`` through the solve's session (the ``local`` exporter), no registry
        between. Returns the owner of every path of it, as the daemon had them."""
        opts = planned.opts
        async with self.connect(opts.buildkit_addr, tls=opts.buildkit_tls) as bk:
            result = await bk.solve(
                planned.definition,
                exporters=[local_export(tree)],
                session=secret_session(
                    opts,
                    {SOURCES_NAME: planned.sources} if planned.sources is not None else None,
                ),
                on_progress=tracker,
                cache_imports=[{"type": "registry", "ref": opts.cache_ref}]
                if opts.cache_ref
                else (),
                cache_exports=[{"type": "registry", "ref": opts.cache_ref, "mode": opts.cache_mode}]
                if opts.cache_ref
                else (),
            )
        received = result.local_trees.get(0)
        if received is None:
            raise BuildkitError(f"buildkitd at {opts.buildkit_addr} sent no output tree")
        return received.owners

    async def test(
        self,
        opts: BuildOptions,
        config: Config,
        sinks: Sequence[StepSink] = (),
        *,
        built_repo: Path | None = None,
    ) -> int:
        """Run the config's tests; return how many test plans ran."""
        dirs = [*opts.pipeline_dirs, opts.config.parent / "pipelines"]
        plans = compile_tests(config, PipelineResolver([d for d in dirs if d.is_dir()]))
        platform = llb.Platform.from_arch(opts.arch)
        repo = built_repo or opts.out_dir
        signed = opts.signing_key is not None
        for plan in plans:
            keyring = [*plan.contents.keyring]
            repos: list[str | Repository] = [*plan.contents.repositories]
            if signed and opts.signing_key is not None:
                keyring.append(str(opts.signing_key.with_name(opts.signing_key.name + ".pub")))
                repos.insert(0, Repository.parse(repo))  # our own output: not a config's
            image, _ = await self.environment(
                opts,
                plan.contents.packages,
                repos,
                keyring,
                untrusted=() if signed else (Repository.parse(repo),),
            )
            root = llb.image(image, platform=platform, name=f"test environment: {plan.package}")
            for step in plan.steps:
                root = llb.run(
                    root,
                    ["/bin/sh", "-c", step.script],
                    env=step_env(plan.environment, step, opts),
                    secret_env=secret_env(opts),
                    cwd=step.workdir,
                    network=opts.network,
                    name=f"test {plan.package}: {step.name}",
                    ignore_cache=True,
                ).root
            async with self.connect(opts.buildkit_addr, tls=opts.buildkit_tls) as bk:
                await bk.solve(
                    llb.marshal(root),
                    on_progress=ProgressTracker(sinks=sinks),
                    session=secret_session(opts),
                )
        return len(plans)
