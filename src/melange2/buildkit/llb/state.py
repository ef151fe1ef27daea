"""An LLB graph builder: immutable states, ops that produce them, and marshalling to a
``pb.Definition`` that BuildKit's ``Solve`` accepts.

A :class:`State` is one output of one op (or ``scratch()``, the empty filesystem).
Ops are created by :func:`image`, :func:`run` and the file functions; nothing is
serialised until :func:`marshal`, which walks the graph, serialises every op
deterministically, and names each by the SHA-256 digest of its bytes, as BuildKit does.

Example::

    base = image("127.0.0.1:5000/base@sha256:...", platform=Platform.from_arch("x86_64"))
    step = run(base, ["/bin/sh", "-c", "echo hi > /out/greeting"],
               mounts=[Mount(dest="/out")], name="greet")
    definition = marshal(step.output("/out"))
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from melange2.buildkit._proto.solver.pb import ops_pb2 as pb
from melange2.platform import Platform

Network = Literal["unset", "host", "none"]
MountKind = Literal["bind", "cache", "tmpfs", "secret"]

_NETWORK = {"unset": pb.NetMode.UNSET, "host": pb.NetMode.HOST, "none": pb.NetMode.NONE}
_MOUNT_KIND = {
    "bind": pb.MountType.BIND,
    "cache": pb.MountType.CACHE,
    "tmpfs": pb.MountType.TMPFS,
    "secret": pb.MountType.SECRET,
}
_UNSET_TIME = -1  # BuildKit's "no timestamp given"
_EMPTY_INPUT = -1  # an input index meaning "scratch"
_SKIP_OUTPUT = -1  # an output index meaning "not an output"


@dataclass(eq=False, kw_only=True)
class _Op:
    """One vertex: its proto (without inputs) and the states it reads, in input order."""

    proto: pb.Op
    inputs: tuple[State, ...]
    name: str | None
    ignore_cache: bool = False


@dataclass(frozen=True, kw_only=True)
class State:
    """One output of an op: a filesystem BuildKit can build on."""

    op: _Op | None = None  #: None for scratch
    index: int = 0
    platform: Platform | None = None

    @property
    def is_scratch(self) -> bool:
        return self.op is None


def scratch(platform: Platform | None = None) -> State:
    """The empty filesystem."""
    return State(platform=platform)


def _set_platform(op: pb.Op, platform: Platform | None) -> None:
    if platform is not None:
        op.platform.CopyFrom(
            pb.Platform(
                OS=platform.os, Architecture=platform.architecture, Variant=platform.variant
            )
        )


def image(ref: str, *, platform: Platform | None = None, name: str | None = None) -> State:
    """An image from a registry (``host/repo:tag`` or ``host/repo@sha256:...``)."""
    op = pb.Op(source=pb.SourceOp(identifier=f"docker-image://{ref}"))
    _set_platform(op, platform)
    return State(op=_Op(proto=op, inputs=(), name=name or f"image {ref}"), platform=platform)


def local(
    name: str,
    *,
    unique_id: str = "",
    shared_key_hint: str = "",
    platform: Platform | None = None,
) -> State:
    """The client's directory ``name`` (a ``Session(local_dirs={name: path})`` serves it),
    sent through the session's file sync. The digest names the directory, not its
    contents: BuildKit keys the steps that read it by a checksum of what arrived.
    ``unique_id`` keeps two clients' directories of one name apart (default: the name)."""
    attrs = {"local.unique": unique_id or name}
    if shared_key_hint:
        attrs["local.sharedkeyhint"] = shared_key_hint
    op = pb.Op(source=pb.SourceOp(identifier=f"local://{name}", attrs=attrs))
    return State(op=_Op(proto=op, inputs=(), name=f"local {name}"), platform=platform)


@dataclass(frozen=True, kw_only=True)
class Mount:
    """A mount of an exec step. ``source`` None mounts scratch (an empty directory).

    A ``secret`` mount (see :func:`secret_mount`) is a file holding the session's secret
    ``secret_id``, owned ``uid``:``gid`` with ``mode``; only its id is in the LLB."""

    dest: str
    source: State | None = None
    selector: str = ""
    readonly: bool = False
    kind: MountKind = "bind"
    cache_id: str = ""
    secret_id: str = ""
    uid: int = 0
    gid: int = 0
    mode: int = 0o400
    optional: bool = False


def secret_mount(
    dest: str,
    secret_id: str,
    *,
    uid: int = 0,
    gid: int = 0,
    mode: int = 0o400,
    optional: bool = False,
) -> Mount:
    """A file at ``dest`` with the session's secret ``secret_id`` (read-only, in tmpfs,
    never part of the step's output). ``optional``: an unknown id gives an empty file."""
    return Mount(
        dest=dest,
        kind="secret",
        secret_id=secret_id,
        uid=uid,
        gid=gid,
        mode=mode,
        optional=optional,
    )


