"""The ``fraudflow`` command line: one module per command group, wired here.

    fraudflow simulate --out PREFIX        write a simulated stream as contract JSONL files
    fraudflow replay TX.jsonl LABELS.jsonl run the dataflow on recorded files (backtest)
    fraudflow evaluate SCORES LABELS TX    detection metrics (JSON) and an optional report
    fraudflow investigate ALERTS --labels L simulated analysts answer alerts (:mod:`dataflows.cli.investigate`)
    fraudflow settings                     every FRAUDFLOW_* setting with its default
    fraudflow topics | produce | tail      Kafka housekeeping (:mod:`dataflows.cli.kafka`)
    fraudflow rules check|publish|delete|list  analysts' rules (:mod:`dataflows.cli.rules`)
    fraudflow snapshots ...                the model shards' signed exports (:mod:`dataflows.cli.snapshots`)
    fraudflow state show ACCOUNT           one card's state in the recovery store (:mod:`dataflows.cli.state`)

Errors a user can cause (a missing file, a bad setting, an unreachable broker) are raised as
:class:`dataflows.errors.FraudflowError` anywhere below and printed here as one line, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from dataflows.cli import evaluate, investigate, kafka, replay, rules, settings, simulate, snapshots, state
from dataflows.errors import FraudflowError

__all__ = ["build_parser", "main"]

UserError = FraudflowError  # the name older code and tests use

_COMMAND_GROUPS = (simulate, replay, evaluate, investigate, settings, kafka, rules, snapshots, state)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fraudflow",
        description="Real-time card-fraud detection with a Bytewax dataflow and River online models.",
        epilog="The flow itself runs with `python -m bytewax.run dataflows.fraud:flow`; "
               "its settings are FRAUDFLOW_* variables (`fraudflow settings` lists them).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args) or 0
    except FraudflowError as exc:
        print(f"fraudflow {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
