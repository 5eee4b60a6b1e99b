"""Two checkouts of fraudflow, paired: the dataflow's and the bare loop's events/s, in turns.

    python -m benchmarks.versions OLD_CHECKOUT NEW_CHECKOUT [--rounds 5] [--days 30] [--clock cpu]

Each checkout runs with its own ``.venv`` (``make install`` there first; a checkout without one,
such as a ``git worktree`` of a commit being bisected, runs with this interpreter) on the same
simulated workload; the two alternate within each round (the order flips every round), so both
see the same machine load. Reports each one's median events/s and the new/old ratio of each
round, the figure issue 21 asks to stay within 3 %.

``--clock cpu`` counts the process's CPU time (user + system, all threads) instead of wall
time over the very span each benchmark times: on a shared machine whose other sessions take the
cores in turns, wall time mostly measures the neighbours, CPU time what the code costs (it still
varies a few percent with cache and frequency contention, hence the pairing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import save

FUNCS = ("dataflow", "bare_loop")

# The benchmark module times with ``time.perf_counter()``; under ``--clock cpu`` it is handed a
# ``time`` whose perf_counter is the process's CPU time, so the very span it times is counted.
# Every call also notes the wall clock, so a run reports both (``wall_s`` beside the CPU-based figures).
_CPU_CLOCK = ("import types, time as _time; _marks = []; "
              "t.time = types.SimpleNamespace(**{k: getattr(_time, k) for k in dir(_time) if not k.startswith('__')}); "
              "t.time.perf_counter = lambda: (_marks.append(_time.perf_counter()), _time.process_time())[1]; ")


def _python(checkout: Path) -> str:
    venv = checkout / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _run(checkout: Path, func: str, days: int, clock: str) -> dict[str, Any]:
    code = ("import json, dataflows.runtime as r, benchmarks.common as c, benchmarks.throughput as t; r.tune_gc(); "
            + (_CPU_CLOCK if clock == "cpu" else "")
            + f"p = str(c.workload(2000, 4000, {days})); out = t.{func}(p); "
            + ("out['wall_s'] = round(_marks[-1] - _marks[0], 3); " if clock == "cpu" else "")
            + "print(json.dumps(out))")
    proc = subprocess.run([_python(checkout), "-c", code], cwd=checkout, text=True,
                          capture_output=True, timeout=3600, env={**os.environ, "PYTHONPATH": str(checkout)})
    if proc.returncode != 0:
        raise RuntimeError(f"{checkout}: {func} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--only", choices=FUNCS, action="append", help="run only this benchmark (repeatable)")
    parser.add_argument("--name", default="versions", help="result file benchmarks/results/NAME.json")
    args = parser.parse_args(argv)
    funcs = tuple(args.only or FUNCS)
    rows: dict[str, dict[str, list[float]]] = {f: {"old": [], "new": []} for f in funcs}
    walls: dict[str, dict[str, list[float]]] = {f: {"old": [], "new": []} for f in funcs}
    for r in range(args.rounds):
        order = [("old", args.old), ("new", args.new)]
        if r % 2:
            order.reverse()
        for func in rows:
            for name, checkout in order:
                out = _run(checkout.resolve(), func, args.days, args.clock)
                rows[func][name].append(out["events_per_s"])
                if "wall_s" in out:
                    walls[func][name].append(round(out["events"] / out["wall_s"]))
        print(json.dumps({"round": r + 1, **{f: {k: v[-1] for k, v in d.items()} for f, d in rows.items()},
                          **({"wall": {f: {k: v[-1] for k, v in d.items()} for f, d in walls.items()}}
                             if args.clock == "cpu" else {})}), flush=True)
    result: dict[str, Any] = {"old": str(args.old), "new": str(args.new), "rounds": args.rounds, "days": args.days,
                              "clock": args.clock,
                              "unit": "events per CPU second" if args.clock == "cpu" else "events per second"}
    for func, d in rows.items():
        pairs = [n / o for n, o in zip(d["new"], d["old"])]
        result[func] = {"old_events_per_s": d["old"], "new_events_per_s": d["new"],
                        "old_median": statistics.median(d["old"]), "new_median": statistics.median(d["new"]),
                        "new_over_old_per_round": [round(p, 3) for p in pairs],
                        "new_over_old_median": round(statistics.median(pairs), 3)}
        if args.clock == "cpu":
            w = walls[func]
            result[func]["wall_events_per_s"] = w
            result[func]["wall_new_over_old_median"] = round(statistics.median(
                n / o for n, o in zip(w["new"], w["old"])), 3)
    save(args.name, result)
    print(json.dumps({f: result[f]["new_over_old_median"] for f in rows}))
    return result


if __name__ == "__main__":
    main()
