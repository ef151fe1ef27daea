"""``.melange.yaml``: the config as melange v0.34.0 puts it in every package's control
stream.

melange writes its parsed, substituted and compiled ``Configuration`` back with Go's
yaml.v3 (indent 2), so the file is not the config as written but the config as built:

- fields in melange's struct order, empty ones left out as its ``omitempty`` tags say;
- substitutions applied; ``commit`` filled (``unknown``); ``resources: {}``; ``range``
  subpackages expanded and ``data`` dropped; subpackages whose ``if`` is false gone;
- the build environment *locked*: the repositories and keys of the build appended, every
  installed package pinned (``name=version``, sorted), the ``build`` account, ``archs``,
  and melange's default variables (``HOME``, ``GOPATH``, ``GOMODCACHE``);
- each ``uses:`` step with the pipeline it names expanded under it (``with:`` keeps only
  values differing from the inputs' defaults), ``needs`` consumed;
- the test environment gains the package itself and what its pipelines need.

Not reproduced: melange re-prints every ``runs`` script with mvdan.cc/sh's printer
(dropping comments, respacing redirections); scripts here are as substituted, with
comment lines dropped (here-documents kept). Sections this project does not model (``update``,
``capabilities``, ``package.cpe`` ...) are carried over from the file as written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from melange2.recipe.arch import parse_arch
from melange2.recipe.compile import PipelineResolver
from melange2.recipe.model import Config, Environment, Package, Scriptlets, Step, Subpackage, Test
from melange2.recipe.subst import (
    substitute,
    substitute_condition,
    substitution_map,
    with_inputs,
)

__all__ = ["BuildFacts", "render_melange_yaml", "step_inputs"]


def step_inputs(
    step: Step, mapping: Mapping[str, str], resolver: PipelineResolver
) -> dict[str, str]:
    """A ``uses:`` step's inputs: its ``with:`` over the pipeline's defaults, substituted."""
    if not step.uses:
        return dict(step.with_)
    definition = resolver.resolve(step.uses, location=step.where("uses"))
    given = {**{k: v.default for k, v in definition.inputs.items()}, **step.with_}
    scope = with_inputs(mapping, given)
    return {k: scope.get(f"inputs.{k}", "") for k in given}


_DEFAULT_ENV = {
    "HOME": "/home/build",
    "GOPATH": "/home/build/.cache/go",
    "GOMODCACHE": "/var/cache/melange/gomodcache",
}


@dataclass(frozen=True, kw_only=True)
class BuildFacts:
    """What the build adds to the config: where packages came from and what was installed."""

    arch: str
    commit: str = "unknown"
    #: ``--repository-append`` repositories, in order
    repositories: Sequence[str] = ()
    #: ``--keyring-append`` keys, in order
    keyring: Sequence[str] = ()
    #: the installed packages, ``name=version``
    locked: Sequence[str] = ()


# ------------------------------------------------------------------ yaml.v3 scalars

_NOT_PLAIN = re.compile(
    r"""^(?:
        ~|null|Null|NULL
      | true|True|TRUE|false|False|FALSE
      | y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF
      | [-+]?(?:0|[1-9][0-9_]*)
      | [-+]?0[0-7_]+ | 0o[0-7_]+ | [-+]?0x[0-9a-fA-F_]+ | [-+]?0b[01_]+
      | [-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
      | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
      | [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?
    )$""",
    re.VERBOSE,
)


_INDICATORS = set("-?:,[]{}#&*!|>'\"%@`")


def _plain_allowed(value: str) -> bool:
    """libyaml's analysis (yaml.v3 is its port) for a one-line plain scalar, in short."""
    if not value or value != value.strip() or value[0] in _INDICATORS:
        return (
            value[:1] in ("-", "?", ":")
            and len(value) > 1
            and value[1] != " "
            and (value == value.strip() and _plain_allowed("x" + value[1:]))
        )
    if ": " in value or " #" in value or value.endswith(":"):
        return False
    return all(ch.isprintable() and ch not in "\t" for ch in value)


def _scalar(value: str, indent: int) -> str:
    """A string as yaml.v3 writes it: literal blocks for several lines, double quotes
    where plain would read as another type, else plain or single-quoted."""
    if "\n" in value:
        lines = value.split("\n")
        body_lines = lines[:-1] if value.endswith("\n") else lines
        block_ok = not (body_lines and body_lines[0].startswith(" ")) and all(
            line == line.rstrip(" ") and line.isprintable() for line in body_lines
        )
        if block_ok:
            if value.endswith("\n\n"):
                head = "|+"
            elif value.endswith("\n"):
                head = "|"
            else:
                head = "|-"
            trimmed = value.rstrip("\n") if head != "|+" else value[:-1]
            pad = " " * indent
            return head + "".join(
                "\n" + (pad + line if line else "") for line in trimmed.split("\n")
            )
        return json.dumps(value, ensure_ascii=False)
    if value == "" or _NOT_PLAIN.match(value):
        return json.dumps(value, ensure_ascii=False)
    if _plain_allowed(value):
        return value
    return "'" + value.replace("'", "''") + "'"


def _emit(value: Any, indent: int, out: list[str]) -> None:
    """Block mappings and sequences with yaml.v3's ``SetIndent(2)`` layout."""
    pad = " " * indent
    if isinstance(value, Mapping):
        for key, item in value.items():
            _emit_entry(f"{pad}{key}:", item, indent, out)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping) and item:
                first = True
                for key, sub in item.items():
                    lead = f"{pad}- {key}:" if first else f"{pad}  {key}:"
                    _emit_entry(lead, sub, indent + 2, out)
                    first = False
            else:
                _emit_entry(f"{pad}-", item, indent, out)


def _emit_entry(lead: str, item: Any, indent: int, out: list[str]) -> None:
    if isinstance(item, Mapping):
        if not item:
            out.append(f"{lead} {{}}")
        else:
            out.append(lead)
            _emit(item, indent + 2, out)
    elif isinstance(item, list):
        if not item:
            out.append(f"{lead} []")
        else:
            out.append(lead)
            _emit(item, indent + 2, out)
    elif isinstance(item, bool):
        out.append(f"{lead} {'true' if item else 'false'}")
    elif isinstance(item, int):
        out.append(f"{lead} {item}")
    else:
        out.append(f"{lead} {_scalar(str(item), indent + 2)}")


def _dump(doc: Mapping[str, Any]) -> bytes:
    out: list[str] = []
    _emit(doc, 0, out)
    return ("\n".join(out) + "\n").encode()


def _put(doc: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` unless ``value`` is empty (Go's ``omitempty``)."""
    if value in (None, "", [], {}, (), False, 0):
        return
    doc[key] = value


# ------------------------------------------------------------------------- sections


#: a here-document's start: ``<<WORD``, ``<<-'WORD'``, ``<< "WORD"`` (not ``<<<``)
_HEREDOC = re.compile(r"(?<!<)<<(?!<)(-?)[ \t]*(['\"]?)([A-Za-z_][A-Za-z0-9_.-]*)\2")
#: an arithmetic expansion, where ``<<`` is a shift
_ARITHMETIC = re.compile(r"\$\(\(.*?\)\)")


def _strip_comments(script: str) -> str:
    """Comment lines dropped (the shebang kept), as melange's re-printing drops them; a
    here-document's lines are text, not comments, and kept."""
    kept: list[str] = []
    pending: list[tuple[bool, str]] = []  # here-documents whose body comes next
    for i, line in enumerate(script.split("\n")):
        if pending:
            kept.append(line)
            tabs, word = pending[0]
            if (line.lstrip("\t") if tabs else line) == word:
                pending.pop(0)
            continue
        if line.lstrip().startswith("#") and not (i == 0 and line.startswith("#!")):
            continue
        kept.append(line)
        shell = _ARITHMETIC.sub("", line)
        pending = [(m.group(1) == "-", m.group(3)) for m in _HEREDOC.finditer(shell)]
    return "\n".join(kept)


def _scriptlets(s: Scriptlets | None) -> dict[str, Any] | None:
    if s is None:
        return None
    doc: dict[str, Any] = {}
    if s.trigger or s.trigger_paths:
        doc["trigger"] = {"script": s.trigger, "paths": list(s.trigger_paths)}
    for key, value in (
        ("pre-install", s.pre_install),
        ("post-install", s.post_install),
        ("pre-deinstall", s.pre_deinstall),
        ("post-deinstall", s.post_deinstall),
        ("pre-upgrade", s.pre_upgrade),
        ("post-upgrade", s.post_upgrade),
    ):
        _put(doc, key, value)
    return doc or {}


def _dependencies(pkg: Package | Subpackage) -> dict[str, Any]:
    deps = pkg.dependencies
    doc: dict[str, Any] = {}
    _put(doc, "runtime", list(deps.runtime))
    _put(doc, "provides", list(deps.provides))
    _put(doc, "replaces", list(deps.replaces))
    _put(doc, "provider-priority", deps.provider_priority)
    _put(doc, "replaces-priority", deps.replaces_priority)
    return doc


def _options(pkg: Package | Subpackage) -> dict[str, Any]:
    o = pkg.options
    doc: dict[str, Any] = {}
    _put(doc, "no-provides", o.no_provides)
    _put(doc, "no-depends", o.no_depends)
    _put(doc, "no-commands", o.no_commands)
    _put(doc, "no-versioned-shlib-deps", o.no_versioned_shlib_deps)
    return doc


def _raw(raw: Mapping[str, Any], *path: str) -> Any:
    node: Any = raw
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _package(config: Config, raw: Mapping[str, Any], commit: str) -> dict[str, Any]:
    pkg = config.package
    doc: dict[str, Any] = {"name": pkg.name, "version": pkg.version, "epoch": pkg.epoch}
    _put(doc, "description", pkg.description)
    _put(doc, "annotations", _raw(raw, "package", "annotations"))
    _put(doc, "url", pkg.url)
    _put(doc, "commit", pkg.commit or commit)
    _put(doc, "target-architecture", list(pkg.target_architecture))
    copyright_ = []
    for c in pkg.copyright:
        entry: dict[str, Any] = {}
        _put(entry, "paths", list(c.paths))
        _put(entry, "attestation", c.attestation)
        entry["license"] = c.license
        _put(entry, "license-path", c.license_path)
        _put(entry, "detection-override", c.detection_override)
        copyright_.append(entry)
    _put(doc, "copyright", copyright_)
    _put(doc, "dependencies", _dependencies(pkg))
    _put(doc, "options", _options(pkg))
    scriptlets = _scriptlets(pkg.scriptlets)
    if scriptlets is not None:
        doc["scriptlets"] = scriptlets
    _put(doc, "checks", _raw(raw, "package", "checks"))
    _put(doc, "cpe", _raw(raw, "package", "cpe"))
    _put(doc, "setcap", _raw(raw, "package", "setcap"))
    _put(doc, "timeout", _raw(raw, "package", "timeout"))
    doc["resources"] = _raw(raw, "package", "resources") or {}
    return doc


def _accounts(homedir: str) -> dict[str, Any]:
    return {
        "run-as": "",
        "users": [{"username": "build", "uid": 1000, "gid": 1000, "shell": "", "homedir": homedir}],
        "groups": [{"groupname": "build", "gid": 1000, "members": ["build"]}],
    }


def _environment(env: Environment, facts: BuildFacts) -> dict[str, Any]:
    contents: dict[str, Any] = {}
    _put(contents, "build_repositories", list(facts.repositories))
    _put(contents, "repositories", list(env.contents.repositories))
    _put(contents, "keyring", [*env.contents.keyring, *facts.keyring])
    _put(contents, "packages", sorted(facts.locked) or list(env.contents.packages))
    variables = dict(env.environment)
    for key, value in _DEFAULT_ENV.items():
        if not variables.get(key):
            variables[key] = value
    doc: dict[str, Any] = {}
    _put(doc, "contents", contents)
    doc["accounts"] = _accounts("/home/build")
    doc["archs"] = [parse_arch(facts.arch).oci.split("/")[-1]]
    doc["environment"] = dict(sorted(variables.items()))
    return doc


class _Compiler:
    """melange's ``compilePipeline``, producing the tree it serialises."""

    def __init__(self, resolver: PipelineResolver) -> None:
        self.resolver = resolver
        self.needs: list[str] = []

    def steps(self, steps: Sequence[Step], mapping: Mapping[str, str]) -> list[dict[str, Any]]:
        return [self.step(s, mapping, top=True) for s in steps]

    def step(
        self,
        step: Step,
        mapping: Mapping[str, str],
        *,
        top: bool,
        parent_workdir: str = "",
    ) -> dict[str, Any]:
        children: Sequence[Step] = step.pipeline
        needs = list(step.needs_packages)
        defaults: dict[str, str] = {}
        scope = dict(mapping)
        if step.uses and not step.pipeline:
            definition = self.resolver.resolve(step.uses, location=step.where("uses"))
            children = definition.pipeline
            needs = list(definition.needs_packages)
            defaults = {k: v.default for k, v in definition.inputs.items()}
            given = {**defaults, **step.with_}
            scope = with_inputs(mapping, given)
        workdir = step.working_directory
        if workdir and not top:
            # melange substitutes a pipeline's working-directory with its inputs
            workdir = substitute(workdir, scope)
        workdir = workdir or parent_workdir
        if_ = step.if_ if top else substitute_condition(step.if_, scope) if step.if_ else ""
        runs = step.runs if top else substitute(step.runs, scope)
        doc: dict[str, Any] = {}
        _put(doc, "if", if_)
        _put(doc, "name", step.name)
        _put(doc, "uses", step.uses)
        if step.uses and top:
            # melange keeps the inputs (given or defaulted) whose value, substituted,
            # differs from the default as written; a step without with: keeps none
            # (melange fills the defaults into the step's own with map, when it has one)
            cleaned = {
                k: scope.get(f"inputs.{k}", "")
                for k in {**defaults, **step.with_}
                if scope.get(f"inputs.{k}", "") != defaults.get(k, "")
            }
            if not step.with_:
                cleaned = {}
            _put(doc, "with", dict(sorted(cleaned.items())))
        _put(doc, "runs", _strip_comments(runs) if runs else "")
        _put(
            doc,
            "pipeline",
            [self.step(c, scope, top=False, parent_workdir=workdir) for c in children],
        )
        holds = True
        if if_:
            from melange2.recipe.cond import evaluate_condition

            holds = evaluate_condition(if_)
        if needs and not holds:
            doc["needs"] = {"packages": needs}
        elif needs:
            self.needs += needs
        _put(doc, "label", step.label)
        _put(doc, "working-directory", workdir)
        _put(doc, "environment", dict(sorted(step.environment.items())))
        return doc


def _test(
    test: Test,
    package: str,
    mapping: Mapping[str, str],
    resolver: PipelineResolver,
) -> dict[str, Any]:
    compiler = _Compiler(resolver)
    pipeline = compiler.steps(test.pipeline, mapping)
    contents: dict[str, Any] = {}
    _put(contents, "repositories", list(test.environment.contents.repositories))
    _put(contents, "keyring", list(test.environment.contents.keyring))
    packages = sorted({*test.environment.contents.packages, *compiler.needs, package})
    _put(contents, "packages", packages)
    env: dict[str, Any] = {}
    _put(env, "contents", contents)
    env["accounts"] = _accounts("")
    _put(env, "environment", dict(sorted(test.environment.environment.items())))
    return {"environment": env, "pipeline": pipeline}


def render_melange_yaml(
    config: Config,
    raw: Mapping[str, Any],
    facts: BuildFacts,
    resolver: PipelineResolver,
) -> bytes:
    """``.melange.yaml`` for ``config`` as built (disabled subpackages already left out);
    ``raw`` is the config file as parsed YAML, for the sections not modelled."""
    doc: dict[str, Any] = {"package": _package(config, raw, facts.commit)}
    doc["environment"] = _environment(config.environment, facts)
    _put(doc, "capabilities", _raw(raw, "capabilities"))
    compiler = _Compiler(resolver)
    _put(doc, "pipeline", compiler.steps(config.pipeline, substitution_map(config)))
    subpackages = []
    for sp in config.subpackages:
        mapping = substitution_map(config, subpackage=sp.name)
        entry: dict[str, Any] = {}
        _put(entry, "if", sp.if_)
        entry["name"] = sp.name
        _put(entry, "pipeline", _Compiler(resolver).steps(sp.pipeline, mapping))
        _put(entry, "dependencies", _dependencies(sp))
        _put(entry, "options", _options(sp))
        scriptlets = _scriptlets(sp.scriptlets)
        if scriptlets is not None:
            entry["scriptlets"] = scriptlets
        _put(entry, "description", sp.description)
        _put(entry, "url", sp.url)
        _put(entry, "commit", sp.commit or config.package.commit or facts.commit)
        raw_sp = _raw_subpackage(raw, sp)
        _put(entry, "checks", _raw(raw_sp, "checks"))
        if sp.test is not None and sp.test.pipeline:
            entry["test"] = _test(sp.test, sp.name, mapping, resolver)
        _put(entry, "setcap", _raw(raw_sp, "setcap"))
        subpackages.append(entry)
    _put(doc, "subpackages", subpackages)
    _put(doc, "update", _raw(raw, "update"))
    _put(doc, "vars", dict(sorted(config.vars.items())))
    _put(doc, "var-transforms", _raw(raw, "var-transforms"))
    _put(doc, "options", _raw(raw, "options"))
    if config.test is not None:
        doc["test"] = _test(config.test, config.package.name, substitution_map(config), resolver)
    return _dump(doc)


def _raw_subpackage(raw: Mapping[str, Any], sp: Subpackage) -> Mapping[str, Any]:
    subs = raw.get("subpackages") if isinstance(raw, Mapping) else None
    for entry in subs or []:
        if isinstance(entry, Mapping) and entry.get("name") in (sp.name, sp.range and None):
            return entry
    return {}
