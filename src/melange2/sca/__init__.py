"""Static analysis of package trees, as melange v0.34.0 does it.

- :func:`analyze` finds a package's automatic ``so:``/``cmd:``/``pc:`` provides and
  dependencies (melange's SCA, :mod:`melange2.sca.deps`); :meth:`ScaResult.merged` merges
  them with a config's ``dependencies`` as melange merges them.
- :func:`~melange2.sca.lint.lint_build` runs melange's default linters over the packages of
  a build (:mod:`melange2.sca.lint`).

Both read plain directories (``melange-out/<package>`` trees) and plain values; neither
knows BuildKit or the config model, so they serve ``melange2 build`` and anything that
makes APKs from a tree (converted Debian packages, say)::

    from melange2.sca import ScaOptions, analyze

    found = analyze(Path("out/zlib"), name="zlib", version="1.3.1-r0", arch="x86_64")
    found.provides   # ('so-ver:libz.so.1=1.3.1-r0', 'so:libz.so.1=1.3.1')
    found.depends    # ('so:libc.so.6',)
    deps = found.merged(runtime=["busybox"])   # what .PKGINFO lists
"""

from __future__ import annotations

from melange2.sca.deps import (
    BIN_DIRS,
    LIB_DIRS,
    PackageDependencies,
    ScaOptions,
    ScaResult,
    ScaWarning,
    analyze,
)
from melange2.sca.tree import PackageTree

__all__ = [
    "BIN_DIRS",
    "LIB_DIRS",
    "PackageDependencies",
    "PackageTree",
    "ScaOptions",
    "ScaResult",
    "ScaWarning",
    "analyze",
]
