"""``bench/virtual_bench.py`` works: on a small random graph, every arm runs the real
scheduler on the virtual clock, no arm beats the lower bound, the learned run matches
the planner's list schedule, and ``bench/replay.py --virtual`` merges the report into a
replay report without touching its fields. Not a timed test: the numbers are in
docs/performance.md."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _load(name: str) -> ModuleType:
    """A bench script (not a package module), loaded by path."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


virtual_bench = _load("virtual_bench")
replay = _load("replay")


@pytest.fixture
def graph_file(tmp_path: Path) -> Path:
    """80 packages in random layers, a few roots heading long chains (so fifo and
    critical-path differ), and one 2-cycle for ``cycle_policy: break`` to cut."""
    rng = random.Random(7)
    names = [f"pkg-{i:02d}" for i in range(80)]
    packages = []
    for i, name in enumerate(names):
        deps = sorted(rng.sample(names[max(0, i - 12) : i], k=min(i, rng.randint(0, 3))))
        packages.append({"name": name, "deps": deps})
    packages[0]["cycle_deps"] = ["pkg-01"]
    packages[1]["deps"] = ["pkg-00"]
    path = tmp_path / "graph.json"
    path.write_text(json.dumps({"packages": packages}))
    return path


def test_every_arm_runs_the_real_scheduler_and_respects_the_bound(
    graph_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "virtual.json"
    argv = ["--data", str(graph_file), "--seeds", "2", "--slots", "2,6", "--jobs", "1"]
    assert virtual_bench.main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["virtual"] + report["virtual_reference"]
    assert {r["schedule"] for r in report["virtual"]} == {
        "fifo",
        "critical-path",
        "critical-path-learned",
    }
    assert {r["schedule"] for r in report["virtual_reference"]} == {"reference"}
    assert len(rows) == 2 * 2 * len(virtual_bench.SCHEDULES)
    for row in rows:
        assert {"schedule", "slots", "seed", "ratio", "makespan_s", "bound_s"} <= set(row)
        assert row["makespan_s"] >= row["bound_s"] - 0.1  # nothing beats the lower bound
        assert row["ratio"] >= 0.999
        if row["schedule"] != "reference":
            assert row["started"] == report["packages"] == 80
    assert report["checks"]["first_wave_as_scheduled"] is True
    assert report["checks"]["fifo_and_critical_path_orders_differ"] is True
    assert report["checks"]["learned_matches_plan"] is True
    assert {(s["schedule"], s["slots"]) for s in report["summary"]} == {
        (schedule, slots) for schedule in virtual_bench.SCHEDULES for slots in (2, 6)
    }
    assert "critical-path-learned" in virtual_bench.table(report["summary"], [2, 6])


def test_new_packages_and_noisy_reruns_are_variations_of_the_learned_run(
    graph_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "virtual.json"
    argv = ["--data", str(graph_file), "--seeds", "1", "--slots", "3", "--jobs", "1"]
    extra = ["--schedules", "critical-path-learned", "--new-fraction", "0.5"]
    assert virtual_bench.main([*argv, *extra, "--rerun-noise", "0.3", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["virtual"]
    assert row["schedule"] == "critical-path-learned"
    assert (row["new_fraction"], row["rerun_noise"]) == (0.5, 0.3)
    assert row["ratio"] >= 0.999


def test_replay_merges_a_virtual_report_and_keeps_its_own_fields(
    graph_file: Path, tmp_path: Path
) -> None:
    virtual = tmp_path / "virtual.json"
    argv = ["--data", str(graph_file), "--seeds", "1", "--slots", "4", "--jobs", "1"]
    assert virtual_bench.main([*argv, "--out", str(virtual)]) == 0
    saved = {
        "packages": 12,
        "makespan_s": 40.0,
        "ratio": 1.5,
        "runs": {"critical-path": {"packages": 12, "slots": 4, "makespan_s": 40.0}},
        "timelines": {},
    }
    (tmp_path / "replay.json").write_text(json.dumps(saved))
    merged = tmp_path / "merged.json"
    args = ["--replot", str(tmp_path / "replay.json"), "--virtual", str(virtual)]
    assert replay.main([*args, "--out", str(merged)]) == 0
    report = json.loads(merged.read_text())
    for key, value in saved.items():
        assert report[key] == value
    assert report["virtual"] == json.loads(virtual.read_text())["virtual"]
    assert {r["schedule"] for r in report["virtual"]} == {
        "fifo",
        "critical-path",
        "critical-path-learned",
    }
    assert report["virtual_reference"][0]["schedule"] == "reference"
    assert report["virtual_checks"]["first_wave_as_scheduled"] is True
