"""Load melange YAML into the typed model, with melange's substitution semantics.

:func:`load_config` reads one build configuration and returns a
:class:`~melange2.recipe.model.Config` for one architecture:

1. The YAML is composed with libyaml (PyYAML's binding), within the limits of
   :mod:`melange2.recipe._yaml`; every field is type-checked and keeps its location.
   Unknown keys are ignored at every level.
2. ``vars`` (plus ``extra_vars``) and ``var-transforms`` are resolved.
3. Subpackages with ``range:`` are expanded, one per ``data`` item in key order, with
   ``${{range.key}}``/``${{range.value}}`` substituted.
4. Every substitutable field is substituted with the mapping of its context (the origin
   package, or the subpackage being built): see :mod:`melange2.recipe.subst`. An undefined
   variable is an error, except ``${{inputs.*}}``, which is left for ``uses:`` resolution.
   ``if:`` fields follow melange's two steps: package/vars/range values are inserted as
   written, every other value quoted, then the expression must parse.
5. melange's checks run (names, priorities, ``uses`` vs ``runs``/``with``, copyright), and
   nested steps inherit ``working-directory`` and ``environment`` from their parents.

Every problem is a :class:`~melange2.errors.RecipeError` whose message reads
``<file>:<line>: <field.path>: <what is wrong>``.

>>> cfg = load_config('''
... package: {name: hello, version: "1.0", epoch: 2}
... pipeline:
...   - runs: echo ${{package.full-version}} > ${{targets.destdir}}/v
... ''')
>>> cfg.pipeline[0].runs
'echo 1.0-r2 > /home/build/melange-out/hello/v'
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final, NamedTuple

from melange2 import names
from melange2.errors import RecipeError
from melange2.names import excerpt
from melange2.recipe._yaml import Value, compose
from melange2.recipe.arch import parse_arch
from melange2.recipe.cond import parse_condition
from melange2.recipe.errors import RecipeFieldError
from melange2.recipe.model import (
    EMPTY_MAP,
    Checks,
    Config,
    Contents,
    Copyright,
    Dependencies,
    Environment,
    FieldMark,
    Location,
    Package,
    PackageOptions,
    PipelineDef,
    PipelineInput,
    RangeData,
    Resources,
    Scriptlets,
    Step,
    Subpackage,
    Test,
    VarTransform,
    frozen_map,
)
from melange2.recipe.subst import (
    base_substitutions,
    resolve_vars,
    subpackage_substitutions,
    substitute,
    substitute_condition,
)
from melange2.resources import QuantityError, cpu_millis, memory_bytes
from melange2.timing import parse_duration

__all__ = ["Source", "load_config", "load_pipeline"]

#: A file to read (``os.PathLike``) or the YAML itself (``str``/``bytes``).
Source = str | bytes | os.PathLike[str]

_MAX_DEPTH: Final = 32
_LEAVE_INPUTS: Final = ("inputs.",)
_PARSE_TIME_KEYS: Final = frozenset(
    {"package.name", "package.version", "package.epoch", "package.full-version"}
    | {"package.description"}
)

#: Defaults melange puts in ``environment.environment`` when unset.
_DEFAULT_ENV: Final = {
    "HOME": "/home/build",
    "GOPATH": "/home/build/.cache/go",
    "GOMODCACHE": "/var/cache/melange/gomodcache",
}


# -- entry points ------------------------------------------------------------------------


def load_config(
    source: Source,
    *,
    filename: str | None = None,
    arch: str = "x86_64",
    extra_vars: Mapping[str, str] | None = None,
    libc: str = "gnu",
    enabled_options: Iterable[str] = (),
) -> Config:
    """Parse and substitute a melange build configuration for ``arch``.

    ``source`` is a path (``os.PathLike``, read as UTF-8) or the YAML text itself (``str``
    or ``bytes``). ``filename`` names the source in errors (default: the path, or
    ``"<string>"``). ``extra_vars`` override or add ``vars`` (like melange's vars file).
    ``libc`` (``gnu``/``musl``) picks the ``host.triplet.*`` flavour; ``enabled_options``
    names build options whose ``${{options.<name>.enabled}}`` is ``true``.
    """
    text, file = _read(source, filename)
    try:
        return _ConfigLoader(
            file=file,
            arch=parse_arch(arch).apk,
            libc=libc,
            extra_vars=dict(extra_vars or {}),
            enabled_options=tuple(enabled_options),
        ).load(text)
    except RecursionError:
        raise RecipeFieldError(
            "document nested too deeply", location=Location(file=file, line=0, column=0)
        ) from None


def load_pipeline(source: Source, *, filename: str | None = None) -> PipelineDef:
    """Parse a reusable pipeline file (``name``, ``needs``, ``inputs``, ``pipeline``).

    Nothing is substituted: the caller substitutes with :func:`~melange2.recipe.subst.\
with_inputs` and :func:`~melange2.recipe.subst.substitute_steps` when it resolves ``uses``.
    """
    text, file = _read(source, filename)
    try:
        _, root = compose(text, file)
        if root is None:
            raise RecipeFieldError(
                "empty pipeline file", location=Location(file=file, line=0, column=0)
            )
        top = root.mapping()
        locs: dict[str, Location | FieldMark] = {}
        inputs: dict[str, PipelineInput] = {}
        if "inputs" in top:
            for key, spec in top["inputs"].mapping().items():
                fields = spec.mapping()
                locs[f"inputs.{key}"] = spec.mark
                inputs[key] = PipelineInput(
                    description=_text(fields, "description"),
                    default=_text(fields, "default"),
                    required=fields["required"].boolean() if "required" in fields else False,
                )
        return PipelineDef(
            name=_text(top, "name", locs),
            needs_packages=_needs(top, locs),
            inputs=frozen_map(inputs),
            pipeline=_steps(top.get("pipeline"), 0),
            loc=root.loc,
            field_locs=frozen_map(locs),
        )
    except RecursionError:
        raise RecipeFieldError(
            "document nested too deeply", location=Location(file=file, line=0, column=0)
        ) from None


def _read(source: Source, filename: str | None) -> tuple[str, str]:
    if isinstance(source, os.PathLike):
        path = Path(source)
        file = filename or str(path)
        try:
            return path.read_text(encoding="utf-8"), file
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeFieldError(
                f"cannot read: {exc}", location=Location(file=file, line=0, column=0)
            ) from exc
    file = filename or "<string>"
    if isinstance(source, bytes):
        try:
            return source.decode("utf-8"), file
        except UnicodeDecodeError as exc:
            raise RecipeFieldError(
                f"not UTF-8: {exc}", location=Location(file=file, line=0, column=0)
            ) from exc
    if isinstance(source, str):
        return source, file
    raise TypeError(f"expected a path, str or bytes, got {type(source).__name__}")


# -- structure: YAML -> model, nothing substituted ---------------------------------------


def _text(
    fields: Mapping[str, Value], key: str, locs: dict[str, Location | FieldMark] | None = None
) -> str:
    value = fields.get(key)
    if value is None:
        return ""
    if locs is not None:
        locs[key] = value.mark
    return value.text()


def _required_text(parent: Value, fields: Mapping[str, Value], key: str) -> str:
    value = fields.get(key)
    if value is None:
        raise RecipeFieldError("required field is missing", location=parent.loc.child(key))
    text = value.text()
    if not text:
        raise value.error("must not be empty")
    return text


def _str_list(
    value: Value | None, locs: dict[str, Location | FieldMark], key: str
) -> tuple[str, ...]:
    if value is None:
        return ()
    out = []
    for index, item in enumerate(value.items()):
        locs[f"{key}[{index}]"] = item.mark
        out.append(item.text())
    return tuple(out)


def _str_map(
    value: Value | None, locs: dict[str, Location | FieldMark], key: str
) -> dict[str, str]:
    if value is None:
        return {}
    out = {}
    for name, item in value.mapping().items():
        locs[f"{key}.{name}"] = item.mark
        out[name] = item.text()
    return out


def _needs(fields: Mapping[str, Value], locs: dict[str, Location | FieldMark]) -> tuple[str, ...]:
    needs = fields.get("needs")
    if needs is None:
        return ()
    return _str_list(needs.mapping().get("packages"), locs, "needs.packages")


def _steps(value: Value | None, depth: int) -> tuple[Step, ...]:
    if value is None:
        return ()
    if depth > _MAX_DEPTH:
        raise value.error(f"pipelines nested more than {_MAX_DEPTH} deep")
    return tuple(_step(item, depth) for item in value.items())


def _step(value: Value, depth: int) -> Step:
    fields = value.mapping()
    locs: dict[str, Location | FieldMark] = {}
    return Step(
        name=_text(fields, "name", locs),
        uses=_text(fields, "uses", locs),
        with_=frozen_map(_str_map(fields.get("with"), locs, "with")),
        runs=_text(fields, "runs", locs),
        pipeline=_steps(fields.get("pipeline"), depth + 1),
        working_directory=_text(fields, "working-directory", locs),
        if_=_text(fields, "if", locs),
        environment=frozen_map(_str_map(fields.get("environment"), locs, "environment")),
        needs_packages=_needs(fields, locs),
        label=_text(fields, "label", locs),
        required_steps=_required_steps(fields, locs),
        loc=value.loc,
        field_locs=frozen_map(locs),
    )


def _required_steps(
    fields: Mapping[str, Value], locs: dict[str, Location | FieldMark]
) -> int | None:
    assertions = fields.get("assertions")
    if assertions is None or assertions.is_null:
        return None
    item = assertions.mapping().get("required-steps")
    if item is None or item.is_null:
        return None
    locs["assertions.required-steps"] = item.mark
    return item.integer(maximum=2**31 - 1)


def _dependencies(value: Value | None, locs: dict[str, Location | FieldMark]) -> Dependencies:
    if value is None:
        return Dependencies()
    fields = value.mapping()
    prefix = "dependencies"
    sub: dict[str, Location | FieldMark] = {}
    deps = Dependencies(
        runtime=_str_list(fields.get("runtime"), sub, "runtime"),
        provides=_str_list(fields.get("provides"), sub, "provides"),
        replaces=_str_list(fields.get("replaces"), sub, "replaces"),
        provider_priority=_text(fields, "provider-priority", sub),
        replaces_priority=_text(fields, "replaces-priority", sub),
    )
    locs.update({f"{prefix}.{k}": v for k, v in sub.items()})
    return deps


def _options(value: Value | None) -> PackageOptions:
    if value is None:
        return PackageOptions()
    fields = value.mapping()

    def flag(key: str) -> bool:
        item = fields.get(key)
        return item.boolean() if item is not None else False

    return PackageOptions(
        no_provides=flag("no-provides"),
        no_depends=flag("no-depends"),
        no_commands=flag("no-commands"),
        no_versioned_shlib_deps=flag("no-versioned-shlib-deps"),
    )


def _checks(value: Value | None, locs: dict[str, Location | FieldMark]) -> Checks:
    if value is None or value.is_null:
        return Checks()
    fields = value.mapping()
    sub: dict[str, Location | FieldMark] = {}
    checks = Checks(disabled=_str_list(fields.get("disabled"), sub, "disabled"))
    locs.update({f"checks.{k}": v for k, v in sub.items()})
    return checks


def _scriptlets(value: Value | None, locs: dict[str, Location | FieldMark]) -> Scriptlets | None:
    if value is None:
        return None
    fields = value.mapping()
    sub: dict[str, Location | FieldMark] = {}
    trigger = fields.get("trigger")
    trigger_fields = trigger.mapping() if trigger is not None else {}
    scriptlets = Scriptlets(
        trigger=_text(trigger_fields, "script", sub),
        trigger_paths=_str_list(trigger_fields.get("paths"), sub, "trigger.paths"),
        pre_install=_text(fields, "pre-install", sub),
        post_install=_text(fields, "post-install", sub),
        pre_deinstall=_text(fields, "pre-deinstall", sub),
        post_deinstall=_text(fields, "post-deinstall", sub),
        pre_upgrade=_text(fields, "pre-upgrade", sub),
        post_upgrade=_text(fields, "post-upgrade", sub),
    )
    locs.update({f"scriptlets.{k}": v for k, v in sub.items()})
    return scriptlets


def _map_scriptlets(
    scriptlets: Scriptlets | None, where: Callable[[str], Location], text: _TextFn
) -> Scriptlets | None:
    if scriptlets is None:
        return None
    return Scriptlets(
        trigger=text(scriptlets.trigger, where("scriptlets.script")),
        trigger_paths=tuple(
            text(p, where(f"scriptlets.trigger.paths[{i}]"))
            for i, p in enumerate(scriptlets.trigger_paths)
        ),
        pre_install=text(scriptlets.pre_install, where("scriptlets.pre-install")),
        post_install=text(scriptlets.post_install, where("scriptlets.post-install")),
        pre_deinstall=text(scriptlets.pre_deinstall, where("scriptlets.pre-deinstall")),
        post_deinstall=text(scriptlets.post_deinstall, where("scriptlets.post-deinstall")),
        pre_upgrade=text(scriptlets.pre_upgrade, where("scriptlets.pre-upgrade")),
        post_upgrade=text(scriptlets.post_upgrade, where("scriptlets.post-upgrade")),
    )


def _copyright(value: Value, depth: int = 0) -> Copyright:
    if depth > _MAX_DEPTH:
        raise value.error(f"licenses nested more than {_MAX_DEPTH} deep")
    fields = value.mapping()
    scratch: dict[str, Location | FieldMark] = {}
    entry = Copyright(
        license=_text(fields, "license"),
        paths=_str_list(fields.get("paths"), scratch, "paths"),
        attestation=_text(fields, "attestation"),
        license_path=_text(fields, "license-path"),
        detection_override=_text(fields, "detection-override"),
        operator=_text(fields, "operator"),
        licenses=tuple(_copyright(item, depth + 1) for item in _items(fields.get("licenses"))),
    )
    grouping = bool(entry.operator or entry.licenses)
    if grouping and entry.license:
        raise value.error("cannot specify both 'license' and 'operator'/'licenses'")
    if not grouping and not entry.license:
        raise value.error("must specify either 'license' or 'operator'/'licenses'")
    if entry.operator and entry.operator not in ("AND", "OR"):
        raise fields["operator"].error(
            f"operator must be 'AND' or 'OR', got {excerpt(entry.operator)}"
        )
    if grouping and not entry.licenses:
        raise value.error("a license group needs at least one entry in 'licenses'")
    return entry


def _items(value: Value | None) -> list[Value]:
    return value.items() if value is not None else []


def _resources(value: Value | None, locs: dict[str, Location | FieldMark]) -> Resources | None:
    """``package.resources``: strings as melange keeps them; ``cpu``, ``memory`` and
    ``disk`` must be Kubernetes quantities (the farm places packages by them)."""
    if value is None or value.is_null:
        return None
    fields = value.mapping()
    sub: dict[str, Location | FieldMark] = {}
    resources = Resources(
        cpu=_text(fields, "cpu", sub),
        cpumodel=_text(fields, "cpumodel", sub),
        memory=_text(fields, "memory", sub),
        disk=_text(fields, "disk", sub),
    )
    for key, read in (("cpu", cpu_millis), ("memory", memory_bytes), ("disk", memory_bytes)):
        text = getattr(resources, key)
        if text:
            try:
                read(text)
            except QuantityError as exc:
                raise fields[key].error(str(exc)) from exc
    locs.update({f"resources.{k}": v for k, v in sub.items()})
    return resources


def _timeout(value: Value | None, locs: dict[str, Location | FieldMark]) -> float | None:
    """``package.timeout``: a Go duration (melange's ``time.Duration``), in seconds."""
    if value is None or value.is_null:
        return None
    locs["timeout"] = value.mark
    try:
        seconds = parse_duration(value.text())
    except ValueError as exc:
        raise value.error(str(exc)) from exc
    if seconds < 0:
        raise value.error("must not be negative")
    return seconds or None


def _package(value: Value) -> Package:
    fields = value.mapping()
    locs: dict[str, Location | FieldMark] = {}
    name = _required_text(value, fields, "name")
    version = _required_text(value, fields, "version")
    locs["name"], locs["version"] = fields["name"].mark, fields["version"].mark
    epoch = 0
    if "epoch" in fields:
        locs["epoch"] = fields["epoch"].mark
        epoch = fields["epoch"].integer()
    return Package(
        name=name,
        version=version,
        epoch=epoch,
        description=_text(fields, "description", locs),
        url=_text(fields, "url", locs),
        commit=_text(fields, "commit", locs),
        copyright=tuple(_copyright(item) for item in _items(fields.get("copyright"))),
        dependencies=_dependencies(fields.get("dependencies"), locs),
        options=_options(fields.get("options")),
        checks=_checks(fields.get("checks"), locs),
        scriptlets=_scriptlets(fields.get("scriptlets"), locs),
        target_architecture=_str_list(
            fields.get("target-architecture"), locs, "target-architecture"
        ),
        resources=_resources(fields.get("resources"), locs),
        timeout=_timeout(fields.get("timeout"), locs),
        loc=value.loc,
        field_locs=frozen_map(locs),
    )


def _environment(value: Value | None) -> Environment:
    if value is None:
        return Environment()
    fields = value.mapping()
    locs: dict[str, Location | FieldMark] = {}
    contents = Contents()
    if "contents" in fields:
        parts = fields["contents"].mapping()
        contents = Contents(
            repositories=_str_list(parts.get("repositories"), locs, "contents.repositories"),
            keyring=_str_list(parts.get("keyring"), locs, "contents.keyring"),
            packages=_str_list(parts.get("packages"), locs, "contents.packages"),
        )
    return Environment(
        contents=contents,
        environment=frozen_map(_str_map(fields.get("environment"), locs, "environment")),
        loc=value.loc,
        field_locs=frozen_map(locs),
    )


def _test(value: Value | None) -> Test | None:
    if value is None or value.is_null:
        return None
    fields = value.mapping()
    return Test(
        environment=_environment(fields.get("environment")),
        pipeline=_steps(fields.get("pipeline"), 0),
        loc=value.loc,
    )


def _subpackage(value: Value) -> Subpackage:
    fields = value.mapping()
    locs: dict[str, Location | FieldMark] = {}
    return Subpackage(
        name=_required_text(value, fields, "name"),
        description=_text(fields, "description", locs),
        url=_text(fields, "url", locs),
        commit=_text(fields, "commit", locs),
        dependencies=_dependencies(fields.get("dependencies"), locs),
        pipeline=_steps(fields.get("pipeline"), 0),
        if_=_text(fields, "if", locs),
        range=_text(fields, "range", locs),
        options=_options(fields.get("options")),
        checks=_checks(fields.get("checks"), locs),
        test=_test(fields.get("test")),
        scriptlets=_scriptlets(fields.get("scriptlets"), locs),
        loc=value.loc,
        field_locs=frozen_map({"name": fields["name"].mark, **locs}),
    )


def _var_transform(value: Value) -> VarTransform:
    fields = value.mapping()
    locs: dict[str, Location | FieldMark] = {}
    transform = VarTransform(
        from_=_text(fields, "from", locs),
        match=_text(fields, "match", locs),
        replace=_text(fields, "replace", locs),
        to=_text(fields, "to", locs),
        loc=value.loc,
        field_locs=frozen_map(locs),
    )
    if not transform.to:
        raise RecipeFieldError("required field is missing", location=transform.where("to"))
    return transform


def _range_data(value: Value) -> RangeData:
    fields = value.mapping()
    locs: dict[str, Location | FieldMark] = {}
    return RangeData(
        name=_required_text(value, fields, "name"),
        items=frozen_map(_str_map(fields.get("items"), locs, "items")),
        loc=value.loc,
        field_locs=frozen_map(locs),
    )


# -- semantics: substitution, expansion, validation --------------------------------------

_TextFn = Callable[[str, Location], str]


class _Subst(NamedTuple):
    """How each kind of field is substituted in one context."""

    #: most fields: every variable of the context (``${{inputs.*}}`` left for ``uses``)
    text: _TextFn
    #: ``if:`` fields (see the module docstring)
    cond: _TextFn
    #: ``environment`` values: as melange v0.34.0, only ``package.*``, ``vars.*`` and
    #: ``range.*``; anything else (``${{targets.destdir}}``) is kept as written
    env: _TextFn
    #: a subpackage's ``if:``: only ``package.*``, ``vars.*`` and ``range.*`` (inserted as
    #: written); other variables are left, and evaluate to ``""`` (see ``Subpackage.if_``)
    sp_cond: _TextFn


def _apply(fn: _TextFn, value: str, owner: Step | Environment | Subpackage, key: str) -> str:
    """``fn`` on ``value`` (its location only looked up when there is something to do)."""
    if "${{" not in value:
        return value
    return fn(value, owner.where(key))


def _map_steps(
    steps: tuple[Step, ...],
    sub: _Subst,
    workdir: str = "",
    env: Mapping[str, str] | None = None,
) -> tuple[Step, ...]:
    """Substitute ``steps`` and propagate ``working-directory``/``environment`` down."""
    text, cond = sub.text, sub.cond
    out = []
    for step in steps:
        own_env = {
            k: _apply(sub.env, v, step, f"environment.{k}") for k, v in step.environment.items()
        }
        merged = {**env, **own_env} if env else own_env
        own_workdir = _apply(text, step.working_directory, step, "working-directory") or workdir
        out.append(
            Step(
                name=_apply(text, step.name, step, "name"),
                uses=step.uses,
                with_=frozen_map(
                    {k: _apply(text, v, step, f"with.{k}") for k, v in step.with_.items()}
                )
                if step.with_
                else EMPTY_MAP,
                runs=_apply(text, step.runs, step, "runs"),
                pipeline=_map_steps(step.pipeline, sub, own_workdir, merged)
                if step.pipeline
                else (),
                working_directory=own_workdir,
                if_=cond(step.if_, step.where("if")) if step.if_ else "",
                environment=frozen_map(merged) if merged else EMPTY_MAP,
                needs_packages=tuple(
                    _apply(text, v, step, f"needs.packages[{i}]")
                    for i, v in enumerate(step.needs_packages)
                ),
                label=step.label,
                required_steps=step.required_steps,
                loc=step.loc,
                field_locs=step.field_locs,
            )
        )
    return tuple(out)


def _map_environment(env: Environment, sub: _Subst) -> Environment:
    text = sub.text

    def each(values: tuple[str, ...], key: str) -> tuple[str, ...]:
        return tuple(_apply(text, v, env, f"{key}[{i}]") for i, v in enumerate(values))

    contents = env.contents
    return dataclasses.replace(
        env,
        contents=Contents(
            repositories=each(contents.repositories, "contents.repositories"),
            keyring=each(contents.keyring, "contents.keyring"),
            packages=each(contents.packages, "contents.packages"),
        ),
        environment=frozen_map(
            {k: _apply(sub.env, v, env, f"environment.{k}") for k, v in env.environment.items()}
        ),
    )


def _map_test(test: Test | None, sub: _Subst) -> Test | None:
    if test is None:
        return None
    return dataclasses.replace(
        test,
        environment=_map_environment(test.environment, sub),
        pipeline=_map_steps(test.pipeline, sub),
    )


def _map_dependencies(
    deps: Dependencies, where: Callable[[str], Location], text: _TextFn
) -> Dependencies:
    def one(value: str, key: str) -> str:
        return text(value, where(key)) if "${{" in value else value

    def each(values: tuple[str, ...], key: str) -> tuple[str, ...]:
        return tuple(one(v, f"dependencies.{key}[{i}]") for i, v in enumerate(values))

    return Dependencies(
        runtime=each(deps.runtime, "runtime"),
        provides=each(deps.provides, "provides"),
        replaces=each(deps.replaces, "replaces"),
        provider_priority=one(deps.provider_priority, "dependencies.provider-priority"),
        replaces_priority=one(deps.replaces_priority, "dependencies.replaces-priority"),
    )


def _map_subpackage(sp: Subpackage, sub: _Subst) -> Subpackage:
    text = sub.text
    return dataclasses.replace(
        sp,
        description=_apply(text, sp.description, sp, "description"),
        url=_apply(text, sp.url, sp, "url"),
        dependencies=_map_dependencies(sp.dependencies, sp.where, text),
        pipeline=_map_steps(sp.pipeline, sub),
        if_=sub.sp_cond(sp.if_, sp.where("if")) if sp.if_ else "",
        test=_map_test(sp.test, sub),
        scriptlets=_map_scriptlets(sp.scriptlets, sp.where, text),
    )


def _substituter(mapping: Mapping[str, str]) -> _Subst:
    """Text and condition substituters for one context (see the module docstring)."""
    parse_time = {
        k: v
        for k, v in mapping.items()
        if k in _PARSE_TIME_KEYS or k.startswith(("vars.", "range."))
    }

    def text(value: str, where: Location) -> str:
        return substitute(value, mapping, location=where, passthrough=_LEAVE_INPUTS)

    def cond(value: str, where: Location) -> str:
        if not value:
            return value
        raw = substitute(value, parse_time, location=where, passthrough=("",))
        quoted = substitute_condition(raw, mapping, location=where, passthrough=_LEAVE_INPUTS)
        parse_condition(quoted, location=where)
        return quoted

    def env(value: str, where: Location) -> str:
        return substitute(value, parse_time, location=where, passthrough=("",))

    def sp_cond(value: str, where: Location) -> str:
        if not value:
            return value
        raw = substitute(value, parse_time, location=where, passthrough=("",))
        parse_condition(raw, location=where)
        return raw

    return _Subst(text, cond, env, sp_cond)


def _range_substituter(key: str, value: str) -> _Subst:
    mapping = {"range.key": key, "range.value": value}

    def text(text_value: str, where: Location) -> str:
        return substitute(text_value, mapping, location=where, passthrough=("",))

    return _Subst(text, text, text, text)


def _check_steps(steps: tuple[Step, ...]) -> None:
    for step in steps:
        if step.with_ and not step.uses:
            raise RecipeFieldError(
                "'with' is only valid together with 'uses'", location=step.where("with")
            )
        if step.uses and step.runs:
            raise RecipeFieldError(
                f"a step cannot have both 'uses' ({excerpt(step.uses)}) and 'runs'",
                location=step.where("runs"),
            )
        _check_steps(step.pipeline)


def _check_priority(value: str, owner: Package | Subpackage, key: str) -> None:
    if value and not re.fullmatch(r"[+-]?[0-9]+", value):
        raise RecipeFieldError(
            f"priority must be an integer, got {names.excerpt(value)}", location=owner.where(key)
        )


class _ConfigLoader:
    def __init__(
        self,
        *,
        file: str,
        arch: str,
        libc: str,
        extra_vars: dict[str, str],
        enabled_options: tuple[str, ...],
    ) -> None:
        self.file = file
        self.arch = arch
        self.libc = libc
        self.extra_vars = extra_vars
        self.enabled_options = enabled_options

    def load(self, source_text: str) -> Config:
        _, root = compose(source_text, self.file)
        if root is None:
            raise RecipeFieldError(
                "empty config", location=Location(file=self.file, line=0, column=0)
            )
        top = root.mapping()
        if "package" not in top:
            raise RecipeFieldError(
                "required section is missing", location=root.loc.child("package")
            )

        locs: dict[str, Location | FieldMark] = {}
        package = _package(top["package"])
        vars = _str_map(top.get("vars"), locs, "vars")
        for key, value in self.extra_vars.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise RecipeError(f"extra_vars must map strings to strings, got {excerpt(key)}")
            vars[key] = value
            locs.setdefault(
                f"vars.{key}", Location(file="<extra_vars>", line=0, column=0, path=f"vars.{key}")
            )
        transforms = tuple(_var_transform(v) for v in _items(top.get("var-transforms")))
        data = tuple(_range_data(v) for v in _items(top.get("data")))
        build_options = tuple(top["options"].mapping()) if "options" in top else ()
        environment = _environment(top.get("environment"))
        pipeline = _steps(top.get("pipeline"), 0)
        raw_subpackages = tuple(_subpackage(v) for v in _items(top.get("subpackages")))
        test = _test(top.get("test"))

        # vars and var-transforms, against the origin package's mapping.
        base = base_substitutions(
            package,
            arch=self.arch,
            libc=self.libc,
            build_options=build_options,
            enabled_options=self.enabled_options,
        )
        transform_locs = {
            f"var-transforms[{i}].{k}": loc
            for i, t in enumerate(transforms)
            for k, loc in t.field_locs.items()
        }
        all_locs = {**locs, **transform_locs}
        located = Config(package=package, loc=root.loc, field_locs=all_locs)
        resolved = resolve_vars(
            vars,
            [(t.from_, t.match, t.replace, t.to) for t in transforms],
            base,
            locations=lambda key: located.where(key) if key in all_locs else None,
        )
        main = {**base, **{f"vars.{k}": v for k, v in resolved.items()}}

        subpackages = self._expand(raw_subpackages, data, main)
        names = [sp.name for sp in subpackages]
        for name in (package.name, *names):
            main[f"targets.package.{name}"] = f"/home/build/melange-out/{name}"

        sub = _substituter(main)
        text = sub.text
        package = dataclasses.replace(
            package,
            description=text(package.description, package.where("description")),
            url=text(package.url, package.where("url")),
            dependencies=_map_dependencies(package.dependencies, package.where, text),
            scriptlets=_map_scriptlets(package.scriptlets, package.where, text),
            copyright=tuple(
                dataclasses.replace(
                    c,
                    license=text(c.license, package.where(f"copyright[{i}].license")),
                    license_path=text(
                        c.license_path, package.where(f"copyright[{i}].license-path")
                    ),
                )
                for i, c in enumerate(package.copyright)
            ),
        )
        environment = _map_environment(environment, sub)
        pipeline = _map_steps(pipeline, sub)
        test = _map_test(test, sub)

        expanded = []
        for sp in subpackages:
            sp_main = subpackage_substitutions(main, sp.name)
            if sp.range:
                # what the range pass left (expressions that also name other variables)
                sp_main.update({"range.key": sp.range_key, "range.value": sp.range_value})
            expanded.append(_map_subpackage(sp, _substituter(sp_main)))

        env_vars = dict(environment.environment)
        for key, default in _DEFAULT_ENV.items():
            if not env_vars.get(key):
                env_vars[key] = default
        environment = dataclasses.replace(environment, environment=frozen_map(env_vars))

        config = Config(
            package=package,
            environment=environment,
            pipeline=pipeline,
            subpackages=tuple(expanded),
            vars=frozen_map(vars),
            var_transforms=transforms,
            data=data,
            test=test,
            build_options=build_options,
            arch=self.arch,
            libc=self.libc,
            enabled_options=self.enabled_options,
            resolved_vars=frozen_map(resolved),
            loc=root.loc,
            field_locs=frozen_map(all_locs),
        )
        self._validate(config)
        return config

    def _expand(
        self,
        subpackages: tuple[Subpackage, ...],
        data: tuple[RangeData, ...],
        main: Mapping[str, str],
    ) -> list[Subpackage]:
        ranges = {d.name: d for d in data}
        out: list[Subpackage] = []
        for sp in subpackages:
            if not sp.range:
                out.append(self._named(sp, main))
                continue
            source = ranges.get(sp.range)
            if source is None:
                raise RecipeFieldError(
                    f"undefined range {excerpt(sp.range)} (no 'data' entry has that name)",
                    location=sp.where("range"),
                )
            for key in sorted(source.items):
                value = source.items[key]
                ranged = _range_substituter(key, value)
                text = ranged.text
                expanded = _map_subpackage(sp, ranged)
                expanded = dataclasses.replace(
                    expanded,
                    name=text(sp.name, sp.where("name")),
                    range_key=key,
                    range_value=value,
                )
                out.append(self._named(expanded, {**main, "range.key": key, "range.value": value}))
        return out

    @staticmethod
    def _named(sp: Subpackage, main: Mapping[str, str]) -> Subpackage:
        if "${{" not in sp.name:
            return sp
        where = sp.where("name")
        return dataclasses.replace(
            sp, name=substitute(sp.name, main, location=where, passthrough=_LEAVE_INPUTS)
        )

    @staticmethod
    def _validate(config: Config) -> None:
        package = config.package
        try:
            names.check_package_name(package.name)
        except ValueError as exc:
            raise RecipeFieldError(str(exc), location=package.where("name")) from None
        try:
            names.check_version(package.version, "package version")
        except ValueError as exc:
            raise RecipeFieldError(str(exc), location=package.where("version")) from None
        for key in ("provider-priority", "replaces-priority"):
            _check_priority(
                getattr(package.dependencies, key.replace("-", "_")),
                package,
                f"dependencies.{key}",
            )
        _check_steps(config.pipeline)
        seen: dict[str, int] = {package.name: -1}
        for index, sp in enumerate(config.subpackages):
            if sp.name in seen:
                other = seen[sp.name]
                what = "the main package" if other < 0 else f"subpackage #{other}"
                raise RecipeFieldError(
                    f"subpackage name {names.excerpt(sp.name)} is already used by {what}",
                    location=sp.where("name"),
                )
            seen[sp.name] = index
            try:
                names.check_package_name(sp.name, "subpackage name")
            except ValueError as exc:
                raise RecipeFieldError(str(exc), location=sp.where("name")) from None
            for key in ("provider-priority", "replaces-priority"):
                _check_priority(
                    getattr(sp.dependencies, key.replace("-", "_")), sp, f"dependencies.{key}"
                )
            _check_steps(sp.pipeline)
