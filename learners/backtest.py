"""Backtesting rules on recorded traffic, before anyone turns them on.

For each rule: how many alerts it would have raised per day (after the flow's per-card
cool-down), on how many cards, how many of them were frauds (precision against the labels),
and how many the model alerted anyway (overlap). For an ``allow`` rule the interesting
numbers are the model alerts it would have suppressed and the frauds among them.

The features a rule reads are recomputed by the flow's own account and terminal stages
(:mod:`learners.stages`) over the recorded transactions and labels, in the flow's order, so a
rule sees what it would have seen live (the card's last hour too: ``acct_nb_tx_1h``,
``acct_sum_amount_1h``); the score is the recorded one (``replay --scores``).

>>> from connectors.events import Transaction
>>> from learners.rules import parse_rule
>>> rule = parse_rule({"id": "big", "version": 1, "action": "alert", "when": "amount > 100"})
>>> t = [Transaction(f"t-{i}", "c-1", 1522540800.0 + i * 7200, a, "m-1") for i, a in enumerate([50, 150, 700])]
>>> vectors = [(x.amount,) + (0.0,) * 28 for x in t]  # amount first, as in FEATURE_NAMES
>>> result = backtest([rule], list(zip(t, vectors)), {"t-0": 0.9}, frauds={"t-2"},
...                   model_alerts={"t-0"}, cooldown_s=0)
>>> stats = result.rules["big"]
>>> stats.alerts, stats.frauds, stats.precision, stats.overlap
(2, 1, 0.5, 0)
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Iterable, Iterator, Optional, Sequence

from connectors.events import DeadLetter, Label, Transaction
from learners.messages import FeaturedTransaction, JoinedLabel
from learners.rules import Rule, row_of
from learners.stages import AccountStage, PipelineConfig, TerminalStage

__all__ = ["Backtest", "RuleStats", "backtest", "featured"]

log = logging.getLogger(__name__)

DAY = 86_400.0
_EPOCH = date(1970, 1, 1)


def featured(events: Iterable[Any], config: PipelineConfig = PipelineConfig()
             ) -> Iterator[tuple[Transaction, tuple, tuple]]:
    """``(transaction, feature vector, last hour)`` for each transaction of an event-time
    ordered stream of transactions and labels, computed by the flow's account and terminal
    stages (``last hour``: the card's count and amount, the rules' velocity fields)."""
    accounts: dict[str, AccountStage] = {}
    terminals: dict[str, TerminalStage] = {}
    for event in events:
        if type(event) not in (Transaction, Label):
            continue  # dead letters of the reader: the flow would not have seen them either
        stage = accounts.get(event.account_id)
        if stage is None:
            stage = accounts[event.account_id] = AccountStage(config)
        for m in stage.on_batch([(0, event)]):
            kind = type(m)
            if kind is FeaturedTransaction or (kind is JoinedLabel and m.is_fraud):
                key = m.tx.terminal_id if kind is FeaturedTransaction else m.terminal_id
                terminal = terminals.get(key)
                if terminal is None:
                    terminal = terminals[key] = TerminalStage(config)
                for t in terminal.on_batch([m]):
                    if type(t) is FeaturedTransaction:
                        yield t.tx, t.features, t.last_hour
            elif kind is DeadLetter:
                continue


@dataclass
class RuleStats:
    """One rule's backtest. ``alerts``: matches left after the per-card cool-down (what the
    review queue would have received); for an allow rule, ``suppressed`` model alerts."""

    rule_id: str
    action: str
    matches: int = 0
    alerts: int = 0
    frauds: int = 0  # frauds among the alerts
    overlap: int = 0  # alerts the model raised too
    suppressed: int = 0  # allow: model alerts it would have removed
    suppressed_frauds: int = 0
    cards: set = field(default_factory=set)
    per_day: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0, set()]))  # day -> [alerts, frauds, cards]

    @property
    def precision(self) -> float:
        return self.frauds / self.alerts if self.alerts else math.nan

    def summary(self, days: int) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule_id, "action": self.action, "matches": self.matches}
        if self.action == "allow":
            out.update(suppressed_model_alerts=self.suppressed, frauds_among_suppressed=self.suppressed_frauds,
                       cards=len(self.cards))
            return out
        out.update(alerts=self.alerts, alerts_per_day=round(self.alerts / days, 2) if days else 0.0,
                   max_alerts_per_day=max((v[0] for v in self.per_day.values()), default=0),
                   cards=len(self.cards), frauds=self.frauds,
                   precision=None if math.isnan(self.precision) else round(self.precision, 4),
                   overlap_with_model=self.overlap,
                   new_alerts=self.alerts - self.overlap)
        return out


@dataclass
class Backtest:
    """The backtest of several rules over the same traffic (and the model's own alerts)."""

    rules: dict[str, RuleStats]
    first_day: int
    last_day: int
    transactions: int
    unscored: int
    model: RuleStats  # the model's alerts, for reference

    @property
    def days(self) -> int:
        return self.last_day - self.first_day + 1 if self.transactions else 0

    def day_dates(self) -> list[date]:
        return [_EPOCH + timedelta(days=d) for d in range(self.first_day, self.last_day + 1)]

    def summary(self) -> dict[str, Any]:
        return {
            "period": [str(_EPOCH + timedelta(days=self.first_day)), str(_EPOCH + timedelta(days=self.last_day))]
            if self.transactions else None,
            "transactions": self.transactions, "unscored": self.unscored,
            "model": self.model.summary(self.days),
            "rules": [s.summary(self.days) for s in self.rules.values()],
        }


def backtest(rules: Sequence[Rule], transactions: Iterable[tuple], scores: dict[str, float],
             frauds: set[str], model_alerts: Optional[set[str]] = None, threshold: float = 0.5,
             cooldown_s: float = 24 * 3600.0) -> Backtest:
    """Run ``rules`` over ``(transaction, features, last hour)`` (:func:`featured`; without the
    last hour, the velocity fields are 0), with the recorded ``scores``; ``model_alerts``: the
    tx ids the model alerted (default: score >= threshold); ``frauds``: tx ids labelled fraud.
    Disabled rules are backtested too (that is the point)."""
    stats = {r.id: RuleStats(r.id, r.action) for r in rules}
    model = RuleStats("model", "alert")
    last_alert: dict[str, dict[str, float]] = {r.id: {} for r in rules}
    model_last: dict[str, float] = {}
    first_day, last_day, n, unscored = 10**9, -10**9, 0, 0
    for tx, features, *last_hour in transactions:
        score = scores.get(tx.tx_id)
        if score is None:
            unscored += 1
            score = math.nan
        n += 1
        day = int(tx.event_ts // DAY)
        first_day, last_day = min(first_day, day), max(last_day, day)
        is_fraud = tx.tx_id in frauds
        alerted = (tx.tx_id in model_alerts) if model_alerts is not None else score >= threshold
        if alerted:  # an alerts file has had the cool-down already
            _count(model, model_last, tx, day, is_fraud, True, 0.0 if model_alerts is not None else cooldown_s)
        row = row_of(features, score, threshold, *last_hour[:1])
        for rule in rules:
            if not rule.matches(tx, row):
                continue
            s = stats[rule.id]
            s.matches += 1
            if rule.action == "allow":
                s.cards.add(tx.account_id)
                if alerted:
                    s.suppressed += 1
                    s.suppressed_frauds += is_fraud
            else:  # a tag annotates every match; alerts are folded per card like the flow's
                _count(s, last_alert[rule.id], tx, day, is_fraud, alerted, cooldown_s if rule.action == "alert" else 0.0)
    return Backtest(stats, first_day, last_day, n, unscored, model)


def _count(s: RuleStats, last: dict[str, float], tx: Transaction, day: int, is_fraud: bool, alerted: bool,
           cooldown_s: float) -> None:
    """One alert (or tag) of ``s``, unless its card had one within the cool-down (event time)."""
    previous = last.get(tx.account_id)
    if previous is not None and abs(tx.event_ts - previous) < cooldown_s:
        return
    last[tx.account_id] = tx.event_ts if previous is None else max(previous, tx.event_ts)
    s.alerts += 1
    s.frauds += is_fraud
    s.overlap += alerted
    s.cards.add(tx.account_id)
    d = s.per_day[day]
    d[0] += 1
    d[1] += is_fraud
    d[2].add(tx.account_id)


def plot_backtest(path: Any, result: Backtest) -> Any:
    """Alerts per day of each rule (lines, the model's in grey) and each rule's precision
    against the model's (bars): the ``evaluate --report`` style."""
    from learners.report import _colour, _date_of, _new_figure, _save

    fig, axes = _new_figure(10.0, 7.0, rows=2)
    ax = axes[0, 0]
    days = list(range(result.first_day, result.last_day + 1))
    dates = [_date_of(d) for d in days]
    ax.plot(dates, [result.model.per_day[d][0] if d in result.model.per_day else 0 for d in days],
            color="grey", linewidth=1, label="model alerts")
    shown = [s for s in result.rules.values() if s.action != "allow"]
    for i, s in enumerate(shown):
        ax.plot(dates, [s.per_day[d][0] if d in s.per_day else 0 for d in days], color=_colour(i), linewidth=1.2,
                label=f"{s.rule_id} ({s.action})")
    ax.set_ylabel("alerts per day (after cool-down)")
    ax.set_title("What each rule would have raised, per day")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    for label in ax.get_xticklabels():
        label.set_rotation(30)
        label.set_horizontalalignment("right")
    bars = axes[1, 0]
    names = ["model"] + [s.rule_id for s in shown]
    values = [result.model.precision] + [s.precision for s in shown]
    bars.bar(names, [0.0 if math.isnan(v) else v for v in values],
             color=["grey"] + [_colour(i) for i in range(len(shown))])
    for x, (v, s) in enumerate(zip(values, [result.model] + shown)):
        bars.text(x, 0.0 if math.isnan(v) else v, f"{'n/a' if math.isnan(v) else f'{v:.0%}'}\n{s.alerts:,} alerts",
                  ha="center", va="bottom", fontsize="small")
    bars.set_ylim(0, 1.15)
    bars.set_ylabel("share of alerts that are frauds")
    bars.set_title("Precision against the labels")
    bars.grid(alpha=0.3, axis="y")
    return _save(fig, path)
