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
  (``frauds``: the tx_ids the simulator's labels file marks fraud).

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
    (event time, > 0: the replay loop needs it to make progress)."""

    capacity: int = 100
    delay_s: float = 4 * 3600.0

    def __post_init__(self) -> None:
        if self.capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {self.capacity}")
        if not self.delay_s > 0:
            raise ValueError(f"delay must be > 0, got {self.delay_s} s")


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
        self._due: list[tuple[float, str, Verdict]] = []  # heap: (verdict ts, alert_id, verdict)
        self._taken: dict[int, int] = {}  # day -> cards taken
        self._open_until: dict[str, float] = {}  # card -> when its case is answered
        self._last_day: dict[str, int] = {}  # card -> day it was last taken
        self.processed = 0  # transactions through the alert step (the replay loop's drain count)
        self.answered: list[Verdict] = []  # every verdict decided, in the order decided
        self.counts = {"alerts": 0, "taken": 0, "over_capacity": 0, "card_busy": 0, "fraud": 0}

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

    @property
    def undecided(self) -> int:
        with self._lock:
            return len(self._undecided)

    # -- cases ---------------------------------------------------------------------------
    def decide(self, before: float) -> list[Verdict]:
        """Take or leave every alert handed over with ``ts < before``, in ``(ts, alert_id)``
        order; the verdicts of the cases taken (also queued for :meth:`pop_due`)."""
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
                verdict = Verdict(case.alert_id, case.tx_id, case.account_id, answered, is_fraud,
                                  Origin("analysts", self.counts["taken"]))
                heapq.heappush(self._due, (answered, case.alert_id, verdict))
                out.append(verdict)
            self.answered.extend(out)
            return out

    def peek_due(self) -> Optional[Verdict]:
        """The next verdict in ``(ts, alert_id)`` order, or None."""
        with self._lock:
            return self._due[0][2] if self._due else None

    def pop_due(self) -> Verdict:
        with self._lock:
            return heapq.heappop(self._due)[2]

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
        return (f"{c['taken']:,} verdicts on {c['alerts']:,} alerts ({share:.1%} fraud), {per_day:.1f} cards/day over "
                f"{len(days)} days (capacity {self.config.capacity}); left: {c['over_capacity']:,} over capacity, "
                f"{c['card_busy']:,} on a card already taken that day or under investigation")
