"""Analysts' rules: a small expression language over a scored transaction, and a rule book.

A rule is data (a JSON/YAML mapping), never code::

    {"id": "big-night", "version": 2, "action": "alert", "enabled": true,
     "when": "amount > 500 and tx_during_night == 1 and score > 0.3",
     "owner": "fraud strategy", "note": "night-time cash-outs, case 1142"}

``when`` is parsed by the recursive-descent parser below into a tree of a handful of node
types, type-checked against the known fields, and compiled into nested closures: there is no
``eval``/``exec`` and no attribute access beyond the fields listed in :data:`FIELDS`.

The language:

* values: numbers (``500``, ``0.3``, ``1e3``), text in single or double quotes, ``true``/``false``
  (for ``extra`` fields);
* fields (:data:`FIELDS`): the transaction's ``amount``, ``account_id``, ``terminal_id``,
  ``currency``, ``tx_id``, ``hour`` (UTC, 0–23) and ``weekday`` (0 = Monday); the model's
  calibrated ``score`` and the shard's alert ``threshold``; every feature the model and its
  reasons use, by the same name (:data:`learners.features.FEATURE_NAMES`, e.g.
  ``acct_nb_tx_1d``, ``term_risk_7d``); the card's amount sums ``acct_sum_amount_1d`` /
  ``_7d`` / ``_30d`` (count times mean of those windows, before this transaction); the card's
  velocity over the hour before it, ``acct_nb_tx_1h`` and ``acct_sum_amount_1h`` (event time,
  not model features: decision 0063); and ``extra.NAME`` for any field beyond the contract
  (missing: every comparison is false);
* arithmetic ``+ - * /`` on numbers (division by zero gives no value: comparisons are false);
* comparisons ``== != < <= > >=``; ``in`` / ``not in`` a list of literals;
* ``and``, ``or``, ``not``, parentheses.

Actions: ``alert`` (review the transaction whatever its score), ``allow`` (no alert for it,
e.g. an allow-listed card; allow wins over everything, as in Stripe Radar), ``tag`` (annotate
its score record with ``tag``, by default the rule id).

>>> from connectors.events import Transaction
>>> from learners.features import FEATURE_NAMES, AccountProfile
>>> rule = parse_rule({"id": "big", "version": 1, "action": "alert",
...                    "when": "amount >= 500 and not (currency in ['GBP', 'CHF'])"})
>>> book = RuleBook([rule, parse_rule({"id": "vip", "version": 1, "action": "allow",
...                                    "when": "account_id in ['c-7']"})])
>>> def features(amount):  # the vector the model scored: amount first (FEATURE_NAMES)
...     return (amount,) + (0.0,) * (len(FEATURE_NAMES) - 1)
>>> book.evaluate(Transaction("t-1", "c-1", 1522541276.0, 640.0, "m-1"), features(640.0), 0.1, 0.5)
Outcome(alert=('big',), allow=(), tags=())
>>> book.evaluate(Transaction("t-2", "c-1", 1522541276.0, 40.0, "m-1"), features(40.0), 0.1, 0.5) is None
True
>>> book.evaluate(Transaction("t-3", "c-7", 1522541276.0, 900.0, "m-1"), features(900.0), 0.1, 0.5)
Outcome(alert=('big',), allow=('vip',), tags=())
>>> parse_rule({"id": "typo", "version": 1, "action": "alert", "when": "amout > 5"})
Traceback (most recent call last):
...
learners.rules.RuleError: rule 'typo': unknown field 'amout' at column 1 (did you mean 'amount'?)
"""

from __future__ import annotations

import difflib
import json
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from learners.features import FEATURE_NAMES, AccountProfile
from learners.messages import NO_LAST_HOUR

__all__ = ["FIELDS", "FIELD_HELP", "Outcome", "Rule", "RuleBook", "RuleError", "parse_expression", "parse_rule",
           "read_rules", "row_of"]

ACTIONS = ("alert", "allow", "tag")
MAX_EXPRESSION = 4096  # characters of ``when``
MAX_DEPTH = 100  # depth of the expression tree (each operator, not, parenthesis is a level)
MAX_LIST = 100_000  # items of one ``in`` list
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}")
_SPEC_KEYS = {"id", "version", "action", "when", "tag", "enabled", "owner", "note"}

