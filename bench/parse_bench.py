"""What the YAML limits cost a cold parse: ``wolfi-dag.json``'s 3,401 packages as
real-sized melange configs (the dry-run benchmark's, from ``melange2.testenv.distro``),
each parsed by ``load_config`` with the limits checked as the server does (the
event-stream pre-pass only for configs whose cheap depth bound exceeds the limit;
``--always-scan``: for every config, what configs full of ``${{...}}`` and brackets pay)
and, for the comparison, without the check. Rounds alternate between the two; medians
and their ratio are printed.

    .venv/bin/python bench/parse_bench.py --rounds 7 [--always-scan]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from dryrun_bench import DATA

import melange2.recipe._yaml as _yaml_module
from melange2.recipe import load_config
from melange2.testenv.distro import load_graph, make_distribution

#: the module whose check the benchmark switches on and off (untyped on purpose)
yaml_view: Any = _yaml_module


def _configs() -> list[str]:
    configs, _ = make_distribution(load_graph(DATA))
    return configs


def _parse_all(texts: list[str]) -> float:
    started = time.perf_counter()
    for n, text in enumerate(texts):
        load_config(text, filename=f"configs[{n}]", arch="x86_64")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--always-scan", action="store_true", help="no cheap bound")
    args = parser.parse_args()
    texts = _configs()
    if args.always_scan:
        yaml_view.depth_bound = lambda text: yaml_view.MAX_DEPTH + 1
    checked: Callable[[str, str], None] = yaml_view._check_shape
    with_limits, without = [], []
    _parse_all(texts)  # warm up
    for _ in range(args.rounds):
        yaml_view._check_shape = checked
        with_limits.append(_parse_all(texts))
        yaml_view._check_shape = lambda text, file: None
        without.append(_parse_all(texts))
    yaml_view._check_shape = checked
    a, b = statistics.median(with_limits), statistics.median(without)
    print(
        json.dumps(
            {
                "configs": len(texts),
                "rounds": args.rounds,
                "always_scan": args.always_scan,
                "median_s_with_limits": round(a, 3),
                "median_s_without": round(b, 3),
                "ratio": round(a / b, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