@dataclass(frozen=True, kw_only=True)
class ExecState:
    """The outputs of one exec step: the root filesystem and each writable bind mount."""

    root: State
    mounts: Mapping[str, State] = field(default_factory=dict)

    def output(self, dest: str) -> State:
        """The state of the writable mount at ``dest`` after the step."""
        return self.mounts[dest]


class _Inputs:
    """Collects an op's input states, one index per distinct state."""

    def __init__(self) -> None:
        self.states: list[State] = []

    def index(self, state: State | None) -> int:
        if state is None or state.is_scratch:
            return _EMPTY_INPUT
        for i, known in enumerate(self.states):
            if known == state:
                return i
        self.states.append(state)
        return len(self.states) - 1


def run(
    root: State,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    user: str = "",
    network: Network = "unset",
    mounts: Sequence[Mount] = (),
    name: str | None = None,
    platform: Platform | None = None,
    valid_exit_codes: Sequence[int] = (),
    ignore_cache: bool = False,
    secret_env: Mapping[str, str] | None = None,
) -> ExecState:
    """Run ``args`` on ``root`` with the given environment, directory, user, network and
    mounts. Returns the new root and every writable bind mount's output.

    ``secret_env`` maps environment variable names to secret ids: the step sees the
    session's secret values there, while the LLB holds only the ids."""
    if not args:
        raise ValueError("run: args must not be empty")
    plat = platform or root.platform
    inputs = _Inputs()
    pb_mounts = [pb.Mount(input=inputs.index(root), dest="/", output=0)]
    outputs: dict[str, int] = {}
    next_output = 1
    for m in sorted(mounts, key=lambda m: m.dest):
        mount = pb.Mount(dest=m.dest, selector=m.selector, readonly=m.readonly)
        mount.mountType = _MOUNT_KIND[m.kind]
        if m.kind == "bind":
            mount.input = inputs.index(m.source)
            if m.readonly:
                mount.output = _SKIP_OUTPUT
            else:
                mount.output = next_output
                outputs[m.dest] = next_output
                next_output += 1
        else:
            mount.input = _EMPTY_INPUT
            mount.output = _SKIP_OUTPUT
            if m.kind == "cache":
                mount.cacheOpt.CopyFrom(
                    pb.CacheOpt(ID=m.cache_id or m.dest, sharing=pb.CacheSharingOpt.SHARED)
                )
            elif m.kind == "secret":
                if not m.secret_id:
                    raise ValueError(f"run: secret mount at {m.dest} needs a secret_id")
                mount.secretOpt.CopyFrom(
                    pb.SecretOpt(
                        ID=m.secret_id, uid=m.uid, gid=m.gid, mode=m.mode, optional=m.optional
                    )
                )
        pb_mounts.append(mount)
    meta = pb.Meta(
        args=list(args),
        env=[f"{k}={v}" for k, v in (env or {}).items()],
        cwd=cwd,
        user=user,
        validExitCodes=list(valid_exit_codes),
    )
    exec_op = pb.ExecOp(
        meta=meta,
        mounts=pb_mounts,
        network=_NETWORK[network],
        secretenv=[
            pb.SecretEnv(ID=secret_id, name=var)
            for var, secret_id in sorted((secret_env or {}).items())
        ],
    )
    op = pb.Op(exec=exec_op)
    _set_platform(op, plat)
    vertex = _Op(
        proto=op,
        inputs=tuple(inputs.states),
        name=name or " ".join(args),
        ignore_cache=ignore_cache,
    )
    return ExecState(
        root=State(op=vertex, index=0, platform=plat),
        mounts={dest: State(op=vertex, index=i, platform=plat) for dest, i in outputs.items()},
    )


def _file_op(
    state: State,
    action: pb.FileAction,
    name: str,
    secondary: State | None = None,
    *,
    ignore_cache: bool = False,
) -> State:
    inputs = _Inputs()
    action.input = inputs.index(state)
    action.secondaryInput = inputs.index(secondary) if secondary is not None else _EMPTY_INPUT
    action.output = 0
    op = pb.Op(file=pb.FileOp(actions=[action]))
    _set_platform(op, state.platform)
    vertex = _Op(proto=op, inputs=tuple(inputs.states), name=name, ignore_cache=ignore_cache)
    return State(op=vertex, index=0, platform=state.platform)


def mkfile(
    state: State, path: str, data: bytes, *, mode: int = 0o644, name: str | None = None
) -> State:
    """``state`` with a file at ``path`` holding ``data``."""
    action = pb.FileAction(
        mkfile=pb.FileActionMkFile(path=path, mode=mode, data=data, timestamp=_UNSET_TIME)
    )
    return _file_op(state, action, name or f"mkfile {path}")


