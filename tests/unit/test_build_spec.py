"""A build's spec: stored rows of every shape this server ever wrote load, and a spec
round-trips through its JSON unchanged; it cannot be changed once made."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from melange2.jobs import BuildSpec, GitSpec, JSONValue, StepOptions
from melange2.wire import CreateBuildRequest


def _as_stored_before_issue_15(request: CreateBuildRequest, arch: str) -> dict[str, Any]:
    """The spec JSON as submission wrote it before the spec was typed (issue 15)."""
    spec: dict[str, Any] = request.model_dump(mode="json", exclude={"source_files", "dry_run"})
    spec["arch"] = arch
    spec["source_files"] = {pkg: sorted(files) for pkg, files in request.source_files.items()}
    if request.schedule is None:
        spec["schedule"] = "critical-path"
    return spec


@pytest.mark.parametrize(
    "body",
    [
        {"config_yaml": "package: {name: a}"},
        {
            "configs": ["package: {name: a}", "package: {name: b}"],
            "pipelines": {"p/x.yaml": "runs: true"},
            "source_files": {"a": {"z.txt": "z", "d/a.bin": {"base64": "AA=="}}},
            "backend_selector": {"tier": "fast"},
            "mode": "dag",
            "with_test": True,
            "debug": True,
            "env": {"K": "v"},
            "cycle_policy": "break",
            "schedule": "fifo",
            "force": True,
            "publish": "build",
            "replace": True,
        },
        {"git_source": {"repository": "https://git.example/os", "ref": "v1", "path": "p"}},
    ],
)
def test_rows_stored_before_load_and_keep_their_json(body: dict[str, Any]) -> None:
    stored = _as_stored_before_issue_15(CreateBuildRequest.model_validate(body), "aarch64")
    spec = BuildSpec.from_json(stored)
    assert spec.to_json() == stored
    assert list(spec.to_json()) == list(stored)  # the same keys in the same order
    assert spec.arch == "aarch64"
    assert spec.schedule == body.get("schedule", "critical-path")
    assert spec.options.with_test is body.get("with_test", False)


def test_older_rows_without_later_fields_take_their_defaults() -> None:
    spec = BuildSpec.from_json({"configs": ["x"], "arch": "x86_64", "env": {"A": "1"}})
    assert spec.schedule is None  # the server's --schedule then
    assert (spec.force, spec.publish, spec.replace) == (False, "package", False)
    assert spec.options == StepOptions(env={"A": "1"})
    odd: dict[str, JSONValue] = {"mode": "sideways", "publish": 3, "schedule": "random"}
    assert BuildSpec.from_json(odd) == BuildSpec()


def test_a_spec_round_trips_and_is_frozen() -> None:
    env = {"A": "1"}
    spec = BuildSpec(
        configs=("a",),
        git_source=GitSpec(repository="r"),
        backend_selector={"t": "x"},
        options=StepOptions(env=env, debug=True),
        source_files={"a": ("f",)},
        schedule="fifo",
    )
    env["A"] = "changed"
    assert spec.options.env == {"A": "1"}
    assert BuildSpec.from_json(spec.to_json()) == spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.arch = "aarch64"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.backend_selector["t"] = "y"  # type: ignore[index]
    assert spec.evolve(arch="aarch64").arch == "aarch64" and spec.arch == "x86_64"
