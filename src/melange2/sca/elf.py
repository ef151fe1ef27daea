"""What the analyzers and linters read from an ELF file, read with pyelftools.

melange reads ELF with Go's ``debug/elf``; :func:`read_elf` reads the same facts with
pyelftools and refuses the files ``elf.NewFile`` refuses (bad identification, header
tables outside the file, a broken section name table), so a file melange skips is
skipped here too; the difference is that here the reason is kept, for a warning that
names the file.

- the interpreter: the first ``PT_INTERP`` segment, NULs trimmed (``findInterpreter``);
- ``DT_NEEDED`` and ``DT_SONAME``: from the first ``SHT_DYNAMIC`` *section* and the
  string table its ``sh_link`` names, every entry read as Go's ``DynString`` does (a value
  whose string is not NUL-terminated inside the table is dropped);
- ``e_machine``, the names of the sections (for the ``strip`` linter), and the build
  settings of a Go binary (``debug/buildinfo``, the 1.18+ inline format), for melange's
  FIPS check.
"""

from __future__ import annotations

import functools
import io
import json
import mmap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO, Final

from elftools.common.exceptions import ELFError
from elftools.common.utils import struct_parse
from elftools.construct import ConstructError
from elftools.elf.enums import ENUM_E_MACHINE
from elftools.elf.structs import ELFStructs

__all__ = [
    "ELF_MAGIC",
    "ElfInfo",
    "ElfUnreadable",
    "machine_for_arch",
    "machine_name",
    "read_elf",
]

ELF_MAGIC: Final = b"\x7fELF"
_GO_MAGIC: Final = b"\xff Go buildinf:"
_GO_HEADER_SIZE: Final = 32
_GO_MAX_BLOCK: Final = 64 << 20
_SHN_LORESERVE: Final = 0xFF00

_MACHINE_NUMBERS: Final[Mapping[str, int]] = {
    k: v for k, v in ENUM_E_MACHINE.items() if isinstance(v, int)
}
_MACHINE_NAMES: Final[Mapping[int, str]] = {v: k for k, v in _MACHINE_NUMBERS.items()}

#: apk architecture -> the e_machine its binaries carry
_ARCH_MACHINES: Final[Mapping[str, int]] = {
    "x86_64": 62,
    "aarch64": 183,
    "x86": 3,
    "armhf": 40,
    "armv7": 40,
    "ppc64le": 21,
    "s390x": 22,
    "riscv64": 243,
    "loongarch64": 258,
}


def machine_for_arch(arch: str) -> int | None:
    """The ``e_machine`` of ``arch``'s binaries (apk spelling), ``None`` if unknown."""
    return _ARCH_MACHINES.get(arch)


def machine_name(machine: int) -> str:
    return _MACHINE_NAMES.get(machine, f"machine {machine}")


@dataclass(frozen=True, slots=True)
class ElfInfo:
    """The facts melange takes from one ELF file."""

    machine: int
    interpreter: str = ""
    needed: tuple[str, ...] = ()
    sonames: tuple[str, ...] = ()
    #: why the dynamic section could not be read ("" when it could, or there is none);
    #: melange then takes nothing but the interpreter from the file
    dynamic_error: str = ""
    section_names: frozenset[str] = frozenset()
    #: ``build`` settings of a Go binary (``CGO_ENABLED``, ``GOEXPERIMENT`` ...), or None
    go_settings: Mapping[str, str] | None = field(default=None)


@dataclass(frozen=True, slots=True)
class ElfUnreadable:
    """A file with the ELF magic that Go's ``elf.NewFile`` (and so melange) would refuse."""

    reason: str


class _Refused(Exception):
    pass


@functools.lru_cache(maxsize=8)
def _basic_structs(little_endian: bool, elfclass: int) -> ELFStructs:
    structs = ELFStructs(little_endian=little_endian, elfclass=elfclass)
    structs.create_basic_structs()
    return structs


