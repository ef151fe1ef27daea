"""Whatever a package holds, SCA and the linters finish: random bytes behind the ELF
magic, real ELF files with bytes flipped or cut, random ``#!`` lines. An ELF file that
cannot be read is a warning naming it, never an exception or a silent gap."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melange2.apk.pkginfo import PackageInfo
from melange2.sca import analyze
from melange2.sca.elf import ELF_MAGIC, ElfInfo, ElfUnreadable, read_elf
from melange2.sca.lint import LintTarget, lint_build
from melange2.sca.shebang import ShebangError, interpreter_of
from tests.unit.sca.conftest import _host_libz

LIBZ = _host_libz().read_bytes()
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _check(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "p"
        (root / "usr/lib").mkdir(parents=True)
        (root / "usr/bin").mkdir(parents=True)
        lib = root / "usr/lib/libfuzz.so.1"
        lib.write_bytes(data)
        shutil.copyfile(lib, root / "usr/bin/fuzz")
        os.chmod(root / "usr/bin/fuzz", 0o755)
        info = read_elf(lib)
        assert info is None or isinstance(info, (ElfInfo, ElfUnreadable))
        found = analyze(root, name="p", version="1-r0", arch="x86_64")
        if isinstance(info, ElfUnreadable):
            warned = {w.path for w in found.warnings}
            assert "usr/lib/libfuzz.so.1" in warned or "usr/bin/fuzz" in warned
        merged = found.merged(runtime=["busybox"])
        # whatever was found, a package can carry it
        PackageInfo(
            name="p", version="1", arch="x86_64", depends=merged.depends, provides=merged.provides
        ).render()
        lint_build([LintTarget(name="p", tree=root)])


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes_behind_the_magic(tail: bytes) -> None:
    _check(ELF_MAGIC + tail)


@SETTINGS
@given(st.integers(0, len(LIBZ)))
def test_a_real_library_cut_anywhere(keep: int) -> None:
    _check(LIBZ[:keep])


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, len(LIBZ) - 1), st.integers(0, 255)), min_size=1, max_size=8)
)
def test_a_real_library_with_bytes_changed(changes: list[tuple[int, int]]) -> None:
    data = bytearray(LIBZ)
    for at, value in changes:
        data[at] = value
    _check(bytes(data))


@SETTINGS
@given(st.binary(max_size=120))
def test_any_shebang_line(tail: bytes) -> None:
    try:
        command = interpreter_of(b"#!" + tail)
    except ShebangError:
        return
    assert isinstance(command, str)
