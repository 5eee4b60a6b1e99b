"""``fraudflow rules``: the analysts' rules (:mod:`learners.rules`) and the rules topic.

    fraudflow rules check FILE        parse a YAML/JSON rules file: each rule, or what is wrong (exit 1)
    fraudflow rules fields            the fields a rule's ``when`` may name
    fraudflow rules test FILE ...     backtest: what each rule would have raised on recorded traffic
    fraudflow rules publish FILE      every rule of FILE to the rules topic, keyed by its id
    fraudflow rules delete ID         a tombstone for ID: the flow drops the rule
    fraudflow rules list              the rules in force: the topic read to its end, as the flow reads it

A running flow applies what is published from the moment it reads it, on every model shard,
without a restart (decision 0055); a rule replaces only an older version of itself, so
``publish`` needs a higher ``version`` to change a rule. Brokers and client options are the
flow's (``FRAUDFLOW_KAFKA_BROKERS``, ``FRAUDFLOW_KAFKA_OPT_*``), the topic is
``FRAUDFLOW_KAFKA_TOPIC_RULES``.

Each subcommand is one ``_add_*`` function of the ``rules`` group's subparsers
(:data:`SUBCOMMANDS`); ``rules test``, the backtest, lives in :mod:`dataflows.cli.backtest`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Optional

from dataflows.cli.backtest import add_test_command
from dataflows.cli.common import existing_file
from dataflows.cli.kafka import ClientLog, _client_args, _settings, client_config, read_to_end, send_all
from dataflows.errors import FraudflowError

__all__ = ["SUBCOMMANDS", "register"]


def _read(path: str) -> list:
    from learners.rules import RuleError, read_rules

    try:
        return read_rules(path)
    except RuleError as exc:
        raise FraudflowError(str(exc)) from None


def _line(rule: Any) -> str:
    state = "" if rule.enabled else "  (disabled)"
    tag = f" -> tag {rule.tag!r}" if rule.action == "tag" else ""
    owner = f"  [{rule.owner}]" if rule.owner else ""
    return f"{rule.id:24s} v{rule.version:<4d} {rule.action:5s}{tag}  when {rule.when}{owner}{state}"


# -- check, fields ----------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    from learners.rules import RuleError, read_rules

    try:
        rules = read_rules(args.file)
    except RuleError as exc:
        print(f"fraudflow rules check: {exc}", file=sys.stderr)
        return 1
    for rule in rules:
        print(_line(rule))
    print(f"{len(rules)} rules OK ({sum(r.enabled for r in rules)} enabled)", file=sys.stderr)
    return 0


def _add_check(actions: Any) -> None:
    p = actions.add_parser("check", help="parse a rules file: print each rule, or what is wrong (exit 1)",
                           description="Parse and type-check every rule of a YAML or JSON file (a list of rules, or "
                                       "{rules: [...]}); nothing is published.")
    p.add_argument("file", type=existing_file, help="rules file (.yaml, .yml or .json)")
    p.set_defaults(func=cmd_check)


def cmd_fields(args: argparse.Namespace) -> int:
    from learners.rules import FIELD_HELP, FIELDS

    for name, kind in FIELDS.items():
        print(f"{name:38s} {kind:7s} {FIELD_HELP.get(name, 'a model feature, by the name its reasons use')}")
    print(f"{'extra.NAME':38s} {'any':7s} a field beyond the event contract (missing: every comparison is false)")
    return 0


def _add_fields(actions: Any) -> None:
    p = actions.add_parser("fields", help="the fields a rule may name, with their types and what they are")
    p.set_defaults(func=cmd_fields)


# -- publish, delete ----------------------------------------------------------------------------
def _send(args: argparse.Namespace, messages: list[tuple[bytes, Optional[bytes]]]) -> str:
    """Messages to the rules topic, every delivery confirmed; the topic's name."""
    kafka = _settings()
    if not kafka.topic_rules:
        raise FraudflowError("no rules topic: FRAUDFLOW_KAFKA_TOPIC_RULES is empty")
    config = client_config(kafka, args.brokers, ClientLog())
    send_all(config, kafka.topic_rules, "FRAUDFLOW_KAFKA_TOPIC_RULES", messages, args.connect_timeout,
             flush_timeout_s=max(10.0, args.connect_timeout))
    return kafka.topic_rules


