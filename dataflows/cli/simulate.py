"""``fraudflow simulate``: a simulated stream as contract JSONL files."""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import date
from pathlib import Path
from typing import Any

from dataflows.cli.common import iso_date, positive_int
from dataflows.errors import FraudflowError

__all__ = ["register"]

log = logging.getLogger("fraudflow")


def cmd_simulate(args: argparse.Namespace) -> int:
    from connectors.events import Transaction, label_to_json, transaction_to_json
    from connectors.simulator import Simulation, SimulatorConfig

    try:
        cfg = SimulatorConfig(
            customers=args.customers, terminals=args.terminals, days=args.days, start=args.start,
            seed=args.seed, radius=args.radius, label_delay_days=args.label_delay_days, labels=args.labels,
        )
    except ValueError as exc:
        raise FraudflowError(str(exc)) from None
    prefix = args.out
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    tx_path, label_path = f"{prefix}.transactions.jsonl", f"{prefix}.labels.jsonl"
    import msgspec

    enc = msgspec.json.Encoder()
    sim = Simulation(cfg, keep_truth=True)
    n_tx = n_labels = n_fraud = 0
    started = time.monotonic()
    last_day = -1
    with open(tx_path, "wb") as tx_fh, open(label_path, "wb") as label_fh:
        for event in sim.events():
            if isinstance(event, Transaction):
                tx_fh.write(enc.encode(transaction_to_json(event)) + b"\n")
                n_tx += 1
                truth = sim.truth.pop(event.tx_id)
                if truth.is_fraud:
                    n_fraud += 1
                    sim.truth[event.tx_id] = truth  # kept until its label is written
                day = int((event.event_ts - cfg.start_ts) // 86_400)
                if day != last_day and day % 30 == 0:
                    log.info("simulated day %d/%d (%s transactions)", day, cfg.days, f"{n_tx:,}")
                last_day = day
            else:
                doc = label_to_json(event)
                truth = sim.truth.pop(event.tx_id, None)
                if truth is not None and truth.is_fraud:
                    doc["fraud_scenario"] = truth.scenario
                label_fh.write(enc.encode(doc) + b"\n")
                n_labels += 1
    print(json.dumps({
        "transactions": tx_path, "labels": label_path, "n_transactions": n_tx, "n_labels": n_labels,
        "n_frauds": n_fraud, "fraud_share": round(n_fraud / max(n_tx, 1), 5),
        "seconds": round(time.monotonic() - started, 1),
    }))
    return 0



def register(sub: Any) -> None:
    p = sub.add_parser("simulate", help="write a simulated stream (transactions and labels) as JSONL",
                       description="Generate transactions and their delayed labels with the handbook's simulator "
                                   "and write PREFIX.transactions.jsonl and PREFIX.labels.jsonl (event-time order).")
    p.add_argument("--out", required=True, metavar="PREFIX", help="output path prefix, e.g. data/sim")
    p.add_argument("--customers", type=positive_int, default=5_000, help="cards (default %(default)s)")
    p.add_argument("--terminals", type=positive_int, default=10_000, help="merchants (default %(default)s)")
    p.add_argument("--days", type=positive_int, default=183, help="days to simulate (default %(default)s)")
    p.add_argument("--start", type=iso_date, default=date(2018, 4, 1), help="first day (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--radius", type=float, default=5.0, help="usable terminal radius (default %(default)s)")
    p.add_argument("--label-delay-days", type=float, default=7.0, help="label delay (default %(default)s)")
    p.add_argument("--labels", choices=("all", "frauds"), default="all",
                   help="a label for every transaction, or for frauds only (default %(default)s)")
    p.set_defaults(func=cmd_simulate)
