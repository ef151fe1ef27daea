"""melange2.sca.analyze on real ELF files and hand-made trees; the expected values are
what melange v0.34.0 writes for the same trees (checked against it in
tests/differential/, the sca and sca-host cases)."""

from __future__ import annotations

from pathlib import Path

import pytest

from melange2.sca import ScaOptions, analyze
from tests.unit.sca.conftest import AARCH64_LIB, make_tree

V = "1.2.0-r3"


def test_a_library_provides_its_soname_and_needs_libc(tmp_path: Path, libz: Path) -> None:
    tree = make_tree(
        tmp_path / "zlib",
        {"usr/lib/libz.so.1.2.13": libz, "usr/lib/libz.so.1": ("link", "libz.so.1.2.13")},
    )
    found = analyze(tree, name="zlib", version=V, arch="x86_64")
    assert found.provides == ("so-ver:libz.so.1=1.2.0-r3", "so:libz.so.1=1")
    # the link is followed and names its own SONAME: a dependency on itself, dropped on merge
    assert found.depends == ("so:libc.so.6", "so:libz.so.1")
    assert found.vendored == ()
    assert found.warnings == ()
    merged = found.merged()
    assert merged.depends == ("so:libc.so.6",)
    assert merged.provides == found.provides


def test_an_executable_needs_its_libraries_and_interpreter_and_provides_a_command(
    tmp_path: Path, dpkg_deb: Path
) -> None:
    tree = make_tree(tmp_path / "t", {"usr/bin/dpkg-deb": ("exec", dpkg_deb)})
    found = analyze(tree, name="t", version=V, arch="x86_64")
    assert found.provides == ("cmd:dpkg-deb=1.2.0-r3",)
    assert "so:ld-linux-x86-64.so.2" in found.depends
    assert {"so:libz.so.1", "so:libc.so.6"} <= set(found.depends)
    assert all(d.startswith("so:") for d in found.depends)
    assert list(found.depends) == sorted(found.depends)


@pytest.mark.parametrize(
    ("path", "mode", "provided"),
    [
        ("usr/bin/x", "0755", True),
        ("usr/sbin/x", "0555", True),
        ("bin/x", "0755", True),
        ("usr/bin/x", "0754", False),  # not executable by everyone
        ("usr/bin/x", "0644", False),
        ("usr/libexec/x", "0755", False),
        ("usr/bin/sub/x", "0755", False),  # bin directories are not recursive
        ("usr/local/bin/x", "0755", False),
    ],
)
def test_commands_are_executables_directly_in_bin_dirs(
    tmp_path: Path, path: str, mode: str, provided: bool
) -> None:
    tree = make_tree(tmp_path / "t", {path: (mode, "data\n")})
    found = analyze(tree, name="t", version=V, arch="x86_64")
    assert found.provides == (("cmd:x=1.2.0-r3",) if provided else ())


def test_a_link_to_a_command_provides_nothing(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "t", {"usr/bin/real": ("exec", "x"), "usr/bin/alias": ("link", "real")}
    )
    assert analyze(tree, name="t", version=V, arch="x86_64").provides == ("cmd:real=1.2.0-r3",)


def test_the_binary_and_its_library_in_one_package(
    tmp_path: Path, libz: Path, dpkg_deb: Path
) -> None:
    tree = make_tree(
        tmp_path / "t",
        {
            "usr/lib/libz.so.1.2.13": libz,
            "usr/lib/libz.so.1": ("link", "libz.so.1.2.13"),
            "usr/bin/dpkg-deb": ("exec", dpkg_deb),
        },
    )
    found = analyze(tree, name="t", version=V, arch="x86_64")
    merged = found.merged(
        runtime=["zzz", "busybox", "so:libz.so.1", "busybox"], provides=["t-virt=1"]
    )
    assert "so:libz.so.1" not in merged.depends  # provided by the package itself
    assert merged.depends[0] == "busybox" and merged.depends[-1] == "zzz"
    assert list(merged.depends) == sorted(set(merged.depends))
    assert merged.provides == (
        "cmd:dpkg-deb=1.2.0-r3",
        "so-ver:libz.so.1=1.2.0-r3",
        "so:libz.so.1=1",
        "t-virt=1",
    )


