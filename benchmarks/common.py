"""Shared helpers for the benchmarks: workloads, timing in subprocesses, result files."""

from __future__ import annotations

import json
import os
import platform
import pickle
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_MODEL = "binned_logreg"  # dataflows.settings.Settings().model.kind (checked by a test)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def workload(customers: int = 2_000, terminals: int = 4_000, days: int = 60, seed: int = 0,
             labels: str = "all") -> Path:
    """A simulated stream pickled once, so every contender reads the very same events."""
    from connectors.simulator import SimulatorConfig, simulate

    path = RESULTS / f".workload-{customers}-{terminals}-{days}-{seed}-{labels}.pkl"
    if not path.exists():
        RESULTS.mkdir(parents=True, exist_ok=True)
        events = list(simulate(SimulatorConfig(customers=customers, terminals=terminals, days=days, seed=seed,
                                               labels=labels)))
        with open(path, "wb") as fh:
            pickle.dump(events, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load(path: Path) -> list:
    with open(path, "rb") as fh:
        return pickle.load(fh)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_subprocess(module: str, func: str, *args: str, timeout: float = 3600) -> dict[str, Any]:
    """Run ``module.func(*args)`` in a fresh interpreter, with the garbage-collector settings a
    flow process runs with (``dataflows.runtime.tune_gc``: the bare loop and the in-process
    flows do their work under the same settings); it prints one JSON line."""
    code = (f"import json, dataflows.runtime as r, {module} as m; r.tune_gc(); "
            f"print(json.dumps(m.{func}(*{list(args)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(f"{module}.{func} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def repeat(n: int, run: Callable[[], dict[str, Any]], key: str) -> dict[str, Any]:
    """Run ``n`` times; keep every run and the median of ``key``."""
    return summarise([run() for _ in range(n)], key)


def summarise(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key``, plus every run's ``key`` and their median."""
    values = [r[key] for r in runs]
    best = sorted(runs, key=lambda r: r[key])[len(runs) // 2]
    return {**best, f"{key}_runs": values, f"{key}_median": statistics.median(values)}


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
              **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