NUMBER, TEXT, FLAG, BOOL, ANY = "number", "text", "true/false", "condition", "any"
DAY = 86_400.0


class RuleError(ValueError):
    """A rule that cannot be used: the message names the rule and what is wrong."""


# -- fields ------------------------------------------------------------------------------
# A compiled rule reads one transaction through two arguments: ``tx`` (the Transaction) and
# ``row``, the feature vector followed by the score, the threshold and the card's last hour
# (count, amount): numeric fields are one index into a tuple.
_SCORE = len(FEATURE_NAMES)
_THRESHOLD = _SCORE + 1
_NB_TX_1H = _THRESHOLD + 1
_SUM_AMOUNT_1H = _NB_TX_1H + 1
_WINDOWS = (1, 7, 30)


def row_of(features: tuple, score: float, threshold: float, last_hour: tuple = NO_LAST_HOUR) -> tuple:
    """The ``row`` a compiled rule reads: the model's feature vector, the score, the threshold,
    and the card's last hour ``(count, amount)`` (the velocity fields; decision 0063)."""
    return (*features, score, threshold, *last_hour)


def _index_getter(i: int) -> Callable:
    def get(tx: Any, row: tuple, i: int = i) -> float:
        return row[i]
    return get


def _sum_getter(w: int) -> Callable:
    n, avg = FEATURE_NAMES.index(f"acct_nb_tx_{w}d"), FEATURE_NAMES.index(f"acct_avg_amount_{w}d")

    def get(tx: Any, row: tuple, n: int = n, avg: int = avg) -> float:
        return row[n] * row[avg]
    return get


def _attr_getter(name: str) -> Callable:
    def get(tx: Any, row: tuple, name: str = name) -> Any:
        return getattr(tx, name)
    return get


