"""A package build's input digest: one sha256 over everything its artifacts depend on.

Two builds with the same digest produce the same packages (our APKs are reproducible),
so the second can reuse the first's artifacts instead of building (issue 7). The digest
covers:

* the config after substitution for the arch (``repr`` of the parsed model: comments,
  key order of maps that do not matter and source positions are left out);
* the LLB definition of the solve, which holds the pipelines' compiled steps and their
  environment variables, the environment image (content-addressed from the exact APKs
  resolved for it, dependencies built by the farm included, and their keys), the
  network mode and the platform;
* the source directory's contents (:func:`melange2.build.sources.source_digest`: the LLB
  names the ``local://`` source, not what is in it);
* the base image's digest when a build runs on a plain ``--base-image`` given by tag;
* what packaging adds: the signing key's public half, ``SOURCE_DATE_EPOCH``, whether
  tests run, and :data:`INPUTS_VERSION` (bumped when packaging output changes).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import melange2
from melange2.apk.signing import Signer
from melange2.recipe import Config

#: bump when the APK writer or the meaning of any input changes (2: SCA and linters)
INPUTS_VERSION = "melange2-inputs/2"


def input_digest(
    *,
    config: Config,
    definition: bytes,
    arch: str,
    signer: Signer | None,
    source_date_epoch: int,
    with_test: bool,
    base_image_digest: str = "",
    sources_digest: str = "",
) -> str:
    """``sha256:<hex>`` over a build's inputs (see the module's docstring)."""
    document: dict[str, object] = {
        "version": INPUTS_VERSION,
        "arch": arch,
        "config": repr(config),
        "llb": hashlib.sha256(definition).hexdigest(),
        "base_image": base_image_digest,
        "key": signer.key_name if signer is not None else "",
        "key_digest": "" if signer is None else hashlib.sha256(signer.public_key_pem()).hexdigest(),
        "source_date_epoch": source_date_epoch,
        "with_test": with_test,
    }
    if sources_digest:  # only then: builds without sources keep their digests
        document["sources"] = sources_digest
    blob = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def tree_digest(files: Mapping[str, bytes]) -> str:
    """sha256 over a file tree given as relative path -> content."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{path}\0{hashlib.sha256(files[path]).hexdigest()}\n".encode())
    return h.hexdigest()


def read_tree(root: Path | None) -> dict[str, bytes]:
    """A directory's files as :func:`tree_digest` takes them (``{}`` if none)."""
    if root is None or not root.is_dir():
        return {}
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@functools.cache
def code_digest() -> str:
    """sha256 over melange2's own source files and built-in pipelines: a quick digest
    is only good for the code that computed it."""
    root = Path(melange2.__file__).parent
    files = {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.suffix in (".py", ".yaml", ".yml") and p.is_file() and "_proto" not in p.parts
    }
    return tree_digest(files)


def quick_digest(
    *,
    arch: str,
    config_text: str,
    pipelines: Mapping[str, bytes],
    sources: Mapping[str, bytes],
    environment_key: str,
    options: Mapping[str, object],
    signer: Signer | None,
) -> str:
    """A digest over what a farm knows of a package *before* building anything: the
    config's text, the build's pipeline files and the package's source files, the key
    of its resolved environment (the exact packages it would install), the build's
    options and the key, and melange2's code.

    It is stricter than :func:`input_digest` (a comment changes it), and cheap: no
    registry, no BuildKit. The farm remembers which input digest each quick digest
    led to, so a resubmitted package whose quick digest is known is reused at
    submission, without taking a backend's slot."""
    document = {
        "version": INPUTS_VERSION,
        "code": code_digest(),
        "arch": arch,
        "config": hashlib.sha256(config_text.encode()).hexdigest(),
        "pipelines": tree_digest(pipelines),
        "sources": tree_digest(sources),
        "environment": environment_key,
        "options": options,
        "key": signer.key_name if signer is not None else "",
        "key_digest": "" if signer is None else hashlib.sha256(signer.public_key_pem()).hexdigest(),
    }
    blob = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()