def mkdir(
    state: State, path: str, *, mode: int = 0o755, parents: bool = True, name: str | None = None
) -> State:
    """``state`` with a directory at ``path``."""
    action = pb.FileAction(
        mkdir=pb.FileActionMkDir(path=path, mode=mode, makeParents=parents, timestamp=_UNSET_TIME)
    )
    return _file_op(state, action, name or f"mkdir {path}")


def rm(state: State, path: str, *, allow_not_found: bool = True, name: str | None = None) -> State:
    """``state`` without ``path``."""
    action = pb.FileAction(rm=pb.FileActionRm(path=path, allowNotFound=allow_not_found))
    return _file_op(state, action, name or f"rm {path}")


def symlink(state: State, target: str, path: str, *, name: str | None = None) -> State:
    """``state`` with a symlink at ``path`` pointing to ``target``."""
    action = pb.FileAction(
        symlink=pb.FileActionSymlink(oldpath=target, newpath=path, timestamp=_UNSET_TIME)
    )
    return _file_op(state, action, name or f"symlink {path} -> {target}")


def copy(
    src: State,
    src_path: str,
    dest: State,
    dest_path: str,
    *,
    contents_only: bool = True,
    create_parents: bool = True,
    allow_wildcard: bool = False,
    allow_empty_wildcard: bool = False,
    name: str | None = None,
    ignore_cache: bool = False,
    owner: tuple[int, int] | None = None,
    timestamp: int | None = None,
) -> State:
    """``dest`` with ``src_path`` of ``src`` copied to ``dest_path``. A directory's
    contents are copied into ``dest_path`` (``contents_only``), as ``COPY dir/ dest/``.
    With ``allow_empty_wildcard`` a wildcard matching nothing copies nothing (a path that
    may be absent: ``/etc/os-releas[e]``). ``ignore_cache`` copies again even when
    BuildKit's cache knows the result. ``owner`` (uid, gid) and ``timestamp`` (seconds)
    are given to every copied entry instead of the source's."""
    copy_action = pb.FileActionCopy(
        src=src_path,
        dest=dest_path,
        mode=-1,
        followSymlink=True,
        dirCopyContents=contents_only,
        createDestPath=create_parents,
        allowWildcard=allow_wildcard,
        allowEmptyWildcard=allow_empty_wildcard,
        timestamp=_UNSET_TIME if timestamp is None else timestamp,
    )
    if owner is not None:
        copy_action.owner.CopyFrom(
            pb.ChownOpt(user=pb.UserOpt(byID=owner[0]), group=pb.UserOpt(byID=owner[1]))
        )
    action = pb.FileAction(copy=copy_action)
    return _file_op(
        dest,
        action,
        name or f"copy {src_path} -> {dest_path}",
        secondary=src,
        ignore_cache=ignore_cache,
    )


def marshal(state: State) -> pb.Definition:
    """Serialise the graph that produces ``state`` into a ``pb.Definition``."""
    definition = pb.Definition()
    digests: dict[int, str] = {}
    seen: set[str] = set()
    ops = getattr(definition, "def")  # `def` is a Python keyword

    def visit(op: _Op) -> str:
        known = digests.get(id(op))
        if known is not None:
            return known
        proto = pb.Op()
        proto.CopyFrom(op.proto)
        for inp in op.inputs:
            assert inp.op is not None  # scratch never becomes an input
            proto.inputs.append(pb.Input(digest=visit(inp.op), index=inp.index))
        data = proto.SerializeToString(deterministic=True)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        digests[id(op)] = digest
        if digest not in seen:
            seen.add(digest)
            ops.append(data)
            meta = definition.metadata[digest]
            if op.name:
                meta.description["llb.customname"] = op.name
            if op.ignore_cache:
                meta.ignore_cache = True
        return digest

    if state.op is None:
        raise ValueError("marshal: cannot solve scratch on its own")
    head = visit(state.op)
    terminal = pb.Op(inputs=[pb.Input(digest=head, index=state.index)])
    ops.append(terminal.SerializeToString(deterministic=True))
    return definition


def without_ignore_cache(definition: pb.Definition) -> pb.Definition:
    """``definition`` with no op's ``ignore_cache`` set: the same graph, as BuildKit's cache
    would key it (the ops themselves, and so their digests, never hold the flag)."""
    if not any(meta.ignore_cache for meta in definition.metadata.values()):
        return definition
    plain = pb.Definition()
    plain.CopyFrom(definition)
    for meta in plain.metadata.values():
        meta.ignore_cache = False
    return plain


def digest_of(state: State) -> str:
    """The digest of the op that produces ``state`` (the last vertex of its definition)."""
    definition = marshal(state)
    terminal = pb.Op()
    terminal.ParseFromString(getattr(definition, "def")[-1])
    return terminal.inputs[0].digest
