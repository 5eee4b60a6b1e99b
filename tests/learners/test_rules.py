"""The rule language: parser, every operator, errors, and a round trip of random rules."""

from __future__ import annotations

import json
import math
import operator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.events import Transaction
from learners.features import FEATURE_NAMES
from learners.rules import (FIELDS, MAX_DEPTH, Arith, Compare, Field, In, Literal, Logic, Neg, Not, Outcome, RuleBook,
                            RuleError, parse_expression, parse_rule, read_rules)

TS = 1522541276.0  # Sunday 2018-04-01 00:07:56Z


def tx(amount=50.0, account="c-1", terminal="m-1", currency="EUR", ts=TS, extra=None):
    return Transaction("t-1", account, ts, amount, terminal, currency, extra)


def row_of(amount=50.0, **features):
    values = [0.0] * len(FEATURE_NAMES)
    values[0] = amount
    for name, value in features.items():
        values[FEATURE_NAMES.index(name)] = value
    return tuple(values)


def holds(when, t=None, features=None, score=0.2, threshold=0.5):
    rule = parse_rule({"id": "r", "version": 1, "action": "alert", "when": when})
    t = t or tx()
    return bool(rule.matches(t, (*(features or row_of(t.amount)), score, threshold)))


# -- operators ----------------------------------------------------------------------------
@pytest.mark.parametrize("when, expected", [
    ("amount == 50", True), ("amount != 50", False), ("amount < 50", False), ("amount <= 50", True),
    ("amount > 49.5", True), ("amount >= 50.01", False),
    ("50 <= amount", True),  # constant on the left
    ("amount + 10 == 60", True), ("amount - 60 < 0", True), ("amount * 2 == 100", True), ("amount / 4 == 12.5", True),
    ("-amount == -50", True), ("amount - -5 == 55", True), ("2 + 3 * 4 == 14", True), ("(2 + 3) * 4 == 20", True),
    ("amount / 0 > 0", False), ("amount / 0 <= 0", False),  # no value: every comparison is false
    ("account_id == 'c-1'", True), ('account_id == "c-2"', False), ("account_id != 'c-2'", True),
    ("account_id in ['c-1', 'c-9']", True), ("account_id not in ['c-1']", False), ("terminal_id in []", False),
    ("currency == 'EUR'", True), ("amount in [10, 50]", True), ("amount not in [10, -50]", True),
    ("amount > 10 and amount < 20", False), ("amount > 10 or amount < 20", True), ("not amount > 10", False),
    ("not not amount > 10", True), ("amount > 100 or account_id == 'c-1' and currency == 'GBP'", False),  # and first
    ("(amount > 100 or account_id == 'c-1') and currency == 'EUR'", True),
    ("score > 0.1 and threshold == 0.5", True), ("hour == 0", True), ("weekday == 6", True),  # Sunday
    ("tx_during_weekend == 1", False),  # features read the vector (zeros here)
    ("extra.mcc == '5411'", False), ("extra.mcc != '5411'", False),  # missing extra: no value, false either way
    ("extra.mcc in ['5411']", False), ("extra.mcc not in ['5411']", False),
])
def test_operators(when, expected):
    assert holds(when) is expected


def test_extra_fields_and_derived_aggregates():
    t = tx(extra={"mcc": "5411", "channel_risk": 3, "flag": True})
    assert holds("extra.mcc == '5411'", t) and holds("extra.mcc in ['6011', '5411']", t)
    assert holds("extra.channel_risk * 2 > 5", t) and not holds("extra.channel_risk == '3'", t)
    assert not holds("extra.flag == 1", t)  # a JSON true is not a number
    assert holds("extra.flag == true", t) and not holds("extra.flag != true", t) and not holds("extra.mcc == true", t)
    assert not holds("extra.mcc > 5", t)  # text against a number: false, never an exception
    features = row_of(50.0, acct_nb_tx_1d=4.0, acct_avg_amount_1d=20.25, acct_nb_tx_7d=10.0, acct_avg_amount_7d=3.0)
    assert holds("acct_sum_amount_1d == 81", features=features)
    assert holds("acct_sum_amount_7d == 30 and acct_nb_tx_1d >= 4", features=features)
    assert holds("score >= 0.9", score=0.95) and not holds("score >= 0.9", score=0.5)
    assert not holds("term_risk_7d > 0", features=row_of(50.0, term_risk_7d=math.nan))  # NaN compares false