def cmd_publish(args: argparse.Namespace) -> int:
    rules = _read(args.file)
    topic = _send(args, [(r.id.encode(), json.dumps(r.spec()).encode()) for r in rules])
    for rule in rules:
        print(f"published {_line(rule)}")
    print(f"{len(rules)} rules published to {topic}; a running flow applies each one newer than the version it "
          "holds", file=sys.stderr)
    return 0


def _add_publish(actions: Any) -> None:
    p = actions.add_parser("publish", help="publish the rules of a file to the rules topic",
                           description="Check every rule of FILE, then produce each to the rules topic keyed by its "
                                       "id. A running flow applies a rule whose version is newer than the one it holds.")
    p.add_argument("file", type=existing_file, help="rules file (.yaml, .yml or .json)")
    _client_args(p)
    p.set_defaults(func=cmd_publish)


def cmd_delete(args: argparse.Namespace) -> int:
    topic = _send(args, [(rule_id.encode(), None) for rule_id in args.ids])
    for rule_id in args.ids:
        print(f"deleted {rule_id} (a tombstone on {topic})")
    return 0


def _add_delete(actions: Any) -> None:
    p = actions.add_parser("delete", help="delete rules (a tombstone per id on the rules topic)")
    p.add_argument("ids", nargs="+", metavar="ID", help="rule id")
    _client_args(p)
    p.set_defaults(func=cmd_delete)


# -- list -------------------------------------------------------------------------------------
def read_rules_topic(config: dict[str, Any], topic: str, timeout_s: float, idle_s: float = 5.0) -> tuple[Any, list]:
    """The rule book the topic makes, read to its end (partition EOF) exactly as the flow applies
    it, and the records it refused as ``(origin, reason)``."""
    from connectors.events import DeadLetter, Origin
    from learners.messages import RuleUpdate
    from learners.stages import RulesStage, rule_update

    stage = RulesStage()
    refused: list = []
    for msg in read_to_end(config, topic, "FRAUDFLOW_KAFKA_TOPIC_RULES", "fraudflow-rules", timeout_s, idle_s):
        update = rule_update(msg.key(), msg.value(), Origin(topic, msg.offset(), msg.partition()))
        if type(update) is RuleUpdate:
            stage.on_batch([update])
        elif type(update) is DeadLetter:
            refused.append((update.origin.as_dict(), update.reason))
    return stage.book, refused


def cmd_list(args: argparse.Namespace) -> int:
    settings = _settings()
    topic = settings.topic_rules
    if not topic:
        raise FraudflowError("no rules topic: FRAUDFLOW_KAFKA_TOPIC_RULES is empty")
    config = client_config(settings, args.brokers, ClientLog())
    book, refused = read_rules_topic(config, topic, args.connect_timeout)
    rules = book.rules()
    if args.json:
        print(json.dumps({"rules": [r.spec() for r in rules],
                          "refused": [{"origin": o, "reason": r} for o, r in refused]}))
        return 0
    print(f"{'ID':24s} {'VER':5s} {'ACTION':6s} {'ENABLED':8s} {'OWNER':16s} WHEN")
    for r in rules:
        print(f"{r.id:24s} {r.version:<5d} {r.action:6s} {'yes' if r.enabled else 'no':8s} {r.owner[:16]:16s} {r.when}")
    print(f"{len(rules)} rules on {topic} ({len(book)} enabled)"
          + (f"; {len(refused)} bad records refused (the flow dead-letters them)" if refused else ""),
          file=sys.stderr)
    for origin, reason in refused[-5:]:
        print(f"  refused at offset {origin.get('offset')}: {reason}", file=sys.stderr)
    return 0


def _add_list(actions: Any) -> None:
    p = actions.add_parser("list", help="the rules in force: the rules topic read to its end",
                           description="Read the rules topic from its start to its end and show the rules a flow "
                                       "that read it holds (id, version, action, enabled, owner, when).")
    p.add_argument("--json", action="store_true", help="the rules' specs as JSON")
    _client_args(p)
    p.set_defaults(func=cmd_list)


SUBCOMMANDS: list[Callable[[Any], None]] = [_add_check, _add_fields, add_test_command, _add_publish, _add_delete,
                                            _add_list]
"""One function per ``fraudflow rules`` subcommand, each adding its parser to the group's subparsers."""


def register(sub: Any) -> None:
    p = sub.add_parser("rules", help="analysts' rules: check, test (backtest), publish, delete, list",
                       description="Rules over scored transactions (alert, allow, tag), applied by every model "
                                   "shard of a running flow from the rules topic without a restart.")
    actions = p.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    for add in SUBCOMMANDS:
        add(actions)
