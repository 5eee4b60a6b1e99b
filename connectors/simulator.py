"""The embedded transaction simulator (Le Borgne et al., *Reproducible ML for Credit Card
Fraud Detection*, ch. 3.2), streamed day by day in event-time order.

Customers and terminals sit on a 100 x 100 square; a customer uses the terminals within
``radius``. Each day a customer makes Poisson(mean_per_day) transactions at a time of day
~ Normal(12h, 20000 s) and an amount ~ Normal(mean, mean/2). Three fraud scenarios:

1. every amount above ``large_amount`` is fraudulent;
2. each day ``compromised_terminals_per_day`` terminals are drawn: every transaction on
   them during the next ``terminal_compromise_days`` days is fraudulent;
3. each day ``compromised_customers_per_day`` customers are drawn: during the next
   ``customer_compromise_days`` days, a random third of their transactions have their
   amount multiplied by 5 and are fraudulent.

Each transaction's label is emitted as its own event ``label_delay_days`` after it
(``labels="all"``), or only for frauds (``labels="frauds"``).

>>> events = list(simulate(SimulatorConfig(customers=50, terminals=100, days=3, seed=1)))
>>> sum(isinstance(e, Transaction) for e in events) > 0
True
>>> all(a.event_ts <= b.event_ts for a, b in zip(events, events[1:]))  # event-time order
True
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from typing import Iterator, Optional, Union

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.events import Label, Transaction
from connectors.sources import MAX_BATCH_SPAN_S, EventTimeBatcher

__all__ = ["SimulatorConfig", "Simulation", "SimulatorSource", "simulate", "SimulatedFraud"]

log = logging.getLogger(__name__)

_DAY = 86_400


@dataclass(frozen=True)
class SimulatorConfig:
    """All parameters of the published recipe; the defaults are the reference run."""

    customers: int = 5_000
    terminals: int = 10_000
    days: int = 183
    start: date = date(2018, 4, 1)
    seed: int = 0
    radius: float = 5.0
    label_delay_days: float = 7.0
    labels: str = "all"  # "all": a label per transaction; "frauds": fraud labels only
    large_amount: float = 220.0
    compromised_terminals_per_day: int = 2
    terminal_compromise_days: int = 28
    compromised_customers_per_day: int = 3
    customer_compromise_days: int = 14

    def __post_init__(self) -> None:
        for name in ("customers", "terminals", "days"):
            if getattr(self, name) < 1:
                raise ValueError(f"simulator {name} must be >= 1, got {getattr(self, name)}")
        if self.radius <= 0:
            raise ValueError(f"simulator radius must be > 0, got {self.radius}")
        if self.label_delay_days < 0:
            raise ValueError(f"simulator label_delay_days must be >= 0, got {self.label_delay_days}")
        if self.labels not in ("all", "frauds"):
            raise ValueError(f"simulator labels must be 'all' or 'frauds', got {self.labels!r}")

    @property
    def start_ts(self) -> float:
        return datetime(self.start.year, self.start.month, self.start.day, tzinfo=timezone.utc).timestamp()

    def with_(self, **changes: object) -> "SimulatorConfig":
        return replace(self, **changes)


@dataclass(frozen=True)
class SimulatedFraud:
    """Ground truth kept beside a simulated transaction (never shown to the flow)."""

    is_fraud: bool
    scenario: int  # 0 legitimate, 1 large amount, 2 compromised terminal, 3 compromised card


@dataclass
class _Profiles:
    cust_xy: np.ndarray
    mean_amount: np.ndarray
    std_amount: np.ndarray
    mean_per_day: np.ndarray
    term_xy: np.ndarray
    avail_offsets: np.ndarray  # CSR over customers
    avail_terminals: np.ndarray
    avail_count: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.avail_count = np.diff(self.avail_offsets)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _profiles(cfg: SimulatorConfig) -> _Profiles:
    rng = _rng(cfg.seed, 0)
    cust_xy = rng.uniform(0, 100, size=(cfg.customers, 2))
    mean_amount = rng.uniform(5, 100, size=cfg.customers)
    mean_per_day = rng.uniform(0, 4, size=cfg.customers)
    term_xy = _rng(cfg.seed, 1).uniform(0, 100, size=(cfg.terminals, 2))
    offsets = np.zeros(cfg.customers + 1, dtype=np.int64)
    chunks = []
    step = max(1, 2_000_000 // cfg.terminals)  # bound the distance matrix to ~16 MB
    r2 = cfg.radius**2
    for lo in range(0, cfg.customers, step):
        dx = cust_xy[lo : lo + step, 0, None] - term_xy[None, :, 0]
        dy = cust_xy[lo : lo + step, 1, None] - term_xy[None, :, 1]
        d2 = dx * dx + dy * dy
        rows, cols = np.nonzero(d2 < r2)
        counts = np.bincount(rows, minlength=min(step, cfg.customers - lo))
        offsets[lo + 1 : lo + 1 + len(counts)] = counts
        chunks.append(cols.astype(np.int32))
    offsets = np.cumsum(offsets)
    return _Profiles(
        cust_xy=cust_xy,
        mean_amount=mean_amount,
        std_amount=mean_amount / 2,
        mean_per_day=mean_per_day,
        term_xy=term_xy,
        avail_offsets=offsets,
        avail_terminals=np.concatenate(chunks) if chunks else np.zeros(0, np.int32),
    )


SimEvent = Union[Transaction, Label]
_TRUTH = [SimulatedFraud(False, 0)] + [SimulatedFraud(True, s) for s in (1, 2, 3)]


class Simulation:
    """Day-by-day generator; ``truth`` maps ``tx_id`` to :class:`SimulatedFraud` if asked."""

    def __init__(self, cfg: SimulatorConfig, partition: int = 0, partitions: int = 1, keep_truth: bool = False):
        if not 0 <= partition < partitions:
            raise ValueError(f"partition {partition} not in range(0, {partitions})")
        self.cfg = cfg
        self.partition = partition
        self.partitions = partitions
        self.keep_truth = keep_truth
        self.truth: dict[str, SimulatedFraud] = {}
        self.profiles = _profiles(cfg)
        self._seq = 0
        self._account_ids = [f"c-{c}" for c in range(cfg.customers)]
        self._terminal_ids = [f"m-{t}" for t in range(cfg.terminals)]

    def _compromised(self, day: int, per_day: int, span: int, population: int, stream: int) -> np.ndarray:
        """Entities drawn on days ``day - span + 1 .. day`` (each draw lasts ``span`` days)."""
        drawn = [
            _rng(self.cfg.seed, stream, d).choice(population, size=min(per_day, population), replace=False)
            for d in range(max(0, day - span + 1), day + 1)
        ]
        return np.unique(np.concatenate(drawn)) if drawn else np.zeros(0, np.int64)

    def day_transactions(self, day: int) -> list[tuple[Transaction, SimulatedFraud]]:
        """All transactions of one day, in time order, with their ground truth."""
        cfg, p = self.cfg, self.profiles
        rng = _rng(cfg.seed, 2, day)
        n_tx = rng.poisson(p.mean_per_day)
        cust = np.repeat(np.arange(cfg.customers), n_tx)
        secs = np.trunc(rng.normal(_DAY / 2, 20_000, size=cust.size)).astype(np.int64)
        keep = (secs > 0) & (secs < _DAY) & (p.avail_count[cust] > 0)
        mean = p.mean_amount[cust]
        amount = rng.normal(mean, p.std_amount[cust])
        negative = amount < 0
        amount[negative] = rng.uniform(0, 2 * mean[negative])
        pick = rng.random(cust.size)
        cust, secs, amount, pick = cust[keep], secs[keep], amount[keep], pick[keep]
        amount = np.round(amount, 2)
        k = np.minimum((pick * p.avail_count[cust]).astype(np.int64), p.avail_count[cust] - 1)
        term = p.avail_terminals[p.avail_offsets[cust] + k]

        scenario = np.zeros(cust.size, dtype=np.int8)
        scenario[amount > cfg.large_amount] = 1
        bad_terms = self._compromised(
            day, cfg.compromised_terminals_per_day, cfg.terminal_compromise_days, cfg.terminals, 3
        )
        scenario[np.isin(term, bad_terms)] = 2
        bad_custs = self._compromised(
            day, cfg.compromised_customers_per_day, cfg.customer_compromise_days, cfg.customers, 4
        )
        third = _rng(cfg.seed, 5, day).random(cust.size) < 1 / 3
        card_fraud = np.isin(cust, bad_custs) & third
        amount[card_fraud] = np.round(amount[card_fraud] * 5, 2)
        scenario[card_fraud] = 3

        order = np.argsort(secs, kind="stable")
        base = cfg.start_ts + day * _DAY
        first_seq = self._seq
        self._seq += order.size
        seqs = range(first_seq, first_seq + order.size)
        cust, ts, amount, term, scenario = (
            cust[order].tolist(),
            (base + secs[order]).astype(float).tolist(),
            amount[order].tolist(),
            term[order].tolist(),
            scenario[order].tolist(),
        )
        accounts, terminals, parts = self._account_ids, self._terminal_ids, self.partitions
        return [
            (Transaction(f"t-{seq:09d}", accounts[c], t, a, terminals[m]), _TRUTH[s])
            for seq, c, t, a, m, s in zip(seqs, cust, ts, amount, term, scenario)
            if parts == 1 or c % parts == self.partition
        ]

    def events(self, start_day: int = 0) -> Iterator[SimEvent]:
        """Transactions and labels merged in event-time order (labels first on ties)."""
        cfg = self.cfg
        delay = cfg.label_delay_days * _DAY
        all_labels = cfg.labels == "all"
        # A constant delay keeps labels in transaction order: a FIFO is a priority queue.
        pending: deque[Label] = deque()
        for day in range(cfg.days):
            day_txs = self.day_transactions(day)
            if day < start_day:
                continue
            for tx, truth in day_txs:
                while pending and pending[0].event_ts <= tx.event_ts:
                    yield pending.popleft()
                if self.keep_truth:
                    self.truth[tx.tx_id] = truth
                yield tx
                if all_labels or truth.is_fraud:
                    pending.append(Label(tx.tx_id, tx.account_id, tx.event_ts + delay, truth.is_fraud))
        yield from pending


def simulate(
    cfg: SimulatorConfig, partition: int = 0, partitions: int = 1, truth: Optional[dict] = None
) -> Iterator[SimEvent]:
    """Stream the simulation; if ``truth`` is a dict it is filled with ground truth."""
    sim = Simulation(cfg, partition, partitions, keep_truth=truth is not None)
    if truth is not None:
        sim.truth = truth
    yield from sim.events()


class _SimulatorPartition(StatefulSourcePartition[tuple[int, SimEvent], int]):
    """One slice of the accounts; resumes by regenerating and skipping what was emitted."""

    def __init__(self, cfg: SimulatorConfig, partition: int, partitions: int, batch_size: int,
                 emitted: int, max_batch_span_s: float) -> None:
        self._part = partition
        self._events = Simulation(cfg, partition, partitions).events()
        self._emitted = emitted
        self._batch = EventTimeBatcher(batch_size, max_batch_span_s)
        for _ in range(emitted):
            next(self._events)

    def next_batch(self) -> list[tuple[int, SimEvent]]:
        batch = self._batch.take(self._part, self._events)
        self._emitted += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._emitted


class SimulatorSource(FixedPartitionedSource[tuple[int, SimEvent], int]):
    """The simulator as a Bytewax source of ``(partition, event)``; partitions split accounts."""

    def __init__(self, cfg: SimulatorConfig, partitions: int = 1, batch_size: int = 1000,
                 max_batch_span_s: float = MAX_BATCH_SPAN_S) -> None:
        self.cfg = cfg
        self.partitions = partitions
        self.batch_size = batch_size
        self.max_batch_span_s = max_batch_span_s

    def list_parts(self) -> list[str]:
        return [f"sim-{i}" for i in range(self.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> _SimulatorPartition:
        index = int(for_part.rsplit("-", 1)[1])
        return _SimulatorPartition(self.cfg, index, self.partitions, self.batch_size, resume_state or 0,
                                   self.max_batch_span_s)