# -- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("when, message", [
    ("amout > 5", "unknown field 'amout' at column 1 (did you mean 'amount'?)"),
    ("amount >", "expected a value, a field or '(' at column 9, found the end"),
    ("amount > 5 5", "expected an operator or the end at column 12, found '5'"),
    ("amount ~ 5", "unexpected character '~' at column 8"),
    ("(amount > 5", "expected ')' at column 12"),
    ("amount + 1", "must be a condition (a comparison), not a number"),
    ("account_id", "must be a condition"),
    ("account_id > 'c'", "text can only be compared with == or !="),
    ("extra.flag > true", "true/false can only be compared with == or !="),
    ("amount == true", "compares number with true/false"),
    ("account_id == 5", "compares text with number"),
    ("amount in ['a']", "the list holds values of another type than number"),
    ("amount > 5 and 3", "'and' needs conditions"),
    ("not amount", "'not' needs conditions"),
    ("(amount > 1) == (amount > 2)", "cannot compare conditions"),
    ("account_id + 1 > 2", "arithmetic needs numbers"),
    ("amount in [", "expected a number or a quoted text in the list"),
    ("amount > 1e999", "is too large"),
    ("", "'when' must be a non-empty text"),
    ("(" * 200 + "amount > 1" + ")" * 200, "nested more than"),
    (" and ".join(["amount > 1"] * (MAX_DEPTH + 5)), "nested more than"),
    ("amount > 1 or " * 500 + "amount > 1", "longer than 4096 characters"),
    ("__import__('os') == 1", "unknown field '__import__'"),
    ("amount.__class__ == 1", "unknown field 'amount.__class__'"),
])
def test_bad_expressions_are_errors_that_say_why(when, message):
    with pytest.raises(RuleError) as err:
        parse_rule({"id": "bad-1", "version": 1, "action": "alert", "when": when})
    assert str(err.value).startswith("rule 'bad-1': ") and message in str(err.value), str(err.value)


@pytest.mark.parametrize("spec, message", [
    ({"version": 1, "action": "alert", "when": "amount > 1"}, "rule id None"),
    ({"id": "has space", "version": 1, "action": "alert", "when": "amount > 1"}, "rule id 'has space'"),
    ({"id": "r", "version": 0, "action": "alert", "when": "amount > 1"}, "'version' must be a whole number >= 1"),
    ({"id": "r", "version": True, "action": "alert", "when": "amount > 1"}, "'version' must be"),
    ({"id": "r", "version": "2", "action": "alert", "when": "amount > 1"}, "'version' must be"),
    ({"id": "r", "version": 1, "action": "block", "when": "amount > 1"}, "'action' must be one of alert, allow, tag"),
    ({"id": "r", "version": 1, "action": "alert", "when": "amount > 1", "enabeld": False}, "unknown key 'enabeld'"),
    ({"id": "r", "version": 1, "action": "alert", "when": "amount > 1", "enabled": "no"}, "'enabled' must be"),
    ({"id": "r", "version": 1, "action": "alert", "when": "amount > 1", "tag": "x"}, "'tag' is for rules"),
    ({"id": "r", "version": 1, "action": "alert"}, "'when' must be a non-empty text"),
    ({"id": "r", "version": 1, "action": "alert", "when": 5}, "'when' must be a non-empty text"),
    (["not", "a", "mapping"], "a rule must be a mapping"),
])
def test_bad_specs(spec, message):
    with pytest.raises(RuleError, match=None) as err:
        parse_rule(spec)
    assert message in str(err.value), str(err.value)


def test_read_rules_files(tmp_path):
    good = tmp_path / "rules.yaml"
    good.write_text("rules:\n"
                    "  - {id: big, version: 1, action: alert, when: 'amount > 500', owner: strategy}\n"
                    "  - id: quiet\n    version: 3\n    action: tag\n    tag: quiet-hours\n    when: hour < 6\n")
    rules = read_rules(good)
    assert [(r.id, r.version, r.action, r.tag) for r in rules] == [("big", 1, "alert", ""), ("quiet", 3, "tag",
                                                                                              "quiet-hours")]
    as_json = tmp_path / "rules.json"
    as_json.write_text(json.dumps([r.spec() for r in rules]))
    assert read_rules(as_json) == rules
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps([rules[0].spec(), rules[0].spec()]))
    with pytest.raises(RuleError, match="rule 2: rule 'big' appears twice"):
        read_rules(twice)
    broken = tmp_path / "broken.yaml"
    broken.write_text("- {id: big, version: 1, action: alert, when: 'amount >'}\n")
    with pytest.raises(RuleError, match=r"broken.yaml, rule 1: rule 'big': expected a value"):
        read_rules(broken)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RuleError, match="not valid JSON"):
        read_rules(tmp_path / "bad.json")
    with pytest.raises(RuleError, match="No such file"):
        read_rules(tmp_path / "missing.yaml")