def test_a_library_outside_the_library_dirs_is_vendored(
    tmp_path: Path, libz: Path, dpkg_deb: Path
) -> None:
    tree = make_tree(
        tmp_path / "t",
        {"opt/t/lib/libz.so.1": libz, "usr/bin/dpkg-deb": ("exec", dpkg_deb)},
    )
    found = analyze(tree, name="t", version=V, arch="x86_64")
    assert found.vendored == ("so-ver:libz.so.1=1.2.0-r3", "so:libz.so.1=1")
    assert not any(p.startswith("so") for p in found.provides)
    assert "so:libz.so.1" in found.depends
    # a generated dependency on a vendored library is dropped, a declared one is kept
    assert "so:libz.so.1" not in found.merged().depends
    assert "so:libz.so.1" in found.merged(runtime=["so:libz.so.1"]).depends


def test_ld_so_conf_d_makes_a_directory_a_library_dir_for_the_whole_build(
    tmp_path: Path, libz: Path
) -> None:
    main = make_tree(tmp_path / "t", {"usr/lib/t/libz.so.1": libz})
    conf = make_tree(tmp_path / "t-conf", {"etc/ld.so.conf.d/t.conf": "# comment\n/usr/lib/t\r\n"})
    alone = analyze(main, name="t", version=V, arch="x86_64")
    assert alone.vendored and not alone.provides
    together = analyze(main, name="t", version=V, arch="x86_64", siblings=[main, conf])
    assert together.provides == ("so-ver:libz.so.1=1.2.0-r3", "so:libz.so.1=1")


def test_a_dev_link_depends_on_the_soname_of_the_library_in_another_package(
    tmp_path: Path, libz: Path
) -> None:
    main = make_tree(
        tmp_path / "t",
        {"usr/lib/libz.so.1.2.13": libz, "usr/lib/libz.so.1": ("link", "libz.so.1.2.13")},
    )
    dev = make_tree(tmp_path / "t-dev", {"usr/lib/libz.so": ("link", "libz.so.1.2.13")})
    found = analyze(dev, name="t-dev", version=V, arch="x86_64", siblings=[main, dev])
    assert found.depends == ("so:libz.so.1",)
    assert found.provides == ()
    # without the other packages of the build the target is not found
    assert analyze(dev, name="t-dev", version=V, arch="x86_64").depends == ()


def test_options_drop_what_melange_drops(tmp_path: Path, dpkg_deb: Path) -> None:
    tree = make_tree(
        tmp_path / "t",
        {"usr/bin/dpkg-deb": ("exec", dpkg_deb), "usr/bin/s": ("exec", "#!/bin/bash\n")},
    )
    full = analyze(tree, name="t", version=V, arch="x86_64")
    assert "cmd:bash" in full.depends and "cmd:s=1.2.0-r3" in full.provides
    no_cmd = analyze(tree, name="t", version=V, arch="x86_64", options=ScaOptions(no_commands=True))
    assert not any(x.startswith("cmd:") for x in (*no_cmd.depends, *no_cmd.provides))
    assert no_cmd.depends
    no_dep = analyze(tree, name="t", version=V, arch="x86_64", options=ScaOptions(no_depends=True))
    assert no_dep.depends == () and no_dep.provides == full.provides
    # declared dependencies survive no-depends
    assert no_dep.merged(runtime=["busybox"]).depends == ("busybox",)
    no_prov = analyze(
        tree, name="t", version=V, arch="x86_64", options=ScaOptions(no_provides=True)
    )
    assert no_prov.provides == () and no_prov.depends == full.depends
    assert no_prov.merged(provides=["v=1"]).provides == ("v=1",)


ZLIB_PC = """prefix=/usr
libdir=${prefix}/lib

Name: zlib
Description: zlib compression library
Version: 1.3
Requires: libfoo >= 1.0, bar
Requires.private: baz
Libs: -L${libdir} -lz
Cflags: -I${prefix}/include
"""