@functools.lru_cache(maxsize=64)
def _structs(
    little_endian: bool, elfclass: int, e_type: Any, e_machine: Any, osabi: Any
) -> ELFStructs:
    """pyelftools' structure definitions for one kind of ELF file: building them is most
    of what opening a file with ``ELFFile`` costs, and they depend only on the header."""
    structs = ELFStructs(little_endian=little_endian, elfclass=elfclass)
    structs.create_basic_structs()
    structs.create_advanced_structs(e_type, e_machine, osabi)
    return structs


@dataclass(frozen=True, slots=True)
class _Elf:
    """An open ELF file: its stream, header, and pyelftools' structures for it."""

    stream: BinaryIO
    header: Any
    structs: ELFStructs

    @classmethod
    def open(cls, stream: BinaryIO, *, little_endian: bool, elfclass: int) -> _Elf:
        header = struct_parse(_basic_structs(little_endian, elfclass).Elf_Ehdr, stream, 0)
        structs = _structs(
            little_endian,
            elfclass,
            header["e_type"],
            header["e_machine"],
            header["e_ident"]["EI_OSABI"],
        )
        return cls(stream, header, structs)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstring(table: bytes, start: int) -> str | None:
    """Go's ``getString``: the NUL-terminated string at ``start``, or None."""
    if start < 0 or start >= len(table):
        return None
    end = table.find(b"\0", start)
    if end < 0:
        return None
    return _text(table[start:end])


def read_elf(path: Path) -> ElfInfo | ElfUnreadable | None:
    """Read ``path``: None if it does not start with the ELF magic."""
    try:
        with path.open("rb") as f:
            if f.read(4) != ELF_MAGIC:
                return None
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                try:
                    return _read(f, data)
                except _Refused as exc:
                    return ElfUnreadable(str(exc))
                except (ELFError, ConstructError, ValueError, KeyError, IndexError) as exc:
                    # pyelftools' own refusals (and construct's on short reads)
                    return ElfUnreadable(f"{type(exc).__name__}: {exc}".strip())
    except OSError:
        return None


def _read(stream: BinaryIO, data: mmap.mmap) -> ElfInfo:
    if len(data) < 16:
        raise _Refused("truncated: shorter than the ELF identification")
    # Go's order of checks: class, data encoding, version
    if data[4] not in (1, 2):
        raise _Refused(f"unknown ELF class {data[4]}")
    if data[5] not in (1, 2):
        raise _Refused(f"unknown ELF data encoding {data[5]}")
    if data[6] != 1:
        raise _Refused(f"unknown ELF version {data[6]}")
    elf = _Elf.open(stream, little_endian=data[5] == 1, elfclass=32 if data[4] == 1 else 64)
    header = elf.header
    if header["e_version"] not in ("EV_CURRENT", 1):
        raise _Refused(f"mismatched ELF version {header['e_version']}")
    machine_value = header["e_machine"]
    machine = (
        machine_value if isinstance(machine_value, int) else _MACHINE_NUMBERS.get(machine_value, 0)
    )
    phdrs = _program_headers(elf, data)
    shdrs, names = _section_headers(elf, data, header["e_shstrndx"])
    interp = ""
    for ph in phdrs:
        if ph["p_type"] == "PT_INTERP":
            off = ph["p_offset"]
            interp = _text(data[off : off + ph["p_filesz"]].strip(b"\0"))
            break
    needed: tuple[str, ...] = ()
    sonames: tuple[str, ...] = ()
    dynamic_error = ""
    dynamic = next((i for i, sh in enumerate(shdrs) if sh["sh_type"] == "SHT_DYNAMIC"), None)
    if dynamic is not None:
        try:
            needed, sonames = _dynamic_strings(elf, data, shdrs, dynamic)
        except _Refused as exc:
            dynamic_error = str(exc)
    return ElfInfo(
        machine=machine,
        interpreter=interp,
        needed=needed,
        sonames=sonames,
        dynamic_error=dynamic_error,
        section_names=frozenset(names),
        go_settings=_go_settings(data, phdrs, shdrs, names),
    )