# -- the book -----------------------------------------------------------------------------
def test_book_versions_actions_and_snapshot():
    book = RuleBook()
    assert book.evaluate(tx(), row_of(), 0.9, 0.5) is None and len(book) == 0
    book.put(parse_rule({"id": "big", "version": 1, "action": "alert", "when": "amount > 100"}))
    book.put(parse_rule({"id": "vip", "version": 1, "action": "allow", "when": "account_id in ['c-1']"}))
    book.put(parse_rule({"id": "night", "version": 1, "action": "tag", "tag": "night", "when": "hour < 6"}))
    book.put(parse_rule({"id": "off", "version": 1, "action": "alert", "when": "amount > 0", "enabled": False}))
    assert len(book) == 3 and [r.id for r in book.rules()] == ["big", "vip", "night", "off"]
    assert book.evaluate(tx(500.0), row_of(500.0), 0.1, 0.5) == Outcome(("big",), ("vip",), ("night",))
    assert book.evaluate(tx(5.0, account="c-2", ts=TS + 8 * 3600), row_of(5.0), 0.1, 0.5) is None
    # a newer version replaces, an older or equal one is ignored (replays are idempotent)
    assert book.put(parse_rule({"id": "big", "version": 2, "action": "alert", "when": "amount > 1000"}))
    assert not book.put(parse_rule({"id": "big", "version": 2, "action": "alert", "when": "amount > 1"}))
    assert book.evaluate(tx(500.0, account="c-2", ts=TS + 8 * 3600), row_of(500.0), 0.1, 0.5) is None
    assert book.get("big").version == 2
    restored = RuleBook.from_snapshot(json.loads(json.dumps(book.snapshot())))
    assert restored.rules() == book.rules() and len(restored) == 3
    assert restored.evaluate(tx(5000.0), row_of(5000.0), 0.1, 0.5) == Outcome(("big",), ("vip",), ("night",))
    assert book.delete("vip") and not book.delete("vip")
    assert book.evaluate(tx(5000.0), row_of(5000.0), 0.1, 0.5) == Outcome(("big",), (), ("night",))


# -- a round trip of random rules -----------------------------------------------------------
NUMERIC = sorted(n for n, k in FIELDS.items() if k == "number")
TEXTS = ["account_id", "terminal_id", "currency"]
numbers = st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 3))
words = st.text("abc-' \\\"é", max_size=6)


def arith(depth):
    leaf = st.one_of(numbers.map(Literal), st.sampled_from(NUMERIC).map(Field))
    if depth == 0:
        return leaf
    sub = arith(depth - 1)
    return st.one_of(leaf, st.builds(Neg, st.sampled_from(NUMERIC).map(Field)),
                     st.builds(Arith, st.sampled_from(["+", "-", "*", "/"]), sub, sub))


def condition(depth):
    text_cmp = st.builds(Compare, st.sampled_from(["==", "!="]), st.sampled_from(TEXTS).map(Field), words.map(Literal))
    leaf = st.one_of(
        st.builds(Compare, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), arith(1), arith(1)),
        text_cmp,
        st.builds(In, st.sampled_from(TEXTS).map(Field), st.lists(words, max_size=3).map(tuple), st.booleans()),
        st.builds(In, arith(1), st.lists(numbers, max_size=3).map(tuple), st.booleans()),
    )
    if depth == 0:
        return leaf
    sub = condition(depth - 1)
    return st.one_of(leaf, st.builds(Not, sub), st.builds(Logic, st.sampled_from(["and", "or"]), sub, sub))


def canonical(node):
    """The tree the parser gives for ``node``'s text: a minus sign on a number literal is
    part of the literal."""
    if type(node) is Neg and type(node.operand) is Literal:
        return Literal(-node.operand.value)
    if type(node) is Neg:
        return Neg(canonical(node.operand))
    if type(node) in (Arith, Compare, Logic):
        return type(node)(node.op, canonical(node.left), canonical(node.right))
    if type(node) is Not:
        return Not(canonical(node.operand))
    if type(node) is In:
        return In(canonical(node.operand), node.items, node.negated)
    return node


_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
        ">=": operator.ge}


