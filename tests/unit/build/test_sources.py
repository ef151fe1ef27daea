"""The sources' input digest: names, kinds, modes, contents and link targets count;
owners and times (which the copy into the workspace replaces) do not. And the LLB reads
them as a ``local://`` source whose copy fixes owners and times."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from melange2.build.executor import BuildOptions, build_graph, prepare
from melange2.build.sources import SOURCES_NAME, source_digest
from melange2.buildkit import llb
from melange2.buildkit._proto.solver.pb import ops_pb2 as pb


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.c").write_text("int main;\n")
    (root / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (root / "sub" / "run.sh").chmod(0o755)
    os.symlink("a.c", root / "link")
    return root


def test_the_digest_follows_what_a_step_can_see(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    first = source_digest(root)
    assert first.startswith("sha256:") and first == source_digest(_tree(tmp_path / "again"))
    # times and owners do not count
    os.utime(root / "a.c", (1, 1))
    if os.geteuid() == 0:
        os.chown(root / "a.c", 1234, 5678)
    assert source_digest(root) == first

    def relink() -> None:
        os.unlink(root / "link")
        os.symlink("sub", root / "link")

    changes: list[Callable[[], object]] = [
        lambda: (root / "a.c").write_text("int main();\n"),
        lambda: (root / "sub" / "run.sh").chmod(0o644),
        relink,
        lambda: (root / "sub" / "new").write_bytes(b""),
        lambda: (root / "empty").mkdir(),
    ]
    seen = {first}
    for change in changes:
        change()
        now = source_digest(root)
        assert now not in seen
        seen.add(now)


def test_sources_come_through_the_session_with_fixed_owners_and_times(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "package:\n  name: p\n  version: 1.0.0\n"
        "environment:\n  contents:\n    packages: [busybox]\n"
        "pipeline:\n  - runs: cat a.c\n"
    )
    opts = BuildOptions(
        config=path,
        arch="x86_64",
        buildkit_addr="tcp://127.0.0.1:1",
        registry="127.0.0.1:1",
        out_dir=tmp_path,
        cache_dir=tmp_path,
        source_dir=tmp_path,
    )
    config, plan = prepare(opts)
    definition = llb.marshal(
        build_graph(
            config, plan, opts, environment="127.0.0.1:1/e@sha256:" + "0" * 64, sources=True
        )
    )
    ops = [pb.Op.FromString(raw) for raw in getattr(definition, "def")]
    (local,) = [
        op.source for op in ops if op.HasField("source") and "local://" in op.source.identifier
    ]
    assert local.identifier == f"local://{SOURCES_NAME}"
    # one name per package, not per directory or build: the same inputs, the same LLB
    assert dict(local.attrs) == {
        "local.unique": "melange2-sources-p",
        "local.sharedkeyhint": "melange2-sources-p",
    }
    (copy,) = [
        a.copy
        for op in ops
        if op.HasField("file")
        for a in op.file.actions
        if a.HasField("copy") and a.copy.dest == "/home/build"
    ]
    assert (copy.owner.user.byID, copy.owner.group.byID, copy.timestamp) == (0, 0, 0)
