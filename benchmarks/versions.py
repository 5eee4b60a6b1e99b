"""Two checkouts of fraudflow, paired: the dataflow's and the bare loop's events/s, in turns.

    python -m benchmarks.versions OLD_CHECKOUT NEW_CHECKOUT [--rounds 5] [--days 30]

Each checkout runs with its own ``.venv`` (``make install`` there first) on the same simulated
workload; the two alternate within each round (the order flips every round), so both see the
same machine load. Reports each one's median events/s and the new/old ratio of each round, the
figure issue 21 asks to stay within 3 %.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.common import save


def _run(checkout: Path, func: str, days: int) -> dict[str, Any]:
    code = ("import json, dataflows.runtime as r, benchmarks.common as c, benchmarks.throughput as t; r.tune_gc(); "
            f"p = str(c.workload(2000, 4000, {days})); print(json.dumps(t.{func}(p)))")
    proc = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-c", code], cwd=checkout, text=True,
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
    args = parser.parse_args(argv)
    rows: dict[str, dict[str, list[float]]] = {"dataflow": {"old": [], "new": []}, "bare_loop": {"old": [], "new": []}}
    for r in range(args.rounds):
        order = [("old", args.old), ("new", args.new)]
        if r % 2:
            order.reverse()
        for func in rows:
            for name, checkout in order:
                rows[func][name].append(_run(checkout.resolve(), func, args.days)["events_per_s"])
        print(json.dumps({"round": r + 1, **{f: {k: v[-1] for k, v in d.items()} for f, d in rows.items()}}),
              flush=True)
    result: dict[str, Any] = {"old": str(args.old), "new": str(args.new), "rounds": args.rounds, "days": args.days}
    for func, d in rows.items():
        pairs = [n / o for n, o in zip(d["new"], d["old"])]
        result[func] = {"old_events_per_s": d["old"], "new_events_per_s": d["new"],
                        "old_median": statistics.median(d["old"]), "new_median": statistics.median(d["new"]),
                        "new_over_old_per_round": [round(p, 3) for p in pairs],
                        "new_over_old_median": round(statistics.median(pairs), 3)}
    save("versions", result)
    print(json.dumps({f: result[f]["new_over_old_median"] for f in rows}))
    return result


if __name__ == "__main__":
    main()