def _program_headers(elf: _Elf, data: mmap.mmap) -> list[Any]:
    header = elf.header
    phnum, phoff, phentsize = header["e_phnum"], header["e_phoff"], header["e_phentsize"]
    if phnum == 0:
        return []
    if phentsize < elf.structs.Elf_Phdr.sizeof():
        raise _Refused(f"invalid ELF phentsize {phentsize}")
    if phoff + phnum * phentsize > len(data):
        raise _Refused("truncated: program headers end past the end of the file")
    out = []
    for i in range(phnum):
        ph = struct_parse(elf.structs.Elf_Phdr, elf.stream, stream_pos=phoff + i * phentsize)
        if ph["p_offset"] >= 1 << 63 or ph["p_filesz"] >= 1 << 63:
            raise _Refused("invalid program header offset or size")
        out.append(ph)
    return out


def _section_headers(elf: _Elf, data: mmap.mmap, shstrndx: int) -> tuple[list[Any], list[str]]:
    header = elf.header
    shoff, shnum, shentsize = header["e_shoff"], header["e_shnum"], header["e_shentsize"]
    if shoff == 0 and shnum != 0:
        raise _Refused(f"invalid ELF shnum {shnum} for shoff=0")
    if shnum > 0 and shstrndx >= shnum:
        raise _Refused(f"invalid ELF shstrndx {shstrndx}")
    size = elf.structs.Elf_Shdr.sizeof()
    if shoff > 0 and shnum == 0:
        if shoff + size > len(data):
            raise _Refused("truncated: section headers end past the end of the file")
        first = struct_parse(elf.structs.Elf_Shdr, elf.stream, stream_pos=shoff)
        if first["sh_type"] != "SHT_NULL":
            raise _Refused("invalid type of the initial section")
        shnum = first["sh_size"]
        if shnum < _SHN_LORESERVE:
            raise _Refused(f"invalid ELF shnum {shnum} contained in sh_size")
        if shstrndx == 0xFFFF:  # SHN_XINDEX
            shstrndx = first["sh_link"]
            if shstrndx < _SHN_LORESERVE:
                raise _Refused(f"invalid ELF shstrndx {shstrndx} contained in sh_link")
    if shnum == 0:
        return [], []
    if shentsize < size:
        raise _Refused(f"invalid ELF shentsize {shentsize}")
    if shoff + shnum * shentsize > len(data):
        raise _Refused("truncated: section headers end past the end of the file")
    shdrs = [
        struct_parse(elf.structs.Elf_Shdr, elf.stream, stream_pos=shoff + i * shentsize)
        for i in range(shnum)
    ]
    for sh in shdrs:
        if sh["sh_offset"] >= 1 << 63 or sh["sh_size"] >= 1 << 63:
            raise _Refused("invalid section offset or size")
    if shstrndx == 0:
        return shdrs, ["" for _ in shdrs]
    if shstrndx >= len(shdrs):
        raise _Refused(f"invalid ELF shstrndx {shstrndx}")
    table_header = shdrs[shstrndx]
    if table_header["sh_type"] != "SHT_STRTAB":
        raise _Refused("invalid ELF section name string table type")
    table = _section_data(data, table_header)
    names = []
    for sh in shdrs:
        name = _cstring(table, sh["sh_name"])
        if name is None:
            raise _Refused(f"bad section name index {sh['sh_name']}")
        names.append(name)
    return shdrs, names


def _section_data(data: mmap.mmap, sh: Any) -> bytes:
    """A section's bytes as Go's ``Section.Data`` reads them: all of them, or an error."""
    if sh["sh_type"] == "SHT_NOBITS":
        return b""
    off, size = sh["sh_offset"], sh["sh_size"]
    if off + size > len(data):
        raise _Refused("truncated: a section ends past the end of the file")
    return data[off : off + size]


