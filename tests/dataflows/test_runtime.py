"""The interpreter settings a flow process runs with (dataflows.runtime, decision 0023)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dataflows.runtime import GC_THRESHOLDS

ROOT = Path(__file__).resolve().parents[2]


def _thresholds_after(statement: str) -> tuple[int, ...]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDFLOW_", "BYTEWAX_"))}
    env.update({"PYTHONPATH": str(ROOT), "FRAUDFLOW_PROGRESS": "0"})
    code = f"import gc, dataflows.fraud as fraud\n{statement}\nprint(tuple(gc.get_threshold()))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tuple(int(v) for v in proc.stdout.strip().splitlines()[-1].strip("()").split(","))


def test_the_flow_entry_point_collects_cyclic_garbage_rarely_a_plain_import_changes_nothing():
    cpython_default = (700, 10, 10)
    assert GC_THRESHOLDS[0] >= 50 * cpython_default[0]  # the young collection, ~70x rarer
    assert _thresholds_after("pass") == cpython_default  # importing the module for build_flow: untouched
    assert _thresholds_after("fraud.flow") == GC_THRESHOLDS  # what `python -m bytewax.run dataflows.fraud:flow` loads