def test_pkg_config_files_provide_and_depend(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", {"usr/lib/pkgconfig/zlib.pc": ZLIB_PC})
    found = analyze(tree, name="t", version=V, arch="x86_64")
    assert found.provides == ("pc:zlib=1.2.0-r3",)
    assert found.depends == ("pc:bar", "pc:baz", "pc:libfoo")


def test_pkg_config_outside_the_dirs_is_vendored_and_links_are_skipped(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "t",
        {
            "usr/lib/x86_64-linux-gnu/pkgconfig/zlib.pc": ZLIB_PC,
            "usr/share/pkgconfig/alias.pc": (
                "link",
                "../../lib/x86_64-linux-gnu/pkgconfig/zlib.pc",
            ),
        },
    )
    found = analyze(tree, name="t", version=V, arch="x86_64")
    assert found.provides == () and found.depends == ()
    assert found.vendored == ("pc:zlib=1.2.0-r3",)


def test_a_pc_file_go_pkgconfig_refuses_is_skipped_with_a_warning(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "t",
        {"usr/lib/pkgconfig/bad.pc": "Name: bad\nRequires: ${missing}\n"},
    )
    found = analyze(tree, name="t", version=V, arch="x86_64")
    assert found.provides == () and found.depends == ()
    assert [w.path for w in found.warnings] == ["usr/lib/pkgconfig/bad.pc"]
    assert "pkgconfig" in found.warnings[0].message


def test_python_site_packages_depend_on_python_base(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", {"usr/lib/python3.12/site-packages/foo/__init__.py": ""})
    assert analyze(tree, name="t", version=V, arch="x86_64").depends == ("python-3.12-base",)
    declared = analyze(tree, name="t", version=V, arch="x86_64", declared_runtime=["python3"])
    assert declared.depends == ()
    assert declared.warnings and "python3" in declared.warnings[0].message


def test_python_the_last_site_packages_walked_wins(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "t",
        {
            "usr/lib/python3.11/site-packages/a.py": "",
            "usr/lib/python3.12/site-packages/b.py": "",
        },
    )
    assert analyze(tree, name="t", version=V, arch="x86_64").depends == ("python-3.12-base",)


def test_ruby_gems_depend_on_ruby(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", {"usr/lib/ruby/gems/3.3.0/gems/foo-1.0/lib/foo.rb": ""})
    assert analyze(tree, name="t", version=V, arch="x86_64").depends == ("ruby-3.3",)
    assert (
        analyze(tree, name="t", version=V, arch="x86_64", declared_runtime=["ruby"]).depends == ()
    )


@pytest.mark.parametrize(
    ("script", "depends"),
    [
        ("#!/bin/bash\n", ("cmd:bash",)),
        ("#!/usr/bin/env perl\nprint 1\n", ("cmd:perl",)),
        ("#!/usr/bin/env -S perl -w\n", ("cmd:perl",)),
        ("#! /usr/bin/lua5.4 -x\n", ("cmd:lua5.4",)),
        ("#!/bin/sh\n", ()),
        ("#!/usr/bin/env python3\n", ()),
        ("#!/usr/bin/python3\n", ()),
        ("#!/usr/bin/awk -f\n", ()),
        ("echo no shebang\n", ()),
        ("", ()),
    ],
)
def test_shebangs(tmp_path: Path, script: str, depends: tuple[str, ...]) -> None:
    tree = make_tree(tmp_path / "t", {"usr/bin/s": ("0644", script)})
    found = analyze(tree, name="t", version=V, arch="x86_64")
    assert found.depends == depends
    assert found.warnings == ()


@pytest.mark.parametrize("script", ["#!/usr/bin/env\n", "#!/usr/bin/env -i perl\n", "#!\n"])
def test_unusable_shebangs_warn_naming_the_file(tmp_path: Path, script: str) -> None:
    tree = make_tree(tmp_path / "t", {"usr/local/bin/s": ("exec", script)})
    found = analyze(tree, name="t", version=V, arch="x86_64")
    assert found.depends == ()
    assert [w.path for w in found.warnings] == ["usr/local/bin/s"]


def test_shebangs_outside_usr_bin_or_in_links_are_ignored(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "t",
        {
            "usr/libexec/s": ("exec", "#!/bin/bash\n"),
            "bin/s": ("exec", "#!/bin/zsh\n"),
            "usr/bin/l": ("link", "../libexec/s"),
            "usr/bin/nested/deep": ("exec", "#!/usr/bin/tclsh\n"),
        },
    )
    assert analyze(tree, name="t", version=V, arch="x86_64").depends == ("cmd:tclsh",)


def test_doc_packages_depend_on_man_db_and_texinfo(tmp_path: Path) -> None:
    spec = {"usr/share/man/man1/t.1": "x", "usr/share/info/t.info": "x"}
    doc = make_tree(tmp_path / "t-doc", spec)
    assert analyze(doc, name="t-doc", version=V, arch="x86_64").depends == ("man-db", "texinfo")
    other = make_tree(tmp_path / "t", spec)
    assert analyze(other, name="t", version=V, arch="x86_64").depends == ()


def test_a_foreign_arch_library_is_analysed_and_warned_about(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", {"usr/lib/libattr.so.1.1.2501": AARCH64_LIB})
    found = analyze(tree, name="t", version=V, arch="x86_64")
    # what melange records for it (Go's debug/elf reads any machine)
    assert found.provides == ("so-ver:libattr.so.1=1.2.0-r3", "so:libattr.so.1=1")
    assert found.depends == ("so:ld-linux-aarch64.so.1", "so:libc.so.6")
    assert len(found.warnings) == 1
    warning = found.warnings[0]
    assert warning.path == "usr/lib/libattr.so.1.1.2501"
    assert "EM_AARCH64" in warning.message and "x86_64" in warning.message
    # and in an aarch64 build it is at home
    native = analyze(tree, name="t", version=V, arch="aarch64")
    assert native.warnings == () and native.provides == found.provides


@pytest.mark.parametrize("keep", [4, 16, 63, 64, 1000, -4096, -1])
def test_a_truncated_elf_file_is_skipped_with_a_warning(
    tmp_path: Path, libz: Path, keep: int
) -> None:
    data = libz.read_bytes()
    tree = make_tree(
        tmp_path / "t",
        {"usr/lib/libz.so.1": data[:keep], "usr/lib/libok.so": ("link", "libz.so.1")},
    )
    found = analyze(tree, name="t", version=V, arch="x86_64")
    assert found.provides == () and found.depends == ()
    assert [w.path for w in found.warnings] == ["usr/lib/libz.so.1"]
    assert "not a readable ELF file" in found.warnings[0].message


def test_garbage_after_the_elf_magic_is_skipped_with_a_warning(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "t",
        {
            "usr/bin/x": ("exec", b"\x7fELF" + bytes(range(256)) * 4),
            "usr/bin/y": ("exec", b"\x7fELF"),
        },
    )
    found = analyze(tree, name="t", version=V, arch="x86_64")
    assert found.depends == ()
    assert found.provides == ("cmd:x=1.2.0-r3", "cmd:y=1.2.0-r3")  # still commands
    assert sorted(w.path for w in found.warnings) == ["usr/bin/x", "usr/bin/y"]


def test_a_go_binary_without_cgo_needs_no_fips_packages() -> None:
    from melange2.sca.elf import ElfInfo, read_elf

    melange = Path(__file__).resolve().parents[3] / ".tools" / "bin" / "melange"
    info = read_elf(melange)
    assert isinstance(info, ElfInfo)
    assert info.go_settings is not None
    assert info.go_settings["CGO_ENABLED"] == "0"
    assert info.go_settings["GOOS"] == "linux"


def test_a_name_a_package_cannot_list_is_left_out_with_a_warning(
    tmp_path: Path, libz: Path
) -> None:
    data = libz.read_bytes()
    assert b"libz.so.1\x00" in data
    tree = make_tree(
        tmp_path / "t", {"usr/lib/libz.so.1": data.replace(b"libz.so.1\x00", b"libz so.1\x00")}
    )
    found = analyze(tree, name="t", version=V, arch="x86_64")
    assert not any("libz" in p for p in found.provides)
    assert found.depends == ("so:libc.so.6",)
    assert [w.path for w in found.warnings] == ["usr/lib/libz.so.1", "usr/lib/libz.so.1"]
    assert "'so:libz so.1=0'" in found.warnings[0].message
