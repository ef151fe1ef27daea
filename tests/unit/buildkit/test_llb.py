"""The LLB builder's definitions: well-formed graphs BuildKit can load (inputs name
ops present in the definition, the terminal op last), deterministic digests."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from melange2.buildkit import llb
from melange2.buildkit._proto.solver.pb import ops_pb2 as pb

BASE = "127.0.0.1:5000/base@sha256:" + "a" * 64
X86 = llb.Platform.from_arch("x86_64")
ARM = llb.Platform.from_arch("aarch64")


def _ops(definition: pb.Definition) -> list[tuple[str, pb.Op]]:
    out = []
    for data in getattr(definition, "def"):
        op = pb.Op()
        op.ParseFromString(data)
        out.append(("sha256:" + hashlib.sha256(data).hexdigest(), op))
    return out


def _check_well_formed(definition: pb.Definition) -> list[tuple[str, pb.Op]]:
    ops = _ops(definition)
    digests = [d for d, _ in ops]
    assert len(set(digests)) == len(digests), "each op appears once"
    seen: set[str] = set()
    for digest, op in ops[:-1]:
        for inp in op.inputs:
            assert inp.digest in seen, "inputs come before the ops that read them"
        seen.add(digest)
        assert digest in definition.metadata
    terminal = ops[-1][1]
    assert terminal.WhichOneof("op") is None
    assert len(terminal.inputs) == 1 and terminal.inputs[0].digest in seen
    return ops


def test_exec_with_env_cwd_user_network_and_mounts() -> None:
    base = llb.image(BASE, platform=X86)
    cache = llb.Mount(dest="/var/cache", kind="cache", cache_id="apk")
    step = llb.run(
        base,
        ["/bin/sh", "-c", "make"],
        env={"A": "1", "B": "two"},
        cwd="/home/build",
        user="build",
        network="none",
        mounts=[llb.Mount(dest="/out"), cache, llb.Mount(dest="/src", source=base, readonly=True)],
        name="compile",
    )
    definition = llb.marshal(step.output("/out"))
    ops = _check_well_formed(definition)
    (digest, exec_op) = next((d, op) for d, op in ops if op.WhichOneof("op") == "exec")
    meta = exec_op.exec.meta
    assert list(meta.args) == ["/bin/sh", "-c", "make"]
    assert list(meta.env) == ["A=1", "B=two"]
    assert (meta.cwd, meta.user) == ("/home/build", "build")
    assert exec_op.exec.network == pb.NetMode.NONE
    assert exec_op.platform.Architecture == "amd64"
    mounts = {m.dest: m for m in exec_op.exec.mounts}
    assert mounts["/"].input == 0 and mounts["/"].output == 0
    # the base image is one input, read by two mounts
    assert len(exec_op.inputs) == 1
    assert mounts["/src"].input == 0 and mounts["/src"].readonly and mounts["/src"].output == -1
    assert mounts["/out"].input == -1 and mounts["/out"].output == 1
    assert mounts["/var/cache"].mountType == pb.MountType.CACHE
    assert mounts["/var/cache"].cacheOpt.ID == "apk"
    assert definition.metadata[digest].description["llb.customname"] == "compile"
    # the terminal op selects output 1: the /out mount
    assert ops[-1][1].inputs[0].index == 1


def test_image_source_carries_its_platform() -> None:
    definition = llb.marshal(llb.image(BASE, platform=ARM))
    (_, source) = _check_well_formed(definition)[0]
    assert source.source.identifier == f"docker-image://{BASE}"
    assert (source.platform.OS, source.platform.Architecture) == ("linux", "arm64")


def test_file_ops_chain_and_copy_from_other_state() -> None:
    base = llb.image(BASE, platform=X86)
    tree = llb.mkdir(llb.scratch(X86), "/etc", mode=0o755)
    tree = llb.mkfile(tree, "/etc/motd", b"hi", mode=0o600)
    tree = llb.symlink(tree, "motd", "/etc/motd.link")
    result = llb.copy(tree, "/etc", base, "/opt/etc")
    ops = _check_well_formed(llb.marshal(result))
    file_ops = [op for _, op in ops if op.WhichOneof("op") == "file"]
    kinds = [op.file.actions[0].WhichOneof("action") for op in file_ops]
    assert kinds == ["mkdir", "mkfile", "symlink", "copy"]
    # mkdir on scratch reads no input
    assert file_ops[0].file.actions[0].input == -1 and not file_ops[0].inputs
    copy_action = file_ops[-1].file.actions[0]
    assert copy_action.copy.src == "/etc" and copy_action.copy.dest == "/opt/etc"
    assert copy_action.input == 0 and copy_action.secondaryInput == 1
    assert file_ops[1].file.actions[0].mkfile.data == b"hi"
    assert file_ops[1].file.actions[0].mkfile.mode == 0o600


def test_marshal_is_deterministic_and_content_addressed() -> None:
    def build(cmd: str) -> pb.Definition:
        base = llb.image(BASE, platform=X86)
        return llb.marshal(llb.run(base, ["/bin/sh", "-c", cmd], env={"Z": "1", "A": "2"}).root)

    assert build("true").SerializeToString(deterministic=True) == build("true").SerializeToString(
        deterministic=True
    )
    assert llb.digest_of(llb.run(llb.image(BASE), ["a"]).root) != llb.digest_of(
        llb.run(llb.image(BASE), ["b"]).root
    )


def test_shared_subgraph_is_serialised_once() -> None:
    base = llb.image(BASE, platform=X86)
    left = llb.run(base, ["/bin/sh", "-c", "left"], mounts=[llb.Mount(dest="/l")])
    right = llb.run(base, ["/bin/sh", "-c", "right"], mounts=[llb.Mount(dest="/r")])
    joined = llb.copy(right.output("/r"), "/", left.output("/l"), "/r")
    ops = _check_well_formed(llb.marshal(joined))
    sources = [op for _, op in ops if op.WhichOneof("op") == "source"]
    assert len(sources) == 1


def test_platform_names() -> None:
    assert str(llb.Platform.from_arch("x86_64")) == "linux/amd64"
    assert str(llb.Platform.from_arch("arm64")) == "linux/arm64"
    assert llb.Platform.parse("linux/arm/v7").apk_arch == "armv7"
    assert llb.Platform.from_arch("aarch64").apk_arch == "aarch64"


_names = st.text(alphabet="abcdefghij/._-", min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.lists(st.text(max_size=20), min_size=1, max_size=4),
            st.dictionaries(st.from_regex(r"[A-Z_]{1,8}", fullmatch=True), st.text(max_size=10)),
            st.sampled_from(["unset", "host", "none"]),
            st.lists(_names.map(lambda p: "/" + p), max_size=3, unique=True),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_chain_of_steps_marshals_to_a_well_formed_graph(
    steps: list[tuple[list[str], dict[str, str], llb.Network, list[str]]],
) -> None:
    state = llb.image(BASE, platform=X86)
    for args, env, network, dests in steps:
        mounts = [llb.Mount(dest=d) for d in dests if d != "/"]
        state = llb.run(state, args, env=env, network=network, mounts=mounts).root
    ops = _check_well_formed(llb.marshal(state))
    execs = [op for _, op in ops if op.WhichOneof("op") == "exec"]
    assert len(execs) == len(steps)


def test_secret_env_and_mounts_carry_ids_only() -> None:
    step = llb.run(
        llb.image(BASE, platform=X86),
        ["/bin/sh", "-c", "true"],
        mounts=[llb.secret_mount("/run/secrets/k", "key-id", uid=7, gid=8, mode=0o440)],
        secret_env={"TOKEN": "token-id", "A": "a-id"},
    )
    ops = _check_well_formed(llb.marshal(step.root))
    exec_op = next(op.exec for _, op in ops if op.HasField("exec"))
    assert [(e.name, e.ID) for e in exec_op.secretenv] == [("A", "a-id"), ("TOKEN", "token-id")]
    assert not any(e.startswith(("TOKEN=", "A=")) for e in exec_op.meta.env)
    secret = next(m for m in exec_op.mounts if m.dest == "/run/secrets/k")
    assert secret.mountType == pb.MountType.SECRET
    assert (secret.input, secret.output) == (-1, -1)  # no input, never an output
    assert (secret.secretOpt.ID, secret.secretOpt.uid, secret.secretOpt.gid) == ("key-id", 7, 8)
    assert secret.secretOpt.mode == 0o440 and not secret.secretOpt.optional
    # the same ids give the same digest, whatever values a session will serve
    again = llb.run(
        llb.image(BASE, platform=X86),
        ["/bin/sh", "-c", "true"],
        mounts=[llb.secret_mount("/run/secrets/k", "key-id", uid=7, gid=8, mode=0o440)],
        secret_env={"A": "a-id", "TOKEN": "token-id"},
    )
    assert llb.digest_of(step.root) == llb.digest_of(again.root)


def test_local_source_names_the_directory() -> None:
    src = llb.local("src", shared_key_hint="pkg-x")
    ops = _check_well_formed(llb.marshal(src))
    source = next(op.source for _, op in ops if op.HasField("source"))
    assert source.identifier == "local://src"
    assert dict(source.attrs) == {"local.unique": "src", "local.sharedkeyhint": "pkg-x"}
