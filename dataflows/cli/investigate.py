"""``fraudflow investigate``: a simulated team of analysts answers the flow's alerts.

Reads alerts (a JSONL file, or the alerts topic to its end with ``--kafka``), takes up to
``--capacity`` cards a day and answers each ``--delay-hours`` after its alert with the truth of
the simulator's labels file; writes the verdicts (contract ``feedback``) in event-time order
to ``--out`` or the feedback topic. The team is :class:`learners.analysts.AnalystDesk`, the
same one ``fraudflow replay --analysts`` puts inside the loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from typing import Any, Iterator

from dataflows.cli.common import existing_file, positive_hours
from dataflows.errors import FraudflowError

__all__ = ["register"]

log = logging.getLogger("fraudflow")

_PROGRESS_EVERY_S = 5.0


def _alert_lines(path: str) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield lineno, line


def _kafka_alerts(args: argparse.Namespace, settings: Any) -> Iterator[tuple[int, bytes]]:
    """The alerts topic from the beginning to its end (partition EOF on every partition)."""
    from dataflows.cli.kafka import ClientLog, client_config, read_to_end

    config = client_config(settings, args.brokers, ClientLog())
    messages = read_to_end(config, settings.topic_alerts, "FRAUDFLOW_KAFKA_TOPIC_ALERTS", "fraudflow-investigate",
                           args.connect_timeout)
    for n, msg in enumerate(messages, 1):
        yield n, msg.value() or b""


def _produce(args: argparse.Namespace, settings: Any, verdicts: list) -> str:
    from connectors.events import encode, verdict_to_json
    from dataflows.cli.kafka import LINGER_MS, ClientLog, client_config, send_all

    topic = settings.topic_feedback
    if not topic:
        raise FraudflowError("FRAUDFLOW_KAFKA_TOPIC_FEEDBACK is empty: no topic to write the verdicts to")
    config = client_config(settings, args.brokers, ClientLog())
    send_all(config, topic, "FRAUDFLOW_KAFKA_TOPIC_FEEDBACK",
             ((v.account_id.encode(), encode(verdict_to_json(v))) for v in verdicts), args.connect_timeout,
             **{"linger.ms": LINGER_MS})
    return topic


def cmd_investigate(args: argparse.Namespace) -> int:
    import msgspec

    from connectors.events import verdict_to_json
    from connectors.files import write_jsonl
    from learners.analysts import AnalystConfig, AnalystDesk, alert_of, read_frauds

    if args.capacity < 0:
        raise FraudflowError(f"--capacity: must be >= 0, got {args.capacity}")
    if bool(args.alerts) == bool(args.kafka):
        raise FraudflowError("give either an alerts file or --kafka (the alerts topic)")
    if not args.kafka and not args.out:
        raise FraudflowError("--out FILE is needed with an alerts file (with --kafka the verdicts go to the "
                             "feedback topic)")
    settings = None
    if args.kafka:
        from dataflows.cli.kafka import _settings

        settings = _settings()
    desk = AnalystDesk(AnalystConfig(args.capacity, args.delay_hours * 3600.0), read_frauds(args.labels))
    source = _kafka_alerts(args, settings) if args.kafka else _alert_lines(args.alerts)
    where = settings.topic_alerts if args.kafka else args.alerts
    dec = msgspec.json.Decoder()
    bad = 0
    next_report = time.monotonic() + _PROGRESS_EVERY_S
    for n, line in source:
        try:
            desk.receive([alert_of(dec.decode(line))])
        except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            bad += 1
            if bad <= 3:
                log.warning("%s: record %d is not an alert (%s): skipped", where, n, exc)
        if not args.quiet and time.monotonic() >= next_report:
            next_report = time.monotonic() + _PROGRESS_EVERY_S
            print(f"investigate: {desk.counts['alerts']:,} alerts read", file=sys.stderr, flush=True)
    desk.decide(math.inf)
    verdicts = []
    while desk.peek_due() is not None:
        verdicts.append(desk.pop_due())
    targets = []
    if args.kafka:
        targets.append(_produce(args, settings, verdicts))
    if args.out:
        write_jsonl(args.out, (verdict_to_json(v) for v in verdicts))
        targets.append(args.out)
    target = " and ".join(targets)
    skipped = f"; {bad:,} records were not alerts" if bad else ""
    print(f"investigate: {desk.summary()}{skipped}; verdicts written to {target}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"verdicts": len(verdicts), **desk.counts, "cards_per_day": desk.cards_per_day()}))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("investigate", help="simulated analysts answer alerts with verdicts (demos, evaluation)",
                       description="Read alerts (a JSONL file, or the alerts topic to its end with --kafka), take up "
                                   "to --capacity cards a day (event-time day of the alert, first come first served; "
                                   "a card already taken that day or under investigation is left), answer each "
                                   "--delay-hours later with the truth of the simulator's labels file, and write the "
                                   "verdicts (contract feedback) to --out, the feedback topic (--kafka), or both.")
    p.add_argument("alerts", nargs="?", type=existing_file, help="alerts JSONL (from replay --alerts)")
    p.add_argument("--labels", required=True, type=existing_file,
                   help="the simulator's labels JSONL: the truth the analysts find")
    p.add_argument("--out", metavar="FILE",
                   help="write the verdicts here (JSONL); with --kafka too, a copy of what went to the topic")
    p.add_argument("--kafka", action="store_true",
                   help="read the alerts topic, write to the feedback topic (FRAUDFLOW_KAFKA_* settings)")
    p.add_argument("--capacity", type=int, default=100, help="cards a day (default %(default)s)")
    p.add_argument("--delay-hours", type=positive_hours, default=4.0,
                   help="hours from alert to verdict, event time (default %(default)s)")
    p.add_argument("--json", action="store_true", help="also print the counts as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--brokers", help="--kafka: bootstrap servers (default FRAUDFLOW_KAFKA_BROKERS)")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="--kafka: give up when no broker answers within S seconds (default %(default)g)")
    p.set_defaults(func=cmd_investigate)
