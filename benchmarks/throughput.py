"""Events per second of the dataflow (1 worker) against a bare Python loop running the same
feature and model code over the same events, in one run.

    python -m benchmarks.throughput [--days 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import DEFAULT_MODEL, in_subprocess, load, peak_rss_mb, repeat, save, workload


def _run_loop(events: list, model_kind: str) -> tuple[int, float]:
    """(transactions scored, seconds) of the sequential pipeline over ``events``."""
    from learners.pipeline import PipelineConfig, SequentialPipeline
    from learners.scoring import ModelConfig

    pipe = SequentialPipeline(PipelineConfig(model=ModelConfig(kind=model_kind)))
    started = time.perf_counter()
    scored = sum(1 for _ in pipe.run(events))
    return scored, time.perf_counter() - started


def bare_loop(path: str, model_kind: str = DEFAULT_MODEL) -> dict:
    events = load(path)
    scored, elapsed = _run_loop(events, model_kind)
    return {"events": len(events), "transactions": scored, "seconds": round(elapsed, 3),
            "events_per_s": round(len(events) / elapsed), "peak_rss_mb": round(peak_rss_mb(), 1)}


def bare_loop_part(path: str, model_kind: str = DEFAULT_MODEL, part: str = "0", parts: str = "2") -> dict:
    """The bare loop over the events of one of ``parts`` groups of accounts (the flow's
    account-to-shard split), with its own model: run ``parts`` of them at once to see what this
    machine gives perfectly parallel Python work with nothing shared."""
    from learners.pipeline import shard_for

    part_i, parts_n = int(part), int(parts)
    events = [e for e in load(path) if shard_for(e.account_id, parts_n) == part_i]
    scored, elapsed = _run_loop(events, model_kind)
    return {"part": part_i, "parts": parts_n, "events": len(events), "transactions": scored,
            "seconds": round(elapsed, 3), "events_per_s": round(len(events) / elapsed)}


def dataflow(path: str, model_kind: str = DEFAULT_MODEL, workers: int = 1, exports: str = "") -> dict:
    from bytewax.testing import TestingSink, cluster_main, run_main

    from connectors.sources import EventListSource
    from dataflows.fraud import build_flow
    from dataflows.settings import Settings

    events = load(path)
    workers = int(workers)
    exports = exports not in ("", "0")
    alerts, dlq, scores = [], [], []
    import tempfile

    export_dir = tempfile.mkdtemp(prefix="fraudflow-bench-exports-") if exports else "off"
    settings = Settings().replace(progress=False, model_kind=model_kind, snapshot_dir=export_dir,
                                  snapshot_key="benchmark-signing-key-0123456789")
    parts = build_flow(settings, source=EventListSource(events), alerts_sink=TestingSink(alerts),
                       dlq_sink=TestingSink(dlq), scores_sink=TestingSink(scores), shards=workers)
    started = time.perf_counter()
    if workers == 1:
        run_main(parts.flow)
    else:
        cluster_main(parts.flow, [], 0, worker_count_per_proc=workers)
    elapsed = time.perf_counter() - started
    assert len(scores) == sum(1 for e in events if type(e).__name__ == "Transaction")
    written = len(list(__import__("pathlib").Path(export_dir).glob("*.json"))) if exports else 0
    return {"events": len(events), "transactions": len(scores), "alerts": len(alerts), "seconds": round(elapsed, 3),
            "events_per_s": round(len(events) / elapsed), "peak_rss_mb": round(peak_rss_mb(), 1),
            "snapshot_exports": written, "export_dir": export_dir if exports else None}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--terminals", type=int, default=4_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args(argv)
    path = str(workload(args.customers, args.terminals, args.days))
    loop = repeat(args.repeat, lambda: in_subprocess("benchmarks.throughput", "bare_loop", path, args.model),
                  "events_per_s")
    flow = repeat(args.repeat, lambda: in_subprocess("benchmarks.throughput", "dataflow", path, args.model),
                  "events_per_s")
    exporting = repeat(args.repeat, lambda: in_subprocess("benchmarks.throughput", "dataflow", path, args.model,
                                                          "1", "1"), "events_per_s")
    result = {
        "workload": {"customers": args.customers, "terminals": args.terminals, "days": args.days,
                     "events": loop["events"], "transactions": loop["transactions"]},
        "model": args.model,
        "bare_loop": loop,
        "dataflow_1_worker": flow,
        "dataflow_1_worker_with_exports": exporting,
        "ratio_dataflow_to_loop": round(flow["events_per_s_median"] / loop["events_per_s_median"], 3),
        "export_throughput_cost": round(1 - exporting["events_per_s_median"] / flow["events_per_s_median"], 3),
        "targets": {"ratio_dataflow_to_loop": ">= 0.6", "dataflow_events_per_s": ">= 10000",
                    "export_throughput_cost": "< 0.05 at the default interval (24 h of event time)"},
    }
    path_out = save(f"throughput-{args.model}", result)
    print(json.dumps({k: result[k] for k in ("workload", "ratio_dataflow_to_loop", "export_throughput_cost")} | {
        "loop_events_per_s": loop["events_per_s_median"], "dataflow_events_per_s": flow["events_per_s_median"],
        "exports_written": exporting["snapshot_exports"], "results": str(path_out)}, indent=2))
    return result


if __name__ == "__main__":
    main()
