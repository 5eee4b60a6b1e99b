"""Event-time features for one transaction, from the account's and the terminal's history.

Two small stateful classes hold what the features need and nothing else:

* :class:`AccountProfile` (keyed by ``account_id``): daily spend buckets over the last 30
  days, robust running amount statistics, the previous transaction time, recently used
  terminals, the transactions still awaiting a label (to join labels that lack
  ``terminal_id``), and the last hour's transactions (``last_hour``: for the rules' velocity
  fields, not a model feature).
* :class:`TerminalProfile` (keyed by ``terminal_id``): daily transaction counts and the
  fraud labels released so far, each with the time it became known.

Features are computed *before* the transaction updates the state (history excludes the
transaction itself), and terminal risk only counts labels whose ``event_ts`` is not later
than the transaction's (no look-ahead), whatever order the labels arrived in.

>>> from connectors.events import Transaction
>>> acct = AccountProfile()
>>> day0 = 1522540800.0  # 2018-04-01T00:00:00Z, a Sunday
>>> for i, amount in enumerate([20.0, 22.0, 18.0, 21.0]):
...     _ = acct.observe(Transaction(f"t-{i}", "c-1", day0 + 3600 * (i + 8), amount, "m-1"))
>>> f = acct.observe(Transaction("t-9", "c-1", day0 + 3600 * 13, 100.0, "m-2"))
>>> f[ACCOUNT_FEATURES.index("acct_nb_tx_1d")], round(f[ACCOUNT_FEATURES.index("acct_avg_amount_1d")], 2)
(4.0, 20.25)
>>> f[ACCOUNT_FEATURES.index("acct_new_terminal")]
1.0
"""

from __future__ import annotations

import math
import zlib
from array import array
from typing import Any, Optional

from learners.messages import NO_LAST_HOUR, JoinedLabel

__all__ = [
    "ACCOUNT_FEATURES",
    "FEATURE_NAMES",
    "TERMINAL_FEATURES",
    "TX_FEATURES",
    "AccountProfile",
    "JoinedLabel",
    "PendingTx",
    "TerminalProfile",
    "step_boundary",
    "transaction_features",
]

DAY = 86_400.0
HOUR = 3600.0
WINDOWS = (1, 7, 30)
_HORIZON = 31  # daily buckets kept per account: today + 30 days back

TX_FEATURES = ("amount", "log_amount", "tx_during_weekend", "tx_during_night")
ACCOUNT_FEATURES = (
    *(f"acct_nb_tx_{w}d" for w in WINDOWS),
    *(f"acct_avg_amount_{w}d" for w in WINDOWS),
    "acct_amount_log_ratio_30d",
    "acct_amount_log_ratio_median",
    "acct_amount_robust_z",
    "acct_log_secs_since_prev",
    "acct_new_terminal",
    "acct_history_days",
    "acct_nb_unusual_7d",
    "acct_amount_new_high",
    "acct_days_since_known_fraud",
)
TERMINAL_FEATURES = (
    *(f"term_nb_tx_{w}d" for w in WINDOWS),
    *(f"term_risk_{w}d" for w in WINDOWS),
    "term_log_known_frauds_30d",
    "term_days_since_first_known_fraud",
    "term_days_since_last_known_fraud",
    "term_known_fraud_days",
    "term_log_unexplained_known_frauds_30d",
)
FEATURE_NAMES = TX_FEATURES + ACCOUNT_FEATURES + TERMINAL_FEATURES
_ROBUST_Z = ACCOUNT_FEATURES.index("acct_amount_robust_z")
_UNUSUAL_7D = ACCOUNT_FEATURES.index("acct_nb_unusual_7d")
_NEW_HIGH = ACCOUNT_FEATURES.index("acct_amount_new_high")


