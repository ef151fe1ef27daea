"""The wolfi replay benchmark (``bench/replay.py``, issue 7) works: a small ``--limit``
replay on the real farm, both schedules and the no-op resubmission, through its command
line, as CI runs it. Not a timed test: the goals are checked in docs/performance.md,
not here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from melange2.farm.local import FarmEnv
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def _load_replay() -> ModuleType:
    """``bench/replay.py`` is a script, not a package module: load it by path."""
    name = "_bench_replay"
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "replay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


replay = _load_replay()

REQUIRED = (
    "packages",
    "makespan_s",
    "lower_bound_s",
    "ratio",
    "dispatch_p50_ms",
    "dispatch_p99_ms",
    "overhead_p50_ms",
    "overhead_p99_ms",
    "noop_resubmit_s",
)


def test_limit_takes_a_dependency_closed_subset_with_chains() -> None:
    raw = json.loads(replay.DATA.read_text())["packages"]
    for limit in (12, 200):
        chosen = replay.select(raw, limit, replay.DEFAULT_SCALE)
        assert len(chosen) == limit
        seen: set[str] = set()
        for p in chosen:  # dependencies first: closed, and in a topological order
            assert set(p.deps) <= seen, p
            seen.add(p.name)
            assert p.name.startswith("wb-")
            assert replay.MIN_SLEEP_S <= p.sleep_s <= replay.MAX_SLEEP_S
        assert any(p.deps for p in chosen)
    everything = replay.select(raw, 0, replay.DEFAULT_SCALE)
    assert len(everything) == len(raw) == len({p.name for p in everything})


def test_replay_of_twelve_packages_both_schedules_and_resubmission(
    farm: FarmEnv, tmp_path: Path
) -> None:
    (tmp_path / "farm").mkdir()
    (tmp_path / "farm" / "env").write_text(farm.render())
    out, plot = tmp_path / "r.json", tmp_path / "r.svg"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "replay.py"),
            "--farm-dir",
            str(tmp_path / "farm"),
            "--limit",
            "12",
            "--scale",
            "0.004",
            "--out",
            str(out),
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    for key in REQUIRED:
        assert isinstance(report[key], int | float), (key, report[key])
    assert report["packages"] == 12
    assert set(report["runs"]) == {"fifo", "critical-path"}
    for name, run in report["runs"].items():
        assert run["schedule"] == name  # asked in the request, recorded by the server
        assert run["packages"] == 12
        assert run["slots"] == replay.DEFAULT_SLOTS
        # the sleeps are real: no schedule beats the bound (timestamps are the server's)
        assert run["makespan_s"] >= run["lower_bound_s"] * 0.99
        assert run["ratio"] >= 0.99
        assert run["lower_bound_s"] >= run["critical_path_s"] > 0
        assert 0 <= run["dispatch_p50_ms"] <= run["dispatch_p99_ms"]
        assert 0 < run["overhead_p50_ms"] <= run["overhead_p99_ms"]
        assert run["server_peak_rss_mb"] > 0
    assert report["makespan_s"] == report["runs"]["critical-path"]["makespan_s"]
    # the farm's CPU per package beside buildctl's for the same steps (issue 19 item 7)
    for run in [report, *report["runs"].values()]:
        cpu = run["cpu_s_per_package"]
        assert set(cpu) == {"server", "buildkitd", "registry", "buildctl"}
        assert cpu["server"] > 0 and cpu["buildkitd"] > 0 and cpu["buildctl"] > 0
        assert cpu["registry"] >= 0
        farm = cpu["server"] + cpu["buildkitd"] + cpu["registry"]
        assert run["farm_cpu_s_per_package"] == pytest.approx(farm, abs=1e-3)
        assert run["cpu_ratio_vs_buildctl"] == pytest.approx(farm / cpu["buildctl"], rel=0.02)
    assert report["noop_resubmit_s"] > 0
    cached = report["noop_resubmit_cached"]
    assert cached is None or 0 <= cached <= 12
    assert "<svg" in plot.read_text()
    assert "critical-path" in proc.stdout


def test_replay_refuses_without_a_farm(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "replay.py"), "--farm-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode != 0
    assert "make farm-up" in proc.stdout + proc.stderr