def reference(node, t, row):
    """A plain interpreter of the tree (None: no value), against which the compiled rule is checked."""
    k = type(node)
    if k is Literal:
        return node.value
    if k is Field:
        name = node.name
        if name in FEATURE_NAMES:
            return row[FEATURE_NAMES.index(name)]
        after = {"score": 0, "threshold": 1, "acct_nb_tx_1h": 2, "acct_sum_amount_1h": 3}  # the row's tail
        if name in after:
            return row[len(FEATURE_NAMES) + after[name]]
        if name.startswith("acct_sum_amount_"):
            w = name.rsplit("_", 1)[1]
            return row[FEATURE_NAMES.index(f"acct_nb_tx_{w}")] * row[FEATURE_NAMES.index(f"acct_avg_amount_{w}")]
        seconds = int(t.event_ts) % 86_400
        derived = {"hour": seconds // 3600,
                   "weekday": (int(t.event_ts) // 86_400 + 3) % 7}
        return derived[name] if name in derived else getattr(t, name)
    if k is Neg:
        v = reference(node.operand, t, row)
        return None if v is None else -v
    if k is Arith:
        a, b = reference(node.left, t, row), reference(node.right, t, row)
        if a is None or b is None:
            return None
        return {"+": a + b, "-": a - b, "*": a * b}[node.op] if node.op != "/" else (a / b if b else None)
    if k is Compare:
        a, b = reference(node.left, t, row), reference(node.right, t, row)
        return a is not None and b is not None and _OPS[node.op](a, b)
    if k is In:
        v = reference(node.operand, t, row)
        return v is not None and ((v not in node.items) if node.negated else (v in node.items))
    if k is Not:
        return not reference(node.operand, t, row)
    a = reference(node.left, t, row)
    return (a and reference(node.right, t, row)) if node.op == "and" else (a or reference(node.right, t, row))


@settings(max_examples=300, deadline=None)
@given(tree=condition(2), values=st.lists(numbers, min_size=len(FEATURE_NAMES) + 4, max_size=len(FEATURE_NAMES) + 4),
       account=words)
def test_random_rules_round_trip_and_evaluate_like_the_tree(tree, values, account):
    text = tree.render()
    parsed = parse_expression(text)
    assert parsed == canonical(tree), text
    assert parse_expression(parsed.render()).render() == parsed.render()
    rule = parse_rule({"id": "r", "version": 1, "action": "alert", "when": text})
    t = tx(amount=values[0], account=account)
    row = tuple(values)
    assert bool(rule.matches(t, row)) == bool(reference(parsed, t, row)), text
    assert parse_rule(rule.spec()) == rule


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_a_rule_or_a_rule_error(text):
    try:
        parse_rule({"id": "r", "version": 1, "action": "alert", "when": text})
    except RuleError:
        pass


guarded = st.builds(lambda field, items, rest: Logic("and", In(Field(field), tuple(items)), rest) if rest else
                    In(Field(field), tuple(items)),
                    st.sampled_from(TEXTS), st.lists(st.sampled_from(["c-1", "c-2", "m-1", "EUR", "GBP"]), max_size=3),
                    st.one_of(st.none(), condition(0)))


@settings(max_examples=200, deadline=None)
@given(trees=st.lists(st.tuples(st.one_of(guarded, condition(1)), st.sampled_from(["alert", "allow", "tag"]),
                                st.booleans()), max_size=8),
       values=st.lists(numbers, min_size=len(FEATURE_NAMES) + 4, max_size=len(FEATURE_NAMES) + 4),
       account=st.sampled_from(["c-1", "c-2", "c-3"]))
def test_the_book_gives_what_each_rule_says_in_its_order(trees, values, account):
    """Rules looked up by account, terminal or currency (guards) give the same outcome, in the
    same order, as running every rule."""
    rules = [parse_rule({"id": f"r{i}", "version": 1, "action": action, "when": tree.render(), "enabled": on})
             for i, (tree, action, on) in enumerate(trees)]
    book = RuleBook(rules)
    t = tx(amount=values[0], account=account)
    row = tuple(values)
    hits = [r for r in rules if r.enabled and r.matches(t, row)]
    expected = Outcome(tuple(r.id for r in hits if r.action == "alert"), tuple(r.id for r in hits if r.action == "allow"),
                       tuple(r.tag for r in hits if r.action == "tag")) if hits else None
    assert book.evaluate(t, row[:-4], row[-4], row[-3], row[-2:]) == expected
    assert len(book) == sum(r.enabled for r in rules)