def _dynamic_strings(
    elf: _Elf, data: mmap.mmap, shdrs: list[Any], index: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``DynString(DT_NEEDED)`` and ``DynString(DT_SONAME)``."""
    dyn = _section_data(data, shdrs[index])
    entry = elf.structs.Elf_Dyn.sizeof()
    if len(dyn) % entry:
        raise _Refused("length of dynamic section is not a multiple of dynamic entry size")
    link = shdrs[index]["sh_link"]
    if link <= 0 or link >= len(shdrs):
        raise _Refused("dynamic section has an invalid string table link")
    strings = _section_data(data, shdrs[link])
    needed: list[str] = []
    sonames: list[str] = []
    view = io.BytesIO(dyn)
    null = bytes(entry)
    for pos in range(0, len(dyn), entry):
        if dyn[pos : pos + entry] == null:
            continue  # DT_NULL padding: neither DT_NEEDED nor DT_SONAME
        tag = struct_parse(elf.structs.Elf_Dyn, view, stream_pos=pos)
        kind = tag["d_tag"]
        if kind in ("DT_NEEDED", "DT_SONAME"):
            value = _cstring(strings, tag["d_val"])
            if value is not None:
                (needed if kind == "DT_NEEDED" else sonames).append(value)
    return tuple(needed), tuple(sonames)


def _go_settings(
    data: mmap.mmap, phdrs: list[Any], shdrs: list[Any], names: list[str]
) -> Mapping[str, str] | None:
    """The ``build`` settings of a Go binary (``debug/buildinfo.Read``), or None."""
    start = size = 0
    for sh, name in zip(shdrs, names, strict=True):
        if name == ".go.buildinfo":
            start, size = sh["sh_addr"], sh["sh_size"]
            break
    else:
        for ph in phdrs:
            if ph["p_type"] == "PT_LOAD" and ph["p_flags"] & 0b011 == 0b010:  # PF_W, not PF_X
                start, size = ph["p_vaddr"], ph["p_memsz"]
                break
    if size == 0:
        return None
    block = _read_vaddr(data, phdrs, start, min(size, _GO_MAX_BLOCK))
    if block is None:
        return None
    first = (start + 15) & ~15
    pos = first - start
    while True:
        pos = block.find(_GO_MAGIC, pos)
        if pos < 0:
            return None
        if (start + pos) % 16 == 0:
            break
        pos += 1
    if len(block) - pos < _GO_HEADER_SIZE:
        return None
    flags = block[pos + 15]
    if flags & 0x2 == 0:
        return None  # Go < 1.18: pointers into the data segment, not read here
    at = pos + _GO_HEADER_SIZE
    version, at = _uvarint_string(block, at)
    mod, _ = _uvarint_string(block, at)
    if not version:
        return None
    # the module information sits between two 16-byte sentinels
    mod = mod[16:-16] if len(mod) >= 33 and mod[-17] == ord("\n") else b""
    return MappingProxyType(_build_settings(_text(mod)))


def _read_vaddr(data: mmap.mmap, phdrs: list[Any], addr: int, size: int) -> bytes | None:
    for ph in phdrs:
        if ph["p_type"] != "PT_LOAD":
            continue
        lo, filesz = ph["p_vaddr"], ph["p_filesz"]
        if lo <= addr < lo + filesz:
            off = ph["p_offset"] + (addr - lo)
            end = min(off + size, ph["p_offset"] + filesz)
            return data[off:end]
    return None


def _uvarint_string(block: bytes, at: int) -> tuple[bytes, int]:
    length = shift = 0
    while True:
        if at >= len(block) or shift > 63:
            return b"", at
        byte = block[at]
        at += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    if at + length > len(block):
        return b"", at
    return block[at : at + length], at + length


def _build_settings(mod: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in mod.split("\n"):
        if not line.startswith("build\t"):
            continue
        key, sep, value = line[len("build\t") :].partition("=")
        if not sep:
            continue
        if value.startswith('"'):
            try:
                value = str(json.loads(value))
            except ValueError:
                continue
        settings[key] = value
    return settings