def _day(event_ts: float) -> int:
    return int(event_ts // DAY)


def step_boundary(event_ts: float, step: float) -> float:
    """The newest label time a transaction at ``event_ts`` may see: ``(floor(t / step) - 2) *
    step``, two learning steps back, so a label still in flight between workers cannot change
    what it sees (the model version it is scored by, its terminal's and card's known frauds);
    with a step of 0, ``event_ts`` itself.

    >>> step_boundary(20_000.0, 3600.0), step_boundary(20_000.0, 0.0)  # 05:33 with 1 h steps: 03:00
    (10800.0, 20000.0)
    """
    return (math.floor(event_ts / step) - 2) * step if step > 0 else event_ts


def transaction_features(amount: float, event_ts: float) -> tuple[float, ...]:
    """Amount, its log, weekend and night flags (UTC clock, night = before 07:00).

    >>> transaction_features(57.16, 1522541276.0)  # Sunday 00:07:56Z
    (57.16, 4.0632, 1.0, 1.0)
    """
    weekday = (_day(event_ts) + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    hour = (event_ts % DAY) // 3600
    return (amount, math.log1p(amount), 1.0 if weekday >= 5 else 0.0, 1.0 if hour <= 6 else 0.0)


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _habit(ordered: list[float]) -> tuple[float, float, float]:
    """A card's amount habit from its recent amounts, sorted: median, median absolute deviation,
    and the robust scale an amount's z-score divides by (``acct_amount_robust_z``)."""
    median = _median(ordered)
    mad = _median(sorted(abs(a - median) for a in ordered))
    return median, mad, 1.4826 * mad + 0.05 * median + 1.0


def _term_hash(terminal_id: str) -> int:
    return zlib.crc32(terminal_id.encode())


PendingTx = tuple[str, float, str, bool]  # (tx_id, event_ts, terminal_id, unexplained by its card)

ORDINARY_Z = 3.0  # robust z-score under which an amount is within the card's habit
# acct_days_since_known_fraud: days since the card's latest known fraud (a chargeback or an
# analyst's fraud verdict), counted while it is this recent (decision 0068)
KNOWN_FRAUD_DAYS = 30
UNUSUAL_DAYS = 7  # acct_nb_unusual_7d: the card's purchases of an unusual amount over this many days (a window)


def ordinary_amount(account_features: tuple[float, ...]) -> bool:
    """Was the transaction's amount within its card's habit (robust z below ``ORDINARY_Z``)?"""
    return account_features[_ROBUST_Z] < ORDINARY_Z


def unexplained_by_card(account_features: tuple[float, ...]) -> bool:
    """Would a fraud on this transaction be unexplained by its card and its amount: an ordinary
    amount for the card, not above all its recent amounts, and no purchase of an unusual amount
    on the card in the last ``UNUSUAL_DAYS`` days? A stolen card's frauds come with its unusual
    spending, and a large purchase explains itself; a compromised terminal's frauds do neither."""
    return (account_features[_ROBUST_Z] < ORDINARY_Z and account_features[_UNUSUAL_7D] == 0.0
            and account_features[_NEW_HIGH] == 0.0)


class AccountProfile:
    """Per-account state; ``snapshot()`` is a small tuple of plain values (≈ 0.5–1 KB).

    The account's habit is the median and median absolute deviation of its last
    ``RECENT_AMOUNTS`` amounts: robust statistics, so a stolen card's burst of unusual
    spending does not become the card's new normal until it is most of its history.
    """

    __slots__ = ("day", "counts", "sums", "unusual", "amounts", "n_seen", "first_ts", "last_ts", "terms", "pending",
                 "orphans", "verdicts", "hourly", "known_frauds", "step")

    RECENT_AMOUNTS = 16
    RECENT_TERMINALS = 24
    MAX_PENDING = 256
    # Analysts' verdicts remembered (4 bytes each: the tx_id's hash, its low bit the verdict), so
    # a later chargeback for the same transaction is not learned twice (decision 0050). An
    # analyst reviewing the card answers its transactions of the days before the alert too
    # (decision 0066): up to the card's transactions of the review window plus a label delay,
    # at most 88 in the published simulator (14 days); 128 is at most 512 bytes, and only
    # cards analysts answered have any.
    MAX_VERDICTS = 128
    # The last hour's transactions, (event_ts, amount) each, for the rules' velocity fields
    # (:meth:`last_hour`; decision 0063): at most this many, the latest by event time, so a
    # card with more in an hour counts this many (the count saturates).
    MAX_LAST_HOUR = 32
    # The card's known frauds, (day of the fraud, label event_ts) each, for
    # acct_days_since_known_fraud: only those that can still be the latest one known (see
    # add_known_fraud), at most this many (a card with more in a month keeps its latest)
    MAX_KNOWN_FRAUDS = 32

    def __init__(self, state: Optional[tuple] = None, label_step_s: float = 0.0) -> None:
        """``label_step_s``: a known fraud counts for a transaction once its label is older
        than two learning steps before it, as for the terminal (:class:`TerminalProfile`)."""
        self.step = label_step_s
        if state is None:
            self.day = -1
            self.counts = array("H", bytes(2 * _HORIZON))
            self.sums = array("f", bytes(4 * _HORIZON))
            self.unusual = array("H", bytes(2 * _HORIZON))  # purchases of an unusual amount per day
            self.amounts = array("f")
            self.n_seen = 0
            self.first_ts = 0.0
            self.last_ts = 0.0
            self.terms = array("I")
            self.pending: list[PendingTx] = []
            # labels before their transaction: (tx_id, ts, is_fraud, account_id, origin[, verdict])
            self.orphans: list[tuple] = []
            self.verdicts = array("I")
            self.hourly = array("d")  # event_ts, amount, event_ts, amount, ... in event-time order
            self.known_frauds: list[tuple[int, float]] = []  # (fraud day, label event_ts), in order
        else:
            (self.day, counts, sums, amounts, self.n_seen, self.first_ts, self.last_ts, terms, pending,
             orphans, *newer) = state
            # saved before the unusual-amount counts (10 values): none counted; before the
            # analysts' verdicts (11 values): none remembered; before the last hour's
            # transactions (12 values): none kept (the velocity fields count from the restart);
            # before the known frauds (13 values): none known
            self.unusual = array("H", newer[0] if newer else bytes(2 * _HORIZON))
            self.verdicts = array("I", newer[1] if len(newer) > 1 else b"")
            self.hourly = array("d", newer[2] if len(newer) > 2 else b"")
            self.known_frauds = [tuple(f) for f in newer[3]] if len(newer) > 3 else []
            self.amounts = array("f", amounts)
            self.counts = array("H", counts)
            self.sums = array("f", sums)
            self.terms = array("I", terms)
            # 3-tuples: saved before the unexplained flag (counted as unexplained)
            self.pending = [p if len(p) > 3 else (*p, True) for p in pending]
            self.orphans = list(orphans)

    def snapshot(self) -> tuple:
        return (self.day, self.counts.tobytes(), self.sums.tobytes(), self.amounts.tobytes(), self.n_seen,
                self.first_ts, self.last_ts, self.terms.tobytes(), tuple(self.pending), tuple(self.orphans),
                self.unusual.tobytes(), self.verdicts.tobytes(), self.hourly.tobytes(), tuple(self.known_frauds))

    @staticmethod
    def is_snapshot(value: Any) -> bool:
        """Has ``value`` (plain data read back from a store) the layout of :meth:`snapshot`, this
        version's (14 values), the one before the known frauds (13), the one before the last
        hour's transactions (12), the one before the analysts' verdicts (11) or the one before
        the per-day unusual-amount counts (10)?"""
        if not isinstance(value, tuple) or len(value) not in (10, 11, 12, 13, 14):
            return False
        day, counts, sums, amounts, n_seen, first_ts, last_ts, terms, pending, orphans, *newer = value
        unusual, verdicts, hourly, known = newer[:1], newer[1:2], newer[2:3], newer[3:]
        return (isinstance(day, int)
                and all(isinstance(b, bytes) for b in (counts, sums, amounts, terms, *unusual, *verdicts, *hourly))
                and all(isinstance(k, (tuple, list)) for k in known)
                and all(len(b) == 2 * _HORIZON for b in unusual) and all(len(b) % 4 == 0 for b in verdicts)
                and all(len(b) % 16 == 0 for b in hourly)
                and isinstance(n_seen, int) and isinstance(first_ts, (int, float))
                and isinstance(last_ts, (int, float)) and isinstance(pending, (tuple, list))
                and isinstance(orphans, (tuple, list)) and len(counts) == 2 * _HORIZON and len(sums) == 4 * _HORIZON)

    def describe(self, days: int = 30) -> dict[str, Any]:
        """What the profile holds, as plain values, for people (``fraudflow state show``).

        ``daily``: the last ``days`` days up to the profile's latest day (from its first
        transaction if that is later; at most the 31 kept), each with its transactions, amount
        and purchases of an unusual amount; ``amounts``: the last ``RECENT_AMOUNTS`` amounts
        and the habit the features take from them (``median``, ``mad``, ``robust_scale``: None
        under 3 amounts); ``recent_terminals``: how many are kept; ``pending``: transactions
        awaiting a label ``(tx_id, event_ts, terminal_id, unexplained)``; ``orphans``: labels
        that came before their transaction ``(tx_id, label_ts, is_fraud, account_id, origin[,
        verdict])``; ``last_hour``: the ``(event_ts, amount)`` kept for the velocity fields
        (:meth:`last_hour`); ``known_frauds``: the card's latest known frauds ``(day,
        label_ts)`` (``acct_days_since_known_fraud``). Times are POSIX seconds (None before the
        first transaction), days count from 1970-01-01.

        >>> from connectors.events import Transaction
        >>> acct = AccountProfile()
        >>> for i, amount in enumerate([20.0, 22.0, 18.0, 30.0]):
        ...     _ = acct.observe(Transaction(f"t-{i}", "c-1", 1522540800.0 + 3600 * i, amount, "m-1"))
        >>> d = acct.describe()
        >>> d["daily"], d["median"], d["mad"], d["robust_scale"]
        ([{'day': 17622, 'transactions': 4, 'amount': 90.0, 'unusual_amount': 0}], 21.0, 2.0, 5.0152)
        """
        first_day = _day(self.first_ts) if self.n_seen else self.day
        daily = []
        for d in range(max(first_day, self.day - min(days, _HORIZON) + 1), self.day + 1):
            slot = d % _HORIZON
            daily.append({"day": d, "transactions": self.counts[slot], "amount": float(self.sums[slot]),
                          "unusual_amount": self.unusual[slot]})
        median = mad = scale = None
        if len(self.amounts) >= 3:
            median, mad, scale = _habit(sorted(self.amounts))
        return {
            "transactions_seen": self.n_seen,
            "first_ts": self.first_ts if self.n_seen else None,
            "last_ts": self.last_ts if self.n_seen else None,
            "daily": daily,
            "amounts": list(self.amounts),
            "median": median,
            "mad": mad,
            "robust_scale": scale,
            "recent_terminals": len(self.terms),
            "pending": list(self.pending),
            "orphans": list(self.orphans),
            "verdicts_remembered": len(self.verdicts),
            "last_hour": [(self.hourly[i], self.hourly[i + 1]) for i in range(0, len(self.hourly), 2)],
            "known_frauds": list(self.known_frauds),
        }

    def _advance(self, day: int) -> None:
        """Roll the daily ring forward to ``day`` (older days fall out)."""
        if day <= self.day:
            return
        gap = day - self.day if self.day >= 0 else _HORIZON
        for d in range(min(gap, _HORIZON)):
            slot = (day - d) % _HORIZON
            self.counts[slot] = 0
            self.sums[slot] = 0.0
            self.unusual[slot] = 0
        self.day = day

    def _window(self, w: int, day: int) -> tuple[int, float, int]:
        """Transactions, their amount and how many had an unusual amount, in the ``w`` days
        that end on ``day``."""
        n, s, u = 0, 0.0, 0
        counts, sums, unusual = self.counts, self.sums, self.unusual
        lo = max(day - w + 1, self.day - _HORIZON + 1)
        for d in range(lo, min(day, self.day) + 1):
            slot = d % _HORIZON
            n += counts[slot]
            s += sums[slot]
            u += unusual[slot]
        return n, s, u

    def features(self, tx) -> tuple[float, ...]:
        """Account features for ``tx`` from history before it (state unchanged)."""
        day = _day(tx.event_ts)
        out_n: list[float] = []
        out_avg: list[float] = []
        unusual = 0
        for w in WINDOWS:
            n, s, u = self._window(w, day)
            out_n.append(float(n))
            out_avg.append(s / n if n else 0.0)
            if w == UNUSUAL_DAYS:
                unusual = u
        n30, avg30 = out_n[2], out_avg[2]
        amount = tx.amount
        ratio = math.log((amount + 1.0) / (avg30 + 1.0)) if n30 else 0.0
        if len(self.amounts) >= 3:
            ordered = sorted(self.amounts)
            median, _, scale = _habit(ordered)
            median_ratio = math.log((amount + 1.0) / (median + 1.0))
            robust_z = max(-20.0, min(20.0, (amount - median) / scale))
            new_high = 1.0 if amount > ordered[-1] else 0.0  # above each of the card's recent amounts
        else:
            median_ratio = robust_z = new_high = 0.0
        since_prev = math.log1p(max(0.0, tx.event_ts - self.last_ts)) if self.n_seen else -1.0
        new_terminal = 0.0 if _term_hash(tx.terminal_id) in self.terms else 1.0
        history_days = min(30.0, (tx.event_ts - self.first_ts) / DAY) if self.n_seen else 0.0
        since_fraud = self._days_since_known_fraud(tx.event_ts, day) if self.known_frauds else -1.0
        return (*out_n, *out_avg, ratio, median_ratio, robust_z, since_prev, new_terminal, history_days,
                float(unusual), new_high, since_fraud)

    def _days_since_known_fraud(self, event_ts: float, day: int) -> float:
        """Days from the card's latest fraud known at ``event_ts`` to ``day``; -1: none in the
        last ``KNOWN_FRAUD_DAYS``. Known: its label is older than two learning steps before
        ``event_ts`` (so labels still in flight between workers cannot change it)."""
        cutoff = step_boundary(event_ts, self.step)
        for fraud_day, label_ts in reversed(self.known_frauds):  # the latest day first
            if label_ts <= cutoff and fraud_day <= day:
                return float(day - fraud_day) if day - fraud_day <= KNOWN_FRAUD_DAYS else -1.0
        return -1.0

    def add_known_fraud(self, tx_ts: float, label_ts: float) -> None:
        """A fraud label joined to one of the card's transactions (a chargeback, or an analyst's
        fraud verdict): known to the card's later transactions (``acct_days_since_known_fraud``).

        >>> from connectors.events import Transaction
        >>> acct = AccountProfile(label_step_s=3600.0)
        >>> d0 = 1522540800.0
        >>> acct.add_known_fraud(d0, d0 + 4 * 3600)  # an analyst's verdict 4 h after the fraud
        >>> since = ACCOUNT_FEATURES.index("acct_days_since_known_fraud")
        >>> [acct.features(Transaction("t", "c-1", d0 + h * 3600, 10.0, "m-1"))[since] for h in (5, 6, 6 + 48)]
        [-1.0, 0.0, 2.0]
        """
        # Kept: what can still be the latest fraud known to a transaction, whatever order the
        # labels come in (labels may come before their transaction, or long after). Not kept: a
        # fraud another one as recent, known no later, outdoes; one older than KNOWN_FRAUD_DAYS
        # before any transaction still to come (a day's slack for a late one).
        day = _day(tx_ts)
        known = self.known_frauds
        if any(d >= day and ts <= label_ts for d, ts in known):
            return
        horizon = self.day - KNOWN_FRAUD_DAYS - 1
        known = [(d, ts) for d, ts in known if not (d <= day and ts >= label_ts) and d >= horizon]
        known.append((day, label_ts))
        known.sort()
        self.known_frauds = known[-self.MAX_KNOWN_FRAUDS:]

    def last_hour(self, event_ts: float) -> tuple[float, float]:
        """The card's transactions and their amount in the hour before ``event_ts`` (event
        time: ``event_ts - 1 h <= ts <= event_ts``, both ends included), from history before the
        transaction at ``event_ts`` (state unchanged): the rules' ``acct_nb_tx_1h`` and
        ``acct_sum_amount_1h``, not model features (decision 0063). A transaction later in event
        time (it arrived first, out of order) is not counted. At most ``MAX_LAST_HOUR`` are
        kept, the latest: above that the count stays at ``MAX_LAST_HOUR`` and the amount is
        theirs.

        >>> from connectors.events import Transaction
        >>> acct = AccountProfile()
        >>> t0 = 1522540800.0
        >>> for i, (dt, amount) in enumerate([(0, 5.0), (1800, 20.0), (3000, 40.0)]):
        ...     _ = acct.observe(Transaction(f"t-{i}", "c-1", t0 + dt, amount, "m-1"))
        >>> acct.last_hour(t0 + 3600), acct.last_hour(t0 + 3601), acct.last_hour(t0 + 2000)
        ((3.0, 65.0), (2.0, 60.0), (2.0, 25.0))
        """
        hourly = self.hourly
        n = len(hourly)
        since = event_ts - HOUR
        if not n or hourly[n - 2] < since:  # nothing kept, or all of it older (the common case)
            return NO_LAST_HOUR
        count, amount = 0, 0.0
        for i in range(0, n, 2):
            ts = hourly[i]
            if ts > event_ts:
                break  # kept in event-time order: the rest are later too
            if ts >= since:
                count += 1
                amount += hourly[i + 1]
        return float(count), amount

    def _keep_for_last_hour(self, event_ts: float, amount: float, lateness_s: float) -> None:
        """Keep ``(event_ts, amount)`` for :meth:`last_hour`, in event-time order; drop what no
        transaction within ``lateness_s`` of the latest can count any more, and the oldest
        above ``MAX_LAST_HOUR``."""
        hourly = self.hourly
        latest = event_ts if event_ts > self.last_ts else self.last_ts
        horizon = latest - HOUR - lateness_s
        if hourly and hourly[0] < horizon:
            n, k = len(hourly), 2
            while k < n and hourly[k] < horizon:
                k += 2
            del hourly[:k]
        if event_ts < horizon:
            return  # later than the lateness: no transaction still to come counts it
        n = len(hourly)
        if not n or event_ts >= hourly[n - 2]:
            hourly.extend((event_ts, amount))
        else:  # out of order: after those at or before its time
            i = n - 2
            while i >= 2 and hourly[i - 2] > event_ts:
                i -= 2
            hourly[i:i] = array("d", (event_ts, amount))
        if len(hourly) > 2 * self.MAX_LAST_HOUR:
            del hourly[:2]

    def update(self, tx, features: tuple[float, ...], lateness_s: float = HOUR) -> bool:
        """Add ``tx`` (whose account ``features`` were computed before it) to the history and to
        the transactions awaiting a label; returns whether a fraud on it would be unexplained by
        its card (:func:`unexplained_by_card`), the flag its label will carry. ``lateness_s``:
        how late (event time) a transaction may still come and count the last hour's
        (:meth:`last_hour`; the flow's ``allowed_lateness_s``)."""
        self._keep_for_last_hour(tx.event_ts, tx.amount, lateness_s)
        day = _day(tx.event_ts)
        self._advance(day)
        unexplained = unexplained_by_card(features)
        if day > self.day - _HORIZON:
            slot = day % _HORIZON
            if self.counts[slot] < 65535:
                self.counts[slot] += 1
                if not ordinary_amount(features):
                    self.unusual[slot] += 1
            self.sums[slot] += tx.amount
        if self.n_seen == 0:
            self.first_ts = tx.event_ts
        self.amounts.append(tx.amount)
        if len(self.amounts) > self.RECENT_AMOUNTS:
            del self.amounts[0]
        self.n_seen += 1
        self.last_ts = max(self.last_ts, tx.event_ts)
        h = _term_hash(tx.terminal_id)
        terms = self.terms
        if h in terms:
            terms.remove(h)
        terms.append(h)
        if len(terms) > self.RECENT_TERMINALS:
            del terms[0]
        self.pending.append((tx.tx_id, tx.event_ts, tx.terminal_id, unexplained))
        if len(self.pending) > self.MAX_PENDING:
            del self.pending[0]
        return unexplained

    def observe(self, tx) -> tuple[float, ...]:
        """Features for ``tx``, then learn it: the per-transaction step of the flow."""
        f = self.features(tx)
        self.update(tx, f)
        return f

    def take_pending(self, tx_id: str) -> Optional[PendingTx]:
        """Remove and return the pending record for ``tx_id`` (label join)."""
        for i, rec in enumerate(self.pending):
            if rec[0] == tx_id:
                del self.pending[i]
                return rec
        return None

    @property
    def empty(self) -> bool:
        """Nothing learned and nothing held: the state of an account only a label named."""
        return self.n_seen == 0 and not self.pending and not self.orphans

    # -- analysts' verdicts (decision 0050) ----------------------------------------------
    def verdict_for(self, tx_id: str) -> Optional[bool]:
        """The analyst's verdict remembered for ``tx_id`` (True: fraud), or None."""
        mark = _term_hash(tx_id) & 0xFFFFFFFE
        for v in self.verdicts:
            if v & 0xFFFFFFFE == mark:
                return bool(v & 1)
        return None

    def _remember_verdict(self, tx_id: str, is_fraud: bool) -> None:
        mark = _term_hash(tx_id) & 0xFFFFFFFE
        verdicts = self.verdicts
        for i, v in enumerate(verdicts):
            if v & 0xFFFFFFFE == mark:
                del verdicts[i]
                break
        verdicts.append(mark | int(is_fraud))
        if len(verdicts) > self.MAX_VERDICTS:
            del verdicts[0]

    def _find_pending(self, tx_id: str) -> Optional[PendingTx]:
        for rec in self.pending:
            if rec[0] == tx_id:
                return rec
        return None

    def settle(self, tx_id: str, label_ts: float, is_fraud: bool, account_id: str = "?",
               verdict: bool = False) -> tuple[str, Optional["JoinedLabel"]]:
        """A label (or a second verdict) for a transaction an analyst already answered:
        ``("duplicate", release or None)`` when there is nothing new to learn (the same answer,
        or the analyst's fraud, which a feed's legitimate label does not overturn), or
        ``("overturned", joined)`` when a fraud label corrects the analyst's legitimate
        verdict (learned as a fraud). A release tells ``await_labels`` to drop the features it
        kept for the correction that did not come.

        >>> from connectors.events import Transaction
        >>> acct = AccountProfile()
        >>> _ = acct.observe(Transaction("t-1", "c-1", 1522540800.0, 20.0, "m-1"))
        >>> acct.join_label("t-1", 1522555200.0, False, "c-1", verdict=True).keep  # the analyst: legitimate
        True
        >>> kind, joined = acct.settle("t-1", 1523145600.0, True, "c-1")  # a chargeback a week later
        >>> kind, joined.is_fraud, acct.pending
        ('overturned', True, [])
        >>> acct.settle("t-1", 1523145700.0, True, "c-1")  # the same chargeback again
        ('duplicate', None)
        """
        prior = self.verdict_for(tx_id)
        if prior or not is_fraud:
            rec = None if prior else self.take_pending(tx_id)
            release = None if rec is None else JoinedLabel(tx_id, rec[1], rec[2], label_ts, False, rec[3], account_id,
                                                           release=True)
            return "duplicate", release
        self._remember_verdict(tx_id, True)
        rec = self.take_pending(tx_id)
        if rec is None:  # its features are gone (retention): nothing to correct any more
            return "duplicate", None
        return "overturned", JoinedLabel(tx_id, rec[1], rec[2], label_ts, True, rec[3], account_id, verdict=verdict)

    def join_label(self, tx_id: str, label_ts: float, is_fraud: bool, account_id: str = "?",
                   origin: Optional[tuple] = None, verdict: bool = False) -> Optional["JoinedLabel"]:
        """Join a label to its pending transaction; hold it if the transaction is not here yet
        (``account_id`` and ``origin`` kept to name it if it never joins). ``verdict``: an
        analyst's, remembered (:meth:`settle` takes the labels that follow); a legitimate
        verdict keeps the pending transaction, so a chargeback can still correct it."""
        if verdict:
            self._remember_verdict(tx_id, is_fraud)
            rec = self._find_pending(tx_id) if not is_fraud else self.take_pending(tx_id)
        else:
            rec = self.take_pending(tx_id)
        if rec is None:
            self.orphans.append((tx_id, label_ts, is_fraud, account_id, origin, True) if verdict
                                else (tx_id, label_ts, is_fraud, account_id, origin))
            return None
        return JoinedLabel(tx_id, rec[1], rec[2], label_ts, is_fraud, rec[3], account_id, verdict=verdict,
                           keep=verdict and not is_fraud)

    def on_transaction(self, tx, retention_s: float, infer_negatives: bool = False, orphan_wait_s: float = math.inf,
                       lateness_s: float = HOUR) -> tuple[tuple[float, ...], list["JoinedLabel"], list]:
        """Features for ``tx``, then learn it; also join any label that arrived before it.

        Returns (features, joined labels, expired orphan labels). Orphan labels older than
        ``orphan_wait_s`` and pending records older than ``retention_s`` (event time) are dropped; with ``infer_negatives``
        (frauds-only feeds) a dropped pending transaction is returned as a joined label with
        ``is_fraud=None`` (legitimate, inferred), known as of ``tx``'s time. ``lateness_s``: see
        :meth:`update`.
        """
        f = self.features(tx)
        unexplained = self.update(tx, f, lateness_s)
        joined: list[JoinedLabel] = []
        expired: list = []
        if self.orphans:
            still = []
            for orphan in self.orphans:
                if orphan[0] == tx.tx_id and orphan[1] < tx.event_ts:  # stamped before its transaction
                    expired.append(orphan)
                elif orphan[0] == tx.tx_id:
                    verdict = len(orphan) > 5 and orphan[5]
                    keep = verdict and not orphan[2]
                    if not keep:
                        self.pending.pop()
                    joined.append(JoinedLabel(tx.tx_id, tx.event_ts, tx.terminal_id, orphan[1], orphan[2],
                                              unexplained, tx.account_id, verdict=verdict, keep=keep))
                elif orphan[1] < tx.event_ts - min(orphan_wait_s, retention_s):
                    expired.append(orphan)
                else:
                    still.append(orphan)
            self.orphans = still
        pending = self.pending
        if pending and pending[0][1] < tx.event_ts - retention_s:
            horizon = tx.event_ts - retention_s
            self.pending = [p for p in pending if p[1] >= horizon]
            answered = self.verdict_for if self.verdicts else None
            for p in pending:
                if p[1] >= horizon:
                    continue
                if answered is not None and answered(p[0]) is not None:
                    # an analyst answered it (legitimate: it was kept for a correction that did
                    # not come): learned then, not again now; its kept features are released
                    joined.append(JoinedLabel(p[0], p[1], p[2], tx.event_ts, False, p[3], tx.account_id,
                                              release=True))
                elif infer_negatives:
                    joined.append(JoinedLabel(p[0], p[1], p[2], tx.event_ts, None, p[3], tx.account_id))
        return f, joined, expired


class TerminalProfile:
    """Per-terminal state: daily transaction counts and released fraud labels.

    Risk over ``w`` days follows the handbook: frauds among the terminal's transactions in
    the ``w`` days that end ``delay_days`` before the transaction's day. A fraud counts only
    once its label is known, and — as for the model (``learners.scoring``) — known for a
    step of ``label_step_s``: it must be older than ``(floor(t / step) - 2) * step``, so
    labels still in flight between workers cannot change a feature (the default step of 0
    uses every label known at ``t``).

    >>> t = TerminalProfile(delay_days=7)
    >>> d0 = 1522540800.0
    >>> for i in range(4):
    ...     t.observe(d0 + i * 3600)  # four transactions on day 0
    ...     # doctest: +ELLIPSIS
    (...)
    (...)
    (...)
    (...)
    >>> t.add_fraud(tx_ts=d0, label_ts=d0 + 7 * DAY)
    >>> f = t.features(d0 + 7 * DAY + 60)
    >>> f[TERMINAL_FEATURES.index("term_risk_1d")]
    0.25
    >>> t.features(d0 + 7 * DAY - 60)[TERMINAL_FEATURES.index("term_risk_1d")]  # label not yet known
    0.0
    """

    __slots__ = ("delay", "step", "day", "counts", "frauds")

    def __init__(self, delay_days: int = 7, state: Optional[tuple] = None, label_step_s: float = 0.0) -> None:
        self.delay = delay_days
        self.step = label_step_s
        horizon = self._horizon
        if state is None:
            self.day = -1
            self.counts = array("I", bytes(4 * horizon))
            self.frauds: list[tuple[int, float, bool]] = []  # (tx day, label event_ts, unexplained)
        else:
            self.day, counts, frauds = state
            self.counts = array("I", counts)
            # (day, label time): saved before the unexplained flag (counted as unexplained)
            self.frauds = [f if len(f) > 2 else (*f, True) for f in frauds]

    @property
    def _horizon(self) -> int:
        return self.delay + max(WINDOWS) + 1

    def snapshot(self) -> tuple:
        return (self.day, self.counts.tobytes(), tuple(self.frauds))

    def _count(self, lo: int, hi: int) -> int:
        horizon = self._horizon
        lo = max(lo, self.day - horizon + 1)
        hi = min(hi, self.day)
        counts = self.counts
        return sum(counts[d % horizon] for d in range(lo, hi + 1))

    def features(self, event_ts: float) -> tuple[float, ...]:
        day = _day(event_ts)
        end = day - self.delay
        n_out: list[float] = []
        risk_out: list[float] = []
        cutoff = step_boundary(event_ts, self.step)
        known = [fr for fr in self.frauds if fr[1] <= cutoff]  # (tx day, label time, unexplained)
        for w in WINDOWS:
            n = self._count(end - w + 1, end)
            lo = end - w + 1
            f = sum(1 for fr in known if lo <= fr[0] <= end)
            n_out.append(float(n))
            risk_out.append(min(1.0, f / n) if n else 0.0)
        recent = [fr for fr in known if day - 30 - self.delay <= fr[0] <= day]
        recent_days = [fr[0] for fr in recent]
        if recent:
            since_first, since_last = float(day - min(recent_days)), float(day - max(recent_days))
        else:
            since_first = since_last = -1.0
        # Days with known frauds: one fraud (a stolen card's purchase) is not a compromised terminal.
        # Frauds unexplained by their card (an ordinary amount, no unusual spending on the card that
        # week): what a compromised terminal (a common point of compromise) leaves; a stolen card's
        # frauds come with its unusual spending.
        fraud_days = float(len(set(recent_days)))
        unexplained = sum(1 for fr in recent if fr[2])
        return (*n_out, *risk_out, math.log1p(len(recent)), since_first, since_last, fraud_days,
                math.log1p(unexplained))

    def update(self, event_ts: float) -> None:
        day = _day(event_ts)
        horizon = self._horizon
        if day > self.day:
            gap = day - self.day if self.day >= 0 else horizon
            for d in range(min(gap, horizon)):
                self.counts[(day - d) % horizon] = 0
            self.day = day
            oldest = day - horizon
            if self.frauds and self.frauds[0][0] < oldest:
                self.frauds = [f for f in self.frauds if f[0] >= oldest]
        if day > self.day - horizon:
            self.counts[day % horizon] += 1

    def observe(self, event_ts: float) -> tuple[float, ...]:
        f = self.features(event_ts)
        self.update(event_ts)
        return f

    def add_fraud(self, tx_ts: float, label_ts: float, unexplained: bool = True) -> None:
        """Record a released fraud label for a transaction on this terminal (``unexplained``: by
        its card, see :func:`unexplained_by_card`)."""
        fd = _day(tx_ts)
        if self.day >= 0 and fd < self.day - self._horizon:
            return  # too old to matter to any window
        self.frauds.append((fd, label_ts, unexplained))
        self.frauds.sort()
