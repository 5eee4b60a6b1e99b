"""Two checkouts of fraudflow in lockstep: CPU seconds per event of the dataflow or the bare loop,
measured with both running in turns of a fraction of a second.

    python -m benchmarks.lockstep OLD_CHECKOUT NEW_CHECKOUT [--func dataflow] [--rounds 3] [--days 30]

On a machine shared with other work, both wall time and CPU time vary with the neighbours (two
hyperthreads of one core, caches, frequency): runs a minute apart differ by 10-20 %, which hides a
regression of a few percent however many rounds alternate. Here the two versions run at the same
time in two processes (each with its checkout's ``.venv``, or this interpreter for a checkout
without one) that pass a token through pipes: each works for ``--slice`` CPU seconds, then hands
over and blocks, so both see the same load, slice by slice, for the whole run. Each counts its
own CPU time (user + system) over the span the benchmarks time (:mod:`benchmarks.throughput`):
the loop over the events, or ``run_main`` of the flow. The child code only uses what both
versions have (``SequentialPipeline``, ``build_flow``, ``EventListSource``, ``Settings``).

Reports each round's events per CPU second of both and new/old, and their medians.
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

_CHILD = r'''
import json, os, signal, sys, time
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
import dataflows.runtime as runtime, benchmarks.common as c
runtime.tune_gc()
func, days, slice_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
r_fd, w_fd, ready_fd = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
events = c.load(c.workload(2000, 4000, days))
alone = False
mark = [0.0]

def wait():
    global alone
    if not alone and not os.read(r_fd, 1):
        alone = True  # the other one finished
    mark[0] = time.process_time()

def turn():
    """Hand over once this turn has used its slice of CPU time."""
    global alone
    if alone or time.process_time() - mark[0] < slice_s:
        return
    try:
        os.write(w_fd, b"t")
    except OSError:
        alone = True
        return
    wait()

if func == "bare_loop":
    from learners.pipeline import PipelineConfig, SequentialPipeline
    from learners.scoring import ModelConfig

    pipe = SequentialPipeline(PipelineConfig(model=ModelConfig(kind=c.DEFAULT_MODEL)))

    def paced():
        for i, event in enumerate(events):
            if not i & 31:
                turn()
            yield event

    def work():
        return sum(1 for _ in pipe.run(paced()))
else:
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.testing import TestingSink, run_main
    from connectors.sources import EventListSource
    from dataflows.fraud import build_flow
    from dataflows.settings import Settings

    class Paced(StatefulSourcePartition):
        def __init__(self, inner):
            self.inner = inner

        def next_batch(self):
            turn()
            return self.inner.next_batch()

        def next_awake(self):
            return self.inner.next_awake()

        def snapshot(self):
            return self.inner.snapshot()

        def close(self):
            return self.inner.close()

    class PacedSource(FixedPartitionedSource):
        def __init__(self, inner):
            self.inner = inner

        def list_parts(self):
            return self.inner.list_parts()

        def build_part(self, step_id, for_part, resume_state):
            return Paced(self.inner.build_part(step_id, for_part, resume_state))

    alerts, dlq, scores = [], [], []
    fields = dict(progress=False, model_kind=c.DEFAULT_MODEL, snapshot_dir="off",
                  snapshot_key="benchmark-signing-key-0123456789")
    if os.environ.get("LOCKSTEP_RULES_FILE"):  # --new-rules: this side runs with a rule book
        fields["rules_file"] = os.environ["LOCKSTEP_RULES_FILE"]
    # Settings in sections take the flat names through replace(); older checkouts, the constructor
    settings = Settings().replace(**fields) if hasattr(Settings, "replace") else Settings(**fields)
    parts = build_flow(settings, source=PacedSource(EventListSource(events)), alerts_sink=TestingSink(alerts),
                       dlq_sink=TestingSink(dlq), scores_sink=TestingSink(scores), shards=1)

    def work():
        run_main(parts.flow)
        return len(scores)

os.write(ready_fd, b"r")  # set up: the parent hands out the first token once both are
os.close(ready_fd)
wait()
started, wall = time.process_time(), time.perf_counter()
scored = work()
cpu, wall = time.process_time() - started, time.perf_counter() - wall
try:
    os.write(w_fd, b"t")  # the other one goes on alone
except OSError:
    pass
os.close(w_fd)
print(json.dumps({"events": len(events), "transactions": scored, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                  "events_per_cpu_s": round(len(events) / cpu)}))
'''


def _python(checkout: Path) -> str:
    venv = checkout / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _round(old: Path, new: Path, func: str, days: int, slice_s: float, old_first: bool,
           new_rules: str = "") -> dict[str, dict]:
    """Both checkouts at once, in turns; the first to go is ``old`` if ``old_first``; the new one
    with the rules file ``new_rules`` (the dataflow)."""
    a_r, b_w = os.pipe()  # b hands the token to a
    b_r, a_w = os.pipe()  # a hands it to b
    ready_r, ready_w = os.pipe()
    procs = {}
    for name, checkout, r_fd, w_fd in (("old", old, a_r, a_w), ("new", new, b_r, b_w)):
        procs[name] = subprocess.Popen(
            [_python(checkout), "-c", _CHILD, func, str(days), str(slice_s), str(r_fd), str(w_fd), str(ready_w)],
            cwd=checkout, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(r_fd, w_fd, ready_w),
            env={**os.environ, "PYTHONPATH": str(checkout),
                 **({"LOCKSTEP_RULES_FILE": new_rules} if name == "new" and new_rules else {})})
    os.close(a_r), os.close(b_r), os.close(ready_w)
    ready = b""
    while len(ready) < 2:  # both set up (an empty read: one died; its error shows below)
        got = os.read(ready_r, 2)
        if not got:
            break
        ready += got
    os.close(ready_r)
    # The first token: to whoever goes first (its reader is the other one's writer end).
    os.write(b_w if old_first else a_w, b"t")
    os.close(a_w), os.close(b_w)
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=7200)
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: {func} failed:\n{stderr[-2000:]}")
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--func", choices=("dataflow", "bare_loop"), action="append",
                        help="benchmark(s) to run (repeatable; default both)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--slice", type=float, default=0.25, help="CPU seconds of a turn")
    parser.add_argument("--name", default="lockstep", help="result file benchmarks/results/NAME.json")
    parser.add_argument("--new-rules", default="", metavar="FILE",
                        help="the new side's flow runs with these rules (OLD and NEW may be the same checkout: "
                             "the cost of a rule book)")
    args = parser.parse_args(argv)
    funcs = args.func or ["dataflow", "bare_loop"]
    result: dict[str, Any] = {"old": str(args.old), "new": str(args.new), "new_rules": args.new_rules,
                              "rounds": args.rounds, "days": args.days,
                              "slice_s": args.slice, "unit": "events per CPU second (user + system)"}
    for func in funcs:
        rows: dict[str, list] = {"old": [], "new": [], "ratio": []}
        for r in range(args.rounds):
            got = _round(args.old.resolve(), args.new.resolve(), func, args.days, args.slice, old_first=r % 2 == 0,
                         new_rules=str(Path(args.new_rules).resolve()) if args.new_rules else "")
            assert got["old"]["transactions"] == got["new"]["transactions"], got
            for name in ("old", "new"):
                rows[name].append(got[name]["events_per_cpu_s"])
            rows["ratio"].append(round(got["new"]["events_per_cpu_s"] / got["old"]["events_per_cpu_s"], 3))
            print(json.dumps({"func": func, "round": r + 1, **got}), flush=True)
        result[func] = {"old_events_per_cpu_s": rows["old"], "new_events_per_cpu_s": rows["new"],
                        "new_over_old_per_round": rows["ratio"],
                        "new_over_old_median": statistics.median(rows["ratio"])}
    save(args.name, result)
    print(json.dumps({f: result[f]["new_over_old_median"] for f in funcs}))
    return result


if __name__ == "__main__":
    main()
