"""A simulated team of fraud analysts: alerts in, verdicts out, in event time.

:class:`AnalystDesk` plays the team that ``fraudflow investigate`` (alerts from a file or
the alerts topic) and ``fraudflow replay --analysts`` (inside the loop) put in front of the
flow's alerts:

* **capacity**: at most ``capacity`` cards a day (the event-time day of the alert), first
  come first served within the day, in ``(ts, alert_id)`` order, so the same alerts always
  give the same cases whatever order they were handed over in;
* **one case per card**: a card already under investigation (taken, not answered yet) or
  taken earlier the same day is not taken again;
* **delay**: a case is answered ``delay_s`` after its alert's ``ts``, with the truth
  (``frauds``: the tx_ids the simulator's labels file marks fraud);
* **the card, not only the alert** (``review_s`` > 0): the analyst goes over the card's
  transactions from ``review_s`` before the alert up to the verdict, as a case-management tool
  shows the card when the case is worked and as the cardholder is asked about them, and answers
  each one not answered before, all at the case's verdict time (decisions 0066, 0067), except
  one whose label (a chargeback) came first: the case tool shows it settled. The window is
  read when the verdict is handed out (:meth:`AnalystDesk.pop_due`), since the transactions
  between the alert and the verdict are only known then. The desk learns the card's
  transactions from :meth:`AnalystDesk.on_transaction` (the replay loop, as it emits them) or
  :meth:`AnalystDesk.record` (``fraudflow investigate --transactions``), and their labels from
  :meth:`AnalystDesk.on_label`.

Alerts are decided in rounds: :meth:`AnalystDesk.decide` takes every alert before an event
time the caller vouches is complete (every alert up to it handed over). The replay loop
(:class:`connectors.files.FileEventsSource` with a desk) calls it each time the flow has
drained, which is also what makes the verdicts the same in every run.

>>> desk = AnalystDesk(AnalystConfig(capacity=1, delay_s=3600.0), frauds={"t-2"})
>>> desk.receive([alert_of({"alert_id": "a-2", "tx_id": "t-2", "account_id": "c-2", "ts": "2018-04-01T10:00:00Z"}),
...               alert_of({"alert_id": "a-1", "tx_id": "t-1", "account_id": "c-1", "ts": "2018-04-01T09:00:00Z"})])
>>> [(v.tx_id, v.is_fraud, format_ts(v.event_ts)) for v in desk.decide(math.inf)]  # one card a day: the first
[('t-1', False, '2018-04-01T10:00:00Z')]
>>> desk.counts["over_capacity"]
1
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Collection, Iterable, NamedTuple, Optional

from connectors.events import Origin, Verdict, format_ts

__all__ = ["AlertCase", "AnalystConfig", "AnalystDesk", "alert_of", "read_frauds"]

log = logging.getLogger(__name__)

DAY = 86_400.0


@dataclass(frozen=True)
class AnalystConfig:
    """``capacity``: cards a day the team investigates; ``delay_s``: from alert to verdict
    (event time, > 0: the replay loop needs it to make progress); ``review_s``: how far back
    before the alert the case goes over the card's transactions, up to the verdict (0: the
    alerted one only)."""

    capacity: int = 100
    delay_s: float = 4 * 3600.0
    review_s: float = 0.0

    def __post_init__(self) -> None:
        if self.capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {self.capacity}")
        if not self.delay_s > 0:
            raise ValueError(f"delay must be > 0, got {self.delay_s} s")
        if not 0 <= self.review_s < math.inf:
            raise ValueError(f"review window must be >= 0, got {self.review_s} s")


class AlertCase(NamedTuple):
    """What the desk needs of an alert."""

    ts: float
    alert_id: str
    tx_id: str
    account_id: str


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def alert_of(alert: Any) -> AlertCase:
    """An alert (:class:`connectors.events.Alert` or its JSON as a dict) as a case."""
    if isinstance(alert, dict):
        return AlertCase(_ts(alert["ts"]), alert["alert_id"], alert["tx_id"], alert["account_id"])
    return AlertCase(_ts(alert.ts), alert.alert_id, alert.tx_id, alert.account_id)


def read_frauds(labels_path: str) -> frozenset[str]:
    """The tx_ids a labels file marks fraud (the truth the simulated analysts find)."""
    import msgspec

    dec = msgspec.json.Decoder()
    frauds = set()
    with open(labels_path, "rb") as fh:
        for line in fh:
            if b"true" not in line:
                continue
            try:
                doc = dec.decode(line)
            except msgspec.DecodeError:
                continue
            if isinstance(doc, dict) and doc.get("is_fraud") is True and isinstance(doc.get("tx_id"), str):
                frauds.add(doc["tx_id"])
    return frozenset(frauds)


class AnalystDesk:
    """The simulated team (see the module doc). Thread-safe: the flow's workers of one
    process hand alerts over concurrently.

    In the replay loop it also counts the transactions that have left the flow's alert step
    (:meth:`on_scored` for the ones that were no alert candidate, :meth:`on_alerts` for the
    candidates the alert policy took), so the source can tell when the flow has drained.
    """

    def __init__(self, config: AnalystConfig, frauds: Collection[str]) -> None:
        self.config = config
        self.frauds = frauds
        self._lock = threading.Lock()
        self._undecided: list[AlertCase] = []
        # heap: (ts, alert_id, tx_id, verdict, what): what is True for a reviewed transaction, the
        # case for its alerted one when the case reviews the card (read at pop_due), else False
        self._due: list[tuple[float, str, str, Verdict, Any]] = []
        self._taken: dict[int, int] = {}  # day -> cards taken
        self._open_until: dict[str, float] = {}  # card -> when its case is answered
        self._last_day: dict[str, int] = {}  # card -> day it was last taken
        # review_s > 0: the card's recent transactions (ts, tx_id), the labels seen of them, and
        # the transactions already answered
        self._recent: dict[str, deque[tuple[float, str]]] = {}
        self._remembered: set[str] = set()  # the tx_ids in ``_recent``
        self._label_ts: dict[str, float] = {}
        self._answered_tx: set[str] = set()
        self._verdicts = 0
        self.processed = 0  # transactions through the alert step (the replay loop's drain count)
        self.answered: list[Verdict] = []  # every verdict handed out (pop_due), in (ts, alert_id, tx_id) order
        self.counts = {"alerts": 0, "taken": 0, "over_capacity": 0, "card_busy": 0, "fraud": 0,
                       "reviewed": 0, "reviewed_fraud": 0, "reviewed_settled": 0}

    @property
    def delay_s(self) -> float:
        return self.config.delay_s

    # -- alerts in -----------------------------------------------------------------------
    def receive(self, cases: Iterable[AlertCase]) -> None:
        cases = list(cases)
        with self._lock:
            self._undecided.extend(cases)
            self.counts["alerts"] += len(cases)

    def on_alerts(self, alerts: list, candidates: int) -> None:
        """The alert policy's hand-off (:class:`learners.stages.PolicyStage`)."""
        cases = [alert_of(a) for a in alerts]
        with self._lock:
            self._undecided.extend(cases)
            self.counts["alerts"] += len(cases)
            self.processed += candidates

    def on_scored(self, scored: Any) -> None:
        """A scored transaction; one that is no alert candidate has left the alert step."""
        if not scored.candidate:
            with self._lock:
                self.processed += 1

    def on_transaction(self, tx: Any) -> None:
        """A transaction the replay loop emits (in event-time order), for the case reviews."""
        if self.config.review_s > 0:
            with self._lock:
                self._remember(tx.account_id, tx.event_ts, tx.tx_id)

    def record(self, account_id: str, ts: float, tx_id: str) -> None:
        """A transaction of the card, for the case reviews (``fraudflow investigate
        --transactions``): kept, since every alert is decided after all of them are recorded
        (the caller records only those in some alert's review window)."""
        if self.config.review_s > 0:
            with self._lock:
                self._remember(account_id, ts, tx_id, trim=False)

    def _remember(self, account_id: str, ts: float, tx_id: str, trim: bool = True) -> None:
        """``trim``: forget the card's transactions too old for a case answered from now on
        (the replay loop decides in rounds as the stream goes, and answers ``delay_s`` later)."""
        recent = self._recent.get(account_id)
        if recent is None:
            recent = self._recent[account_id] = deque()
        recent.append((ts, tx_id))
        self._remembered.add(tx_id)
        if trim:
            horizon = ts - self.config.review_s - self.config.delay_s - DAY  # and a day's slack
            while recent[0][0] < horizon:
                old = recent.popleft()[1]
                self._remembered.discard(old)
                self._label_ts.pop(old, None)

    def on_label(self, label: Any) -> None:
        """A label (:class:`connectors.events.Label`) the flow is given: a card's transaction
        whose label comes before its case's verdict is not answered again."""
        if self.config.review_s > 0:
            with self._lock:
                if label.tx_id in self._remembered:
                    self._label_ts[label.tx_id] = label.event_ts

    @property
    def undecided(self) -> int:
        with self._lock:
            return len(self._undecided)

    # -- cases ---------------------------------------------------------------------------
    def decide(self, before: float) -> list[Verdict]:
        """Take or leave every alert handed over with ``ts < before``, in ``(ts, alert_id)``
        order; the verdicts on the alerted transactions of the cases taken, queued for
        :meth:`pop_due` (which adds those of the card's review window)."""
        with self._lock:
            ready = sorted(c for c in self._undecided if c.ts < before)
            if not ready:
                return []
            self._undecided = [c for c in self._undecided if c.ts >= before]
            out = []
            capacity, delay = self.config.capacity, self.config.delay_s
            for case in ready:
                day = int(case.ts // DAY)
                if self._open_until.get(case.account_id, -math.inf) > case.ts or self._last_day.get(case.account_id) == day:
                    self.counts["card_busy"] += 1
                    continue
                if self._taken.get(day, 0) >= capacity:
                    self.counts["over_capacity"] += 1
                    continue
                self._taken[day] = self._taken.get(day, 0) + 1
                self._last_day[case.account_id] = day
                answered = case.ts + delay
                self._open_until[case.account_id] = answered
                is_fraud = case.tx_id in self.frauds
                self.counts["taken"] += 1
                self.counts["fraud"] += is_fraud
                out.append(self._answer(case, case.tx_id, answered, case if self.config.review_s > 0 else False))
            return out

    def _answer(self, case: AlertCase, tx_id: str, answered: float, what: Any) -> Verdict:
        self._answered_tx.add(tx_id)
        self._verdicts += 1
        verdict = Verdict(case.alert_id, tx_id, case.account_id, answered, tx_id in self.frauds,
                          Origin("analysts", self._verdicts))
        heapq.heappush(self._due, (answered, case.alert_id, tx_id, verdict, what))
        return verdict

    def _reviewed(self, case: AlertCase, answered_ts: float) -> list[str]:
        """The card's other transactions from the review window's start to the verdict (the
        ones before ``answered_ts``: every one the replay loop emitted by then), not answered
        before, in (ts, tx_id) order."""
        start = case.ts - self.config.review_s
        answered = self._answered_tx
        return [tx_id for ts, tx_id in sorted(self._recent.get(case.account_id, ()))
                if start <= ts < answered_ts and tx_id not in answered]

    def peek_due(self) -> Optional[Verdict]:
        """The next verdict in ``(ts, alert_id, tx_id)`` order, or None."""
        with self._lock:
            return self._next_due()

    def pop_due(self) -> Verdict:
        """The next verdict; on a case's alerted transaction, queue those of the card's review
        window (due at the same ts, so next): the caller vouches that every transaction before
        it has been handed over (the replay loop pops it only when no event before it is left)."""
        with self._lock:
            self._next_due()
            answered_ts, _, tx_id, verdict, what = heapq.heappop(self._due)
            if what is True:
                self.counts["reviewed"] += 1
                self.counts["reviewed_fraud"] += verdict.is_fraud
            elif what:
                for other in self._reviewed(what, answered_ts):
                    self._answer(what, other, answered_ts, True)
            self.answered.append(verdict)
            return verdict

    def _next_due(self) -> Optional[Verdict]:
        """The head of the due verdicts, dropping reviewed ones whose label came first (by
        then the replay loop has handed :meth:`on_label` every label before the verdict)."""
        due = self._due
        while due and due[0][4] is True and self._label_ts.get(due[0][2], math.inf) <= due[0][0]:
            heapq.heappop(due)
            self.counts["reviewed_settled"] += 1
        return due[0][3] if due else None

    def drained(self, emitted: int) -> bool:
        """Have all ``emitted`` transactions left the alert step?"""
        with self._lock:
            return self.processed >= emitted

    def cards_per_day(self) -> dict[str, int]:
        """Cards taken per event-time day (ISO dates)."""
        with self._lock:
            return {format_ts(day * DAY)[:10]: n for day, n in sorted(self._taken.items())}

    def summary(self) -> str:
        """One line: verdicts, fraud share, cards a day."""
        c = self.counts
        days = self.cards_per_day()
        per_day = c["taken"] / len(days) if days else 0.0
        share = c["fraud"] / c["taken"] if c["taken"] else 0.0
        reviewed = (f", and {c['reviewed']:,} on the cards' other transactions from {self.config.review_s / DAY:g} "
                    f"days before the alert to the verdict ({c['reviewed_fraud']:,} fraud)"
                    if self.config.review_s > 0 else "")
        return (f"{c['taken']:,} verdicts on {c['alerts']:,} alerts ({share:.1%} fraud){reviewed}, {per_day:.1f} "
                f"cards/day over {len(days)} days (capacity {self.config.capacity}); left: {c['over_capacity']:,} "
                f"over capacity, {c['card_busy']:,} on a card already taken that day or under investigation")
