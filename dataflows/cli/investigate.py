"""``fraudflow investigate``: a simulated team of analysts answers the flow's alerts.

Reads alerts (a JSONL file, or the alerts topic to its end with ``--kafka``), takes up to
``--capacity`` cards a day and answers each ``--delay-hours`` after its alert with the truth of
the simulator's labels file, for the alerted transaction and the card's others from
``--review-days`` before it up to the verdict (read from ``--transactions``, or the
transactions topic with ``--kafka``); writes the verdicts (contract ``feedback``) in
event-time order to ``--out`` or the feedback topic. The team is
:class:`learners.analysts.AnalystDesk`, the same one ``fraudflow replay --analysts`` puts
inside the loop.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import sys
import time
from typing import Any, Iterator

from dataflows.cli.common import REVIEW_DAYS, existing_file, non_negative_days, positive_hours
from dataflows.errors import FraudflowError

__all__ = ["register"]

log = logging.getLogger("fraudflow")

_PROGRESS_EVERY_S = 5.0


def _jsonl_lines(path: str) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield lineno, line


def _kafka_lines(args: argparse.Namespace, settings: Any, kind: str) -> Iterator[tuple[int, bytes]]:
    """The ``kind`` topic (alerts, transactions) from the beginning to its end (partition EOF
    on every partition)."""
    from dataflows.cli.kafka import ClientLog, client_config, read_to_end

    config = client_config(settings, args.brokers, ClientLog())
    messages = read_to_end(config, getattr(settings, f"topic_{kind}"), f"FRAUDFLOW_KAFKA_TOPIC_{kind.upper()}",
                           "fraudflow-investigate", args.connect_timeout)
    for n, msg in enumerate(messages, 1):
        yield n, msg.value() or b""


def _record_history(desk: Any, cases: list, transactions: Iterator[tuple[int, bytes]], labels_path: str) -> int:
    """Hand the desk what its cases will go over: a card's transactions in the review window
    of one of its alerts, from ``review_s`` before it to its verdict (the rest is not kept), and
    their labels (a transaction charged back before the verdict is not answered). The number of
    transactions recorded."""
    from connectors.events import Label, Transaction

    review_s, delay_s = desk.config.review_s, desk.config.delay_s
    alert_times: dict[str, list[float]] = {}
    for case in cases:
        alert_times.setdefault(case.account_id, []).append(case.ts)
    for times in alert_times.values():
        times.sort()
    recorded = 0
    for tx in _events_of_cards(transactions, alert_times, "transaction"):
        if type(tx) is Transaction:
            times = alert_times[tx.account_id]
            i = bisect.bisect_right(times, tx.event_ts - delay_s)  # the first alert whose verdict comes after it
            if i < len(times) and times[i] - tx.event_ts <= review_s:
                desk.record(tx.account_id, tx.event_ts, tx.tx_id)
                recorded += 1
    for label in _events_of_cards(_jsonl_lines(labels_path), alert_times, "label"):
        if type(label) is Label:
            desk.on_label(label)
    return recorded


def _events_of_cards(lines: Iterator[tuple[int, bytes]], cards: Any, kind: str) -> Iterator[Any]:
    """The events of ``kind`` (or dead letters) of the lines whose account_id is one of
    ``cards``; the others are only glanced at (most lines are on cards without an alert)."""
    import msgspec

    from connectors.events import Origin, parse_record

    class _Account(msgspec.Struct):
        account_id: Any = None

    accounts = msgspec.json.Decoder(_Account)
    for n, line in lines:
        try:
            if accounts.decode(line).account_id not in cards:
                continue
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
            continue
        yield parse_record(line, Origin("investigate", n), kind)


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
    from learners.analysts import DAY, AnalystConfig, AnalystDesk, alert_of, read_frauds

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
    review = args.review_days > 0 and bool(args.kafka or args.transactions)
    if args.review_days > 0 and not review:
        log.warning("no --transactions: the cases answer the alerted transaction only, not the card's others from "
                    "%g days before it", args.review_days)
    config = AnalystConfig(args.capacity, args.delay_hours * 3600.0, args.review_days * DAY if review else 0.0)
    desk = AnalystDesk(config, read_frauds(args.labels))
    source = _kafka_lines(args, settings, "alerts") if args.kafka else _jsonl_lines(args.alerts)
    where = settings.topic_alerts if args.kafka else args.alerts
    dec = msgspec.json.Decoder()
    bad = 0
    cases = []
    next_report = time.monotonic() + _PROGRESS_EVERY_S
    for n, line in source:
        try:
            cases.append(alert_of(dec.decode(line)))
        except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            bad += 1
            if bad <= 3:
                log.warning("%s: record %d is not an alert (%s): skipped", where, n, exc)
        if not args.quiet and time.monotonic() >= next_report:
            next_report = time.monotonic() + _PROGRESS_EVERY_S
            print(f"investigate: {len(cases):,} alerts read", file=sys.stderr, flush=True)
    if review:
        history = _kafka_lines(args, settings, "transactions") if args.kafka else _jsonl_lines(args.transactions)
        recorded = _record_history(desk, cases, history, args.labels)
        log.info("%s transactions of the alerted cards' review windows read", f"{recorded:,}")
    desk.receive(cases)
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
                                   "--delay-hours later with the truth of the simulator's labels file (the alerted "
                                   "transaction and the card's others from --review-days before it up to the "
                                   "verdict), and write the verdicts (contract feedback) to --out, the feedback topic "
                                   "(--kafka), or both.")
    p.add_argument("alerts", nargs="?", type=existing_file, help="alerts JSONL (from replay --alerts)")
    p.add_argument("--labels", required=True, type=existing_file,
                   help="the simulator's labels JSONL: the truth the analysts find")
    p.add_argument("--out", metavar="FILE",
                   help="write the verdicts here (JSONL); with --kafka too, a copy of what went to the topic")
    p.add_argument("--kafka", action="store_true",
                   help="read the alerts topic (and, for --review-days, the transactions topic), write to the "
                        "feedback topic (FRAUDFLOW_KAFKA_* settings)")
    p.add_argument("--capacity", type=int, default=100, help="cards a day (default %(default)s)")
    p.add_argument("--delay-hours", type=positive_hours, default=4.0,
                   help="hours from alert to verdict, event time (default %(default)s)")
    p.add_argument("--review-days", type=non_negative_days, default=REVIEW_DAYS, metavar="D",
                   help="a case also answers the card's other transactions from D days before the alert up to "
                        "the verdict, each once (default %(default)g; 0: the alerted transaction only). Needs the "
                        "transactions: --transactions, or the transactions topic with --kafka")
    p.add_argument("--transactions", type=existing_file, metavar="FILE",
                   help="transactions JSONL (from simulate): the cards' history the cases go over")
    p.add_argument("--json", action="store_true", help="also print the counts as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("--brokers", help="--kafka: bootstrap servers (default FRAUDFLOW_KAFKA_BROKERS)")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="--kafka: give up when no broker answers within S seconds (default %(default)g)")
    p.set_defaults(func=cmd_investigate)