def _hour(tx: Any, row: tuple) -> float:
    return float(int(tx.event_ts % DAY // 3600))


def _weekday(tx: Any, row: tuple) -> float:
    return float((int(tx.event_ts // DAY) + 3) % 7)  # 1970-01-01 was a Thursday


def _extra_getter(name: str) -> Callable:
    def get(tx: Any, row: tuple, name: str = name) -> Any:
        extra = tx.extra
        return extra.get(name) if extra else None
    return get


_ROW_INDEX = {**{name: i for i, name in enumerate(FEATURE_NAMES)}, "score": _SCORE, "threshold": _THRESHOLD,
              "acct_nb_tx_1h": _NB_TX_1H, "acct_sum_amount_1h": _SUM_AMOUNT_1H}
_GETTERS: dict[str, tuple[str, Callable]] = {
    **{name: (NUMBER, _index_getter(i)) for name, i in _ROW_INDEX.items()},
    "hour": (NUMBER, _hour),
    "weekday": (NUMBER, _weekday),
    **{f"acct_sum_amount_{w}d": (NUMBER, _sum_getter(w)) for w in _WINDOWS},
    **{name: (TEXT, _attr_getter(name)) for name in ("tx_id", "account_id", "terminal_id", "currency")},
}
FIELDS: dict[str, str] = {name: kind for name, (kind, _) in _GETTERS.items()}
"""Every field a rule may name, with its type (``extra.NAME`` aside)."""

_KEPT = AccountProfile.MAX_LAST_HOUR
FIELD_HELP: dict[str, str] = {
    "amount": "the transaction's amount",
    "tx_id": "the transaction's id",
    "account_id": "the card (account) id",
    "terminal_id": "the terminal (merchant) id",
    "currency": "the transaction's currency (EUR when the event has none)",
    "hour": "hour of the transaction, UTC (0-23)",
    "weekday": "day of the week, UTC (0 = Monday)",
    "score": "the model's calibrated score",
    "threshold": "the shard's alert threshold",
    **{f"acct_sum_amount_{w}d": f"the card's amount in the {w} UTC day{'s' if w > 1 else ''} up to this transaction, "
                                f"before it (acct_nb_tx_{w}d * acct_avg_amount_{w}d)" for w in _WINDOWS},
    "acct_nb_tx_1h": f"the card's transactions in the hour before this one (event time, ts - 1 h to ts, both "
                     f"included, itself not); saturates at {_KEPT}; rules only, not a model feature",
    "acct_sum_amount_1h": f"their amount (acct_nb_tx_1h's transactions; above {_KEPT}, the latest {_KEPT}'s); rules "
                          "only, not a model feature",
}
"""A line on each field a rule may name (``fraudflow rules fields``); model features not
listed here are "a model feature, by its reasons name"."""


# -- the expression tree ---------------------------------------------------------------------
@dataclass(frozen=True)
class Literal:
    value: Union[float, str, bool]

    @property
    def kind(self) -> str:
        v = self.value
        return FLAG if isinstance(v, bool) else TEXT if isinstance(v, str) else NUMBER

    def render(self) -> str:
        v = self.value
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return repr(float(v)) if not float(v).is_integer() or abs(v) >= 1e16 else str(int(v))


@dataclass(frozen=True)
class Field:
    name: str

    @property
    def kind(self) -> str:
        return ANY if self.name.startswith("extra.") else FIELDS[self.name]

    def render(self) -> str:
        return self.name


@dataclass(frozen=True)
class Neg:
    operand: Any
    kind = NUMBER

    def render(self) -> str:
        return f"-{_wrap(self.operand, 7)}"


@dataclass(frozen=True)
class Arith:
    op: str  # + - * /
    left: Any
    right: Any
    kind = NUMBER

    def render(self) -> str:
        p = _PRECEDENCE[self.op]
        return f"{_wrap(self.left, p)} {self.op} {_wrap(self.right, p + 1)}"


@dataclass(frozen=True)
class Compare:
    op: str  # == != < <= > >=
    left: Any
    right: Any
    kind = BOOL

    def render(self) -> str:
        return f"{_wrap(self.left, 5)} {self.op} {_wrap(self.right, 5)}"


@dataclass(frozen=True)
class In:
    operand: Any
    items: tuple
    negated: bool = False
    kind = BOOL

    def render(self) -> str:
        items = ", ".join(Literal(v).render() for v in self.items)
        return f"{_wrap(self.operand, 5)} {'not in' if self.negated else 'in'} [{items}]"


@dataclass(frozen=True)
class Not:
    operand: Any
    kind = BOOL

    def render(self) -> str:
        return f"not {_wrap(self.operand, 3)}"


@dataclass(frozen=True)
class Logic:
    op: str  # and | or
    left: Any
    right: Any
    kind = BOOL

    def render(self) -> str:
        p = _PRECEDENCE[self.op]
        return f"{_wrap(self.left, p)} {self.op} {_wrap(self.right, p + 1)}"


_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6}


def _precedence(node: Any) -> int:
    if isinstance(node, (Logic, Arith)):
        return _PRECEDENCE[node.op]
    if isinstance(node, Not):
        return 3
    if isinstance(node, (Compare, In)):
        return 4
    if isinstance(node, Neg):
        return 7
    return 8  # literal, field


def _wrap(node: Any, at_least: int) -> str:
    text = node.render()
    return text if _precedence(node) >= at_least else f"({text})"


# -- the parser --------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    \s*(?:
      (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<text>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
    | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,|\+|-|\*|/)
    )""", re.VERBOSE)
_KEYWORDS = {"and", "or", "not", "in", "true", "false"}
_COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        stripped = text.rstrip()
        while pos < len(stripped):
            m = _TOKEN.match(stripped, pos)
            if m is None or m.end() == pos:
                col = len(stripped) - len(stripped[pos:].lstrip()) + 1
                raise RuleError(f"unexpected character {stripped[col - 1]!r} at column {col}")
            kind = group = m.lastgroup
            value = m.group(group)
            if kind == "name" and value in _KEYWORDS:
                kind = "kw"
            self.tokens.append((kind, value, m.start(group) + 1))
            pos = m.end()
        self.i = 0
        self.depth = 0

    # tokens
    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "", len(self.text) + 1)

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        self.i += 1
        return tok

    def accept(self, value: str) -> bool:
        kind, v, _ = self.peek()
        if kind in ("op", "kw") and v == value:
            self.i += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if not self.accept(value):
            self.fail(f"expected {value!r}")

    def fail(self, what: str) -> None:
        kind, value, col = self.peek()
        found = "the end" if kind == "end" else repr(value)
        raise RuleError(f"{what} at column {col}, found {found}")

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise RuleError(f"expression nested more than {MAX_DEPTH} levels deep")

    # grammar: or > and > not > comparison > sum > product > unary > atom
    def parse(self) -> Any:
        node = self.disjunction()
        if self.peek()[0] != "end":
            self.fail("expected an operator or the end")
        return node

    def disjunction(self) -> Any:
        node = self.conjunction()
        while self.accept("or"):
            node = Logic("or", node, self.conjunction())
        return node

    def conjunction(self) -> Any:
        node = self.negation()
        while self.accept("and"):
            node = Logic("and", node, self.negation())
        return node

    def negation(self) -> Any:
        if self.accept("not"):
            self.deeper()
            node = Not(self.negation())
            self.depth -= 1
            return node
        return self.comparison()

    def comparison(self) -> Any:
        left = self.sum()
        kind, value, _ = self.peek()
        if kind == "op" and value in _COMPARISONS:
            self.take()
            return Compare(value, left, self.sum())
        if self.accept("in"):
            return In(left, self.items())
        if kind == "kw" and value == "not" and self.i + 1 < len(self.tokens) and self.tokens[self.i + 1][1] == "in":
            self.i += 2
            return In(left, self.items(), negated=True)
        return left

    def items(self) -> tuple:
        self.expect("[")
        items: list = []
        while not self.accept("]"):
            items.append(self.literal_value())
            if len(items) > MAX_LIST:
                raise RuleError(f"an 'in' list holds at most {MAX_LIST} items")
            if not self.accept(","):
                self.expect("]")
                break
        return tuple(items)

    def literal_value(self) -> Any:
        negative = self.accept("-")
        kind, value, _ = self.peek()
        if kind == "number":
            self.take()
            return -float(value) if negative else float(value)
        if kind == "text" and not negative:
            self.take()
            return _unquote(value)
        self.fail("expected a number or a quoted text in the list")

    def sum(self) -> Any:
        node = self.product()
        while True:
            kind, value, _ = self.peek()
            if kind == "op" and value in ("+", "-"):
                self.take()
                node = Arith(value, node, self.product())
            else:
                return node

    def product(self) -> Any:
        node = self.unary()
        while True:
            kind, value, _ = self.peek()
            if kind == "op" and value in ("*", "/"):
                self.take()
                node = Arith(value, node, self.unary())
            else:
                return node

    def unary(self) -> Any:
        if self.accept("-"):
            self.deeper()
            node = self.unary()
            self.depth -= 1
            return Literal(-node.value) if type(node) is Literal and node.kind == NUMBER else Neg(node)
        return self.atom()

    def atom(self) -> Any:
        kind, value, col = self.peek()
        if kind == "number":
            self.take()
            number = float(value)
            if not math.isfinite(number):
                raise RuleError(f"number {value} at column {col} is too large")
            return Literal(number)
        if kind == "text":
            self.take()
            return Literal(_unquote(value))
        if kind == "kw" and value in ("true", "false"):
            self.take()
            return Literal(value == "true")
        if kind == "name":
            self.take()
            if not (value in FIELDS or (value.startswith("extra.") and len(value) > 6)):
                close = difflib.get_close_matches(value, list(FIELDS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else " (see `fraudflow rules fields`)"
                raise RuleError(f"unknown field {value!r} at column {col}{hint}")
            return Field(value)
        if self.accept("("):
            self.deeper()
            node = self.disjunction()
            self.depth -= 1
            self.expect(")")
            return node
        self.fail("expected a value, a field or '('")


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def _check(node: Any) -> str:
    """The node's type; a RuleError where types do not fit."""
    t = type(node)
    if t in (Literal, Field):
        return node.kind
    if t is Neg or t is Arith:
        for part in ((node.operand,) if t is Neg else (node.left, node.right)):
            if _check(part) not in (NUMBER, ANY):
                raise RuleError(f"arithmetic needs numbers: {part.render()}")
        return NUMBER
    if t is Compare:
        a, b = _check(node.left), _check(node.right)
        if BOOL in (a, b):
            raise RuleError(f"cannot compare conditions: {node.render()}")
        if ANY not in (a, b) and a != b:
            raise RuleError(f"compares {a} with {b}: {node.render()}")
        if node.op not in ("==", "!=") and (TEXT in (a, b) or FLAG in (a, b)):
            raise RuleError(f"{'text' if TEXT in (a, b) else 'true/false'} can only be compared with == or !=: "
                            f"{node.render()}")
        return BOOL
    if t is In:
        a = _check(node.operand)
        if a == BOOL:
            raise RuleError(f"'in' needs a field or a value on its left: {node.render()}")
        kinds = {Literal(v).kind for v in node.items}
        if a != ANY and kinds - {a}:
            raise RuleError(f"the list holds values of another type than {a}: {node.render()}")
        return BOOL
    for part in ((node.operand,) if t is Not else (node.left, node.right)):
        if _check(part) != BOOL:
            raise RuleError(f"'{'not' if t is Not else node.op}' needs conditions (comparisons): {part.render()}")
    return BOOL


def _children(node: Any) -> tuple:
    t = type(node)
    if t in (Neg, Not, In):
        return (node.operand,)
    if t in (Arith, Compare, Logic):
        return (node.left, node.right)
    return ()


def _depth(tree: Any) -> int:
    """Depth of the tree, without recursion (chains of ``and`` are parsed without it too)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in _children(node))
    return deepest


def parse_expression(text: str) -> Any:
    """The checked tree of a ``when`` expression (a condition), or a RuleError.

    >>> parse_expression("amount>500 and(score>=.9 or term_risk_7d>0.2)").render()
    'amount > 500 and (score >= 0.9 or term_risk_7d > 0.2)'
    >>> parse_expression("amount + 1")
    Traceback (most recent call last):
    ...
    learners.rules.RuleError: the rule must be a condition (a comparison), not a number: amount + 1
    """
    if not isinstance(text, str) or not text.strip():
        raise RuleError("'when' must be a non-empty text")
    if len(text) > MAX_EXPRESSION:
        raise RuleError(f"'when' is longer than {MAX_EXPRESSION} characters")
    tree = _Parser(text).parse()
    if _depth(tree) > MAX_DEPTH:
        raise RuleError(f"expression nested more than {MAX_DEPTH} levels deep (use 'in' lists for long "
                        "alternatives)")
    kind = _check(tree)
    if kind != BOOL:
        raise RuleError(f"the rule must be a condition (a comparison), not a {kind if kind != ANY else 'value'}: "
                        f"{tree.render()}")
    return tree


# -- compiling the tree into closures ---------------------------------------------------------
_COMPARE_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
                ">=": operator.ge}


def _compile(node: Any) -> Callable[[Any, tuple], Any]:
    """``node`` as a function ``(tx, row) -> value``; None stands for "no value" (a missing
    extra field, a division by zero): arithmetic on it gives None, comparisons with it are false."""
    t = type(node)
    if t is Literal:
        value = node.value

        def const(tx: Any, row: tuple) -> Any:
            return value
        return const
    if t is Field:
        return _GETTERS[node.name][1] if node.name in _GETTERS else _extra_getter(node.name[6:])
    if t is Neg:
        inner = _compile(node.operand)

        def neg(tx: Any, row: tuple) -> Any:
            v = inner(tx, row)
            return -v if _is_number(v) else None
        return neg
    if t is Arith:
        return _arith(node.op, _compile(node.left), _compile(node.right))
    if t is Compare:
        return _comparison(node)
    if t is In:
        return _membership(node)
    if t is Not:
        inner = _compile(node.operand)

        def negate(tx: Any, row: tuple) -> bool:
            return not inner(tx, row)
        return negate
    return _chain(node.op, [_compile(part) for part in _operands(node)])


def _operands(node: Logic) -> list:
    """``a and b and c`` (parsed as ``(a and b) and c``) as ``[a, b, c]``."""
    parts: list = []
    stack = [node]
    while stack:
        n = stack.pop()
        if type(n) is Logic and n.op == node.op:
            stack.extend((n.right, n.left))
        else:
            parts.append(n)
    return parts


def _chain(op: str, parts: list) -> Callable:
    """A chain of ``and`` (or ``or``) as nested two-operand closures, short-circuiting left to
    right (one closure per operand measured no slower: decision 0060)."""
    node = parts[0]
    for right in parts[1:]:
        node = _both(node, right) if op == "and" else _either(node, right)
    return node


def _both(a: Callable, b: Callable) -> Callable:
    def both(tx: Any, row: tuple) -> bool:
        return a(tx, row) and b(tx, row)
    return both


def _either(a: Callable, b: Callable) -> Callable:
    def either(tx: Any, row: tuple) -> bool:
        return a(tx, row) or b(tx, row)
    return either


def _is_number(v: Any) -> bool:
    return type(v) is float or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _arith(op: str, left: Callable, right: Callable) -> Callable:
    def apply(tx: Any, row: tuple) -> Any:
        a, b = left(tx, row), right(tx, row)
        if not (_is_number(a) and _is_number(b)):
            return None
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        return a / b if b else None
    return apply


def _may_lack_value(node: Any) -> bool:
    """Whether ``node`` can evaluate to None (an ``extra`` field, a division)."""
    t = type(node)
    if t is Field:
        return node.kind == ANY
    if t is Neg:
        return _may_lack_value(node.operand)
    if t is Arith:
        return node.op == "/" or _may_lack_value(node.left) or _may_lack_value(node.right)
    return False


def _comparison(node: Compare) -> Callable:
    cmp = _COMPARE_OPS[node.op]
    left, right = node.left, node.right
    if not (_may_lack_value(left) or _may_lack_value(right)):
        # Both sides always have a value of the checked type. The commonest shape, a numeric
        # field against a constant, is one closure (no call per side).
        if type(left) is Field and type(right) is Literal and left.name in _ROW_INDEX:
            return _row_vs_constant(node.op, _ROW_INDEX[left.name], right.value)
        a, b = _compile(left), _compile(right)

        def plain(tx: Any, row: tuple) -> bool:
            return cmp(a(tx, row), b(tx, row))
        return plain
    a, b = _compile(left), _compile(right)

    def guarded(tx: Any, row: tuple) -> bool:
        x, y = a(tx, row), b(tx, row)
        if _is_number(x):
            return _is_number(y) and cmp(x, y)
        return type(x) is type(y) and type(x) in (str, bool) and cmp(x, y)
    return guarded


def _row_vs_constant(op: str, i: int, c: float) -> Callable:
    if op == ">":
        def f(tx: Any, row: tuple) -> bool:
            return row[i] > c
    elif op == ">=":
        def f(tx: Any, row: tuple) -> bool:
            return row[i] >= c
    elif op == "<":
        def f(tx: Any, row: tuple) -> bool:
            return row[i] < c
    elif op == "<=":
        def f(tx: Any, row: tuple) -> bool:
            return row[i] <= c
    elif op == "==":
        def f(tx: Any, row: tuple) -> bool:
            return row[i] == c
    else:
        def f(tx: Any, row: tuple) -> bool:
            return row[i] != c
    return f


def _membership(node: In) -> Callable:
    values = frozenset(node.items)
    negated = node.negated
    operand = node.operand
    if type(operand) is Field and operand.name in ("account_id", "terminal_id", "currency", "tx_id"):
        name = operand.name
        if negated:
            def not_listed(tx: Any, row: tuple) -> bool:
                return getattr(tx, name) not in values
            return not_listed

        def listed(tx: Any, row: tuple) -> bool:
            return getattr(tx, name) in values
        return listed
    get = _compile(operand)

    def member(tx: Any, row: tuple) -> bool:
        v = get(tx, row)
        if not (type(v) is str or _is_number(v)):
            return False  # no value (a missing extra field): neither in nor not in the list
        return (v not in values) if negated else (v in values)
    return member


# -- rules -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """One rule, parsed and checked; ``matches(tx, row)`` is its compiled condition."""

    id: str
    version: int
    action: str
    when: str
    tag: str = ""
    enabled: bool = True
    owner: str = ""
    note: str = ""
    matches: Callable[[Any, tuple], bool] = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    # (field, values) when the rule can only match a transaction whose text field is one of
    # the values (``account_id in [...]``, alone or and-ed): the book looks such rules up by
    # the transaction's value instead of running each one (allow-lists cost one dict lookup).
    guard: Optional[tuple[str, frozenset]] = field(default=None, repr=False, compare=False)

    def spec(self) -> dict:
        """The rule as JSON-ready data: ``parse_rule(rule.spec()) == rule``."""
        out: dict[str, Any] = {"id": self.id, "version": self.version, "action": self.action, "when": self.when}
        if self.action == "tag":
            out["tag"] = self.tag
        out["enabled"] = self.enabled
        if self.owner:
            out["owner"] = self.owner
        if self.note:
            out["note"] = self.note
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rule) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash((self.id, self.version))


def parse_rule(spec: Mapping[str, Any]) -> Rule:
    """A checked, compiled :class:`Rule` from its mapping; a RuleError naming it otherwise."""
    if not isinstance(spec, Mapping):
        raise RuleError(f"a rule must be a mapping of id, version, action, when; got {type(spec).__name__}")
    rule_id = spec.get("id")
    if not isinstance(rule_id, str) or not _ID.fullmatch(rule_id):
        raise RuleError(f"rule id {rule_id!r}: expected 1-128 letters, digits or _.:@/- (starting with a letter or "
                        "digit)")
    try:
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise RuleError(f"unknown key {unknown[0]!r} (a rule has {', '.join(sorted(_SPEC_KEYS))})")
        version = spec.get("version")
        if type(version) is not int or version < 1:
            raise RuleError(f"'version' must be a whole number >= 1, got {version!r}")
        action = spec.get("action")
        if action not in ACTIONS:
            raise RuleError(f"'action' must be one of {', '.join(ACTIONS)}, got {action!r}")
        enabled = spec.get("enabled", True)
        if type(enabled) is not bool:
            raise RuleError(f"'enabled' must be true or false, got {enabled!r}")
        texts = {}
        for key in ("tag", "owner", "note"):
            value = spec.get(key, "")
            if not isinstance(value, str) or len(value) > 1024:
                raise RuleError(f"'{key}' must be a text of at most 1024 characters")
            texts[key] = value
        if action != "tag" and texts["tag"]:
            raise RuleError("'tag' is for rules whose action is tag")
        when = spec.get("when")
        tree = parse_expression(when)
    except RuleError as exc:
        raise RuleError(f"rule {rule_id!r}: {exc}") from None
    return Rule(rule_id, version, action, when, texts["tag"] or (rule_id if action == "tag" else ""), enabled,
                texts["owner"], texts["note"], _compile(tree), _guard(tree))


_INDEXED = ("account_id", "terminal_id", "currency")


def _guard(tree: Any) -> Optional[tuple[str, frozenset]]:
    """The text field and values a match requires, if the condition says so at its top."""
    parts = _operands(tree) if type(tree) is Logic and tree.op == "and" else [tree]
    for part in parts:
        if (type(part) is In and not part.negated and type(part.operand) is Field
                and part.operand.name in _INDEXED):
            return part.operand.name, frozenset(part.items)
    return None


def read_rules(path: Union[str, Path]) -> list[Rule]:
    """The rules of a YAML or JSON file: a list of rules, or ``{"rules": [...]}``."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RuleError(f"{path}: not UTF-8 text") from None
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise RuleError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                        f"{str(exc).splitlines()[0]}") from None
    if isinstance(doc, Mapping) and set(doc) == {"rules"}:
        doc = doc["rules"]
    if doc is None:
        return []
    if not isinstance(doc, list):
        raise RuleError(f"{path}: expected a list of rules (or a 'rules' list)")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, spec in enumerate(doc, 1):
        try:
            rule = parse_rule(spec)
        except RuleError as exc:
            raise RuleError(f"{path}, rule {i}: {exc}") from None
        if rule.id in seen:
            raise RuleError(f"{path}, rule {i}: rule {rule.id!r} appears twice")
        seen.add(rule.id)
        rules.append(rule)
    return rules


@dataclass(frozen=True)
class Outcome:
    """What the rules decided for one transaction: the ids of the matching alert and allow
    rules, and the tags of the matching tag rules (each in the book's order)."""

    alert: tuple[str, ...]
    allow: tuple[str, ...]
    tags: tuple[str, ...]


class RuleBook:
    """The rules in force: a rule replaces an older version of itself; evaluation runs the
    enabled ones in the order they were first added.

    >>> book = RuleBook()
    >>> book.put(parse_rule({"id": "r", "version": 2, "action": "tag", "when": "score > 0.5"}))
    True
    >>> book.put(parse_rule({"id": "r", "version": 1, "action": "tag", "when": "score > 0.1"}))  # older
    False
    >>> [r.version for r in book.rules()], len(book)
    ([2], 1)
    >>> RuleBook.from_snapshot(book.snapshot()).rules() == book.rules()
    True
    """

    __slots__ = ("_rules", "_scan", "_lookup", "_count")

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules: dict[str, Rule] = {}
        self._scan: tuple = ()  # (position, matches, action, name) of the rules run on every transaction
        self._lookup: tuple = ()  # (field, {value: ((position, matches, action, name), ...)}) of guarded rules
        self._count = 0
        for rule in rules:
            self.put(rule)

    def put(self, rule: Rule) -> bool:
        held = self._rules.get(rule.id)
        if held is not None and held.version >= rule.version:
            return False
        self._rules[rule.id] = rule
        self._index()
        return True

    def delete(self, rule_id: str) -> bool:
        if self._rules.pop(rule_id, None) is None:
            return False
        self._index()
        return True

    def _index(self) -> None:
        scan: list = []
        tables: dict[str, dict[Any, list]] = {}
        enabled = [r for r in self._rules.values() if r.enabled]
        for position, r in enumerate(enabled):
            entry = (position, r.matches, r.action, r.tag if r.action == "tag" else r.id)
            if r.guard is None:
                scan.append(entry)
                continue
            table = tables.setdefault(r.guard[0], {})
            for value in r.guard[1]:
                table.setdefault(value, []).append(entry)
        self._scan = tuple(scan)
        self._lookup = tuple((name, {v: tuple(entries) for v, entries in table.items()})
                             for name, table in tables.items())
        self._count = len(enabled)

    def get(self, rule_id: str) -> Optional[Rule]:
        return self._rules.get(rule_id)

    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    def __len__(self) -> int:
        return self._count

    def evaluate(self, tx: Any, features: tuple, score: float, threshold: float,
                 last_hour: tuple = NO_LAST_HOUR) -> Optional[Outcome]:
        """The outcome for one scored transaction, or None when no enabled rule matches;
        ``last_hour``: the card's (count, amount) in the hour before it (the velocity fields)."""
        if not self._count:
            return None
        row = (*features, score, threshold, *last_hour)  # row_of, inline
        hits = None
        for entry in self._scan:
            if entry[1](tx, row):
                if hits is None:
                    hits = []
                hits.append(entry)
        for name, table in self._lookup:
            candidates = table.get(getattr(tx, name))
            if candidates:
                for entry in candidates:
                    if entry[1](tx, row):
                        if hits is None:
                            hits = []
                        hits.append(entry)
        if hits is None:
            return None
        if self._lookup:
            hits.sort()  # the book's order
        return Outcome(tuple(e[3] for e in hits if e[2] == "alert"), tuple(e[3] for e in hits if e[2] == "allow"),
                       tuple(e[3] for e in hits if e[2] == "tag"))

    def snapshot(self) -> list[dict]:
        return [rule.spec() for rule in self._rules.values()]

    @classmethod
    def from_snapshot(cls, specs: Iterable[Mapping[str, Any]]) -> "RuleBook":
        return cls(parse_rule(spec) for spec in specs)
