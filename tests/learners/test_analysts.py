"""Analysts' feedback in the library: the simulated desk, and the account stage's memory of
verdicts (no double counting, corrections, frauds-only feeds, older snapshots)."""

from __future__ import annotations

import math
import pickle
import random

from connectors.events import Label, Origin, Transaction, Verdict, format_ts, parse_record
from learners.analysts import AlertCase, AnalystConfig, AnalystDesk
from learners.config import ModelConfig
from learners.features import ACCOUNT_FEATURES, AccountProfile
from learners.messages import FeaturedTransaction, JoinedLabel
from learners.stages import AccountStage, PendingStage, PipelineConfig, learn_at

D0 = 1522540800.0  # 2018-04-01T00:00:00Z
H = 3600.0
DAY = 86_400.0


# -- the contract ------------------------------------------------------------------------
def test_verdicts_parse_and_bad_ones_are_dead_letters():
    good = parse_record(b'{"alert_id": "a-1", "tx_id": "t-1", "account_id": "c-1", "ts": "2018-04-01T04:00:00+02:00",'
                        b' "verdict": "legitimate"}', Origin("feedback", 1))
    assert type(good) is Verdict and good.is_fraud is False and good.event_ts == D0 + 2 * H
    assert good.alert_id == "a-1" and good.origin == Origin("feedback", 1)
    for raw, category in [
        (b'{"alert_id": "a-1", "tx_id": "t-1", "account_id": "c-1", "ts": "2018-04-01T04:00:00Z", "verdict": "dunno"}',
         "invalid_verdict"),
        (b'{"alert_id": "a-1", "tx_id": "t-1", "ts": "2018-04-01T04:00:00Z", "verdict": "fraud"}', "invalid_verdict"),
        (b'{"alert_id": "a-1", "tx_id": "t-1", "account_id": "c-1", "ts": "2018-04-01T04:00:00", "verdict": "fraud"}',
         "invalid_verdict"),  # no zone
        (b'{"alert_id": "", "tx_id": "t-1", "account_id": "c-1", "ts": "2018-04-01T04:00:00Z", "verdict": "fraud"}',
         "invalid_verdict"),
        (b'{"alert_id": "a-1", "tx_id": "t-1", "account_id": "c-1", "ts": "2099-04-01T04:00:00Z", "verdict": "fraud"}',
         "bad_timestamp"),
    ]:
        dead = parse_record(raw, Origin("feedback", 2), "verdict")
        assert dead.category == category, (raw, dead.reason)
    # without a kind (the files source of older layouts, tests): told apart by the verdict field
    assert type(parse_record(b'{"alert_id": "a", "tx_id": "t", "account_id": "c", "ts": "2018-04-01T00:00:00Z", '
                             b'"verdict": "fraud"}', Origin("x", 1))) is Verdict


# -- the desk ------------------------------------------------------------------------------
def _case(i: int, ts: float, account: str) -> AlertCase:
    return AlertCase(ts, f"a-{i:04d}", f"t-{i:04d}", account)


def test_desk_capacity_delay_truth_and_one_case_per_card():
    rng = random.Random(3)
    cases = [_case(i, D0 + rng.uniform(0, 5 * DAY), f"c-{rng.randrange(40)}") for i in range(300)]
    frauds = {c.tx_id for c in cases if rng.random() < 0.4}
    desk = AnalystDesk(AnalystConfig(capacity=7, delay_s=4 * H), frauds)
    desk.receive(cases)
    verdicts = desk.decide(math.inf)
    by_day: dict[int, int] = {}
    for v in verdicts:
        by_day[int((v.event_ts - 4 * H) // DAY)] = by_day.get(int((v.event_ts - 4 * H) // DAY), 0) + 1
    assert by_day and max(by_day.values()) == 7  # capacity reached, never passed
    alerts = {c.alert_id: c for c in cases}
    for v in verdicts:
        assert v.event_ts == alerts[v.alert_id].ts + 4 * H  # answered after the delay, in event time
        assert v.is_fraud == (v.tx_id in frauds)  # with the truth
    # first come first served within a day: the cards taken are the day's earliest that were free
    day0 = sorted((c for c in cases if c.ts < D0 + DAY), key=lambda c: c.ts)
    taken0 = [alerts[v.alert_id] for v in verdicts if alerts[v.alert_id].ts < D0 + DAY]
    assert taken0[0] == day0[0]
    assert all(t.ts <= max(x.ts for x in taken0) for t in taken0)
    # a card is never taken twice a day, nor while its case is open
    seen: dict[str, list[float]] = {}
    for v in sorted(verdicts, key=lambda v: v.event_ts):
        ts = alerts[v.alert_id].ts
        for earlier in seen.get(v.account_id, []):
            assert int(earlier // DAY) != int(ts // DAY) and earlier + 4 * H <= ts
        seen.setdefault(v.account_id, []).append(ts)
    assert desk.counts["taken"] == len(verdicts) and desk.counts["over_capacity"] + desk.counts["card_busy"] > 0


def test_desk_decisions_do_not_depend_on_the_order_alerts_arrive_in():
    rng = random.Random(5)
    cases = [_case(i, D0 + rng.uniform(0, 3 * DAY), f"c-{rng.randrange(20)}") for i in range(200)]
    runs = []
    for seed in (1, 2):
        shuffled = cases[:]
        random.Random(seed).shuffle(shuffled)
        desk = AnalystDesk(AnalystConfig(capacity=10, delay_s=2 * H), frozenset())
        desk.receive(shuffled)
        runs.append([v.alert_id for v in desk.decide(math.inf)])
    assert runs[0] == runs[1] and len(runs[0]) > 10


def test_desk_decides_in_rounds_only_what_is_complete():
    desk = AnalystDesk(AnalystConfig(capacity=5, delay_s=H), frozenset())
    desk.receive([_case(1, D0 + 10, "c-1"), _case(2, D0 + 5 * H, "c-2")])
    assert [v.tx_id for v in desk.decide(D0 + H)] == ["t-0001"]  # the later alert waits for its round
    assert desk.undecided == 1 and desk.peek_due().event_ts == D0 + 10 + H
    assert [v.tx_id for v in desk.decide(math.inf)] == ["t-0002"]


def test_a_case_goes_over_the_cards_transactions_of_the_review_window_each_once():
    """Decisions 0066 and 0067: the alerted transaction and the card's others from review_s
    before the alert up to the verdict, each answered once (also by a later case on the card),
    all at the verdict time; other cards' transactions, the card's ones from the verdict on and
    ones whose label came before the verdict are not answered."""
    desk = AnalystDesk(AnalystConfig(capacity=10, delay_s=4 * H, review_s=2 * DAY), frauds={"x-2", "x-4", "a-2"})

    class _Scored:  # what on_scored reads of the flow's Scored
        def __init__(self, tx_id, account, ts):
            self.tx, self.candidate = Transaction(tx_id, account, ts, 10.0, "m-1"), False

    history = [("x-0", "c-1", D0), ("x-1", "c-1", D0 + 1.5 * DAY), ("x-2", "c-1", D0 + 2.5 * DAY),
               ("y-1", "c-2", D0 + 2.6 * DAY), ("x-3", "c-1", D0 + 3 * DAY), ("x-3b", "c-1", D0 + 3 * DAY + 2 * H),
               ("x-4", "c-1", D0 + 3 * DAY + 4 * H), ("x-5", "c-1", D0 + 3.3 * DAY)]
    for tx_id, account, ts in history:  # as the replay loop emits them; the flow counts them when scored
        desk.on_transaction(Transaction(tx_id, account, ts, 10.0, "m-1"))
        desk.on_scored(_Scored(tx_id, account, ts))
    assert desk.processed == len(history)  # the replay loop's drain count
    assert desk.decide(D0 + 3.1 * DAY) == []  # no alert yet
    desk.receive([AlertCase(D0 + 3 * DAY, "a-1", "x-3", "c-1")])
    first = desk.decide(D0 + 3.1 * DAY)
    assert [(v.tx_id, v.is_fraud, v.event_ts) for v in first] == [("x-3", False, D0 + 3 * DAY + 4 * H)]
    # the window is read when the verdict is handed out: x-0 is older than 2 days before the
    # alert, y-1 is another card's, x-3b came between the alert and the verdict, x-4 with it
    assert [desk.pop_due().tx_id for _ in range(4)] == ["x-3", "x-1", "x-2", "x-3b"]
    assert {v.event_ts for v in desk.answered} == {D0 + 3 * DAY + 4 * H}
    assert {v.alert_id for v in desk.answered} == {"a-1"}
    assert desk.peek_due() is None
    assert desk.counts["taken"] == 1 and desk.counts["reviewed"] == 3 and desk.counts["reviewed_fraud"] == 1
    desk.on_transaction(Transaction("a-2", "c-1", D0 + 4.5 * DAY, 10.0, "m-1"))
    desk.receive([AlertCase(D0 + 4.5 * DAY, "a-2", "a-2", "c-1")])
    assert [v.tx_id for v in desk.decide(math.inf)] == ["a-2"]
    # a later case on the card: x-4 and x-5 are new, x-1..x-3b were answered
    desk.on_label(Label("x-5", "c-1", D0 + 4.5 * DAY + 4 * H, False))  # its chargeback feed beat the case: settled
    desk.on_label(Label("x-4", "c-1", D0 + 4.5 * DAY + 5 * H, True))  # after the verdict: answered
    assert [desk.pop_due().tx_id for _ in range(2)] == ["a-2", "x-4"] and desk.peek_due() is None
    assert desk.counts["reviewed_settled"] == 1
    assert [v.tx_id for v in desk.answered] == ["x-3", "x-1", "x-2", "x-3b", "a-2", "x-4"]
    assert "and 4 on the cards' other transactions from 2 days before the alert to the verdict (2 fraud)" \
        in desk.summary()


def test_the_replay_loop_pops_a_case_only_after_the_transactions_before_its_verdict():
    """Decision 0067: the loop hands the desk every transaction before a verdict's ts before it
    pops the verdict, so the case's window includes the card's transactions up to the verdict."""
    from connectors.sources import AnalystLoop

    desk = AnalystDesk(AnalystConfig(capacity=10, delay_s=4 * H, review_s=DAY), frauds={"t-2"})
    # rounds: the first emits t-0 and t-1 (alerted) up to D0 + 4 h; the second decides the alert
    # (verdict at D0 + 7 h) and then emits t-2, which the case must still go over
    events = [Transaction("t-0", "c-1", D0, 10.0, "m-1"), Transaction("t-1", "c-1", D0 + 3 * H, 10.0, "m-1"),
              Transaction("t-2", "c-1", D0 + 5 * H, 10.0, "m-1"), Transaction("t-3", "c-1", D0 + 7 * H, 10.0, "m-1")]

    class _Merged:
        def __init__(self, items):
            self.items = list(items)

        def peek(self):
            return self.items[0] if self.items else None

        def __next__(self):
            return self.items.pop(0)

        def next_transaction_ts(self):
            return self.items[0].event_ts if self.items else math.inf

    loop = AnalystLoop(_Merged(events), desk)
    out = []
    while not loop.finished:
        if not loop.advance():
            continue
        while loop.peek() is not None:
            event = next(loop)
            out.append(event.tx_id)
            if type(event) is Transaction:  # the flow scores it
                if event.tx_id == "t-1":  # the alert policy's hand-off
                    desk.on_alerts([{"alert_id": "a-1", "tx_id": "t-1", "account_id": "c-1",
                                     "ts": format_ts(D0 + 3 * H)}], 1)
                else:
                    desk.on_scored(type("S", (), {"candidate": False, "tx": event})())
    # t-0 (before the alert) and t-2 (between it and the verdict) are answered at the verdict;
    # t-3 (at it) comes after
    assert out == ["t-0", "t-1", "t-2", "t-1", "t-0", "t-2", "t-3"]
    assert [(v.tx_id, v.is_fraud, v.event_ts) for v in desk.answered] == [
        ("t-1", False, D0 + 7 * H), ("t-0", False, D0 + 7 * H), ("t-2", True, D0 + 7 * H)]


# -- the account stage: no double counting -------------------------------------------------
def _tx(i: int, ts: float) -> Transaction:
    return Transaction(f"t-{i}", "c-1", ts, 20.0 + i, "m-1")


class _Count:
    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}

    def confirm(self, tx_id): pass
    def awaiting(self, delta): pass
    def unmatched(self, n): pass
    def scored(self, scored, shard): pass
    def alerted(self, alerts, suppressed): pass

    def feedback(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


def _account(label_mode: str = "all"):
    stats = _Count()
    config = PipelineConfig(model=ModelConfig(label_mode=label_mode))
    return AccountStage(config, stats=stats), stats, config


def _joined(out):
    return [m for m in out if type(m) is JoinedLabel]


def test_a_chargeback_after_a_verdict_is_not_learned_again_nor_a_dead_letter():
    stage, stats, _ = _account()
    stage.on_batch([(0, _tx(1, D0)), (0, _tx(2, D0 + H))])
    [j] = _joined(stage.on_batch([(0, Verdict("a-1", "t-1", "c-1", D0 + 4 * H, True))]))
    assert j.is_fraud and j.verdict and not j.keep
    later = stage.on_batch([(0, Label("t-1", "c-1", D0 + 7 * DAY, True))])
    assert later == []  # dropped quietly: no example, no dead letter
    assert stats.kinds == {"verdicts": 1, "labels_duplicate": 1}
    stage.on_batch([(0, _tx(3, D0 + 8 * DAY))])
    assert stage.on_eof() == []  # nothing left as an orphan


def test_an_analysts_fraud_verdict_is_known_to_the_cards_later_transactions_only():
    """Decision 0068: a fraud verdict (or chargeback) is a known fraud of the card for its
    transactions two learning steps (1 h) after the verdict's ts, never before; a legitimate
    verdict is not, and the chargeback that repeats the fraud verdict adds nothing."""
    since = ACCOUNT_FEATURES.index("acct_days_since_known_fraud")
    stage, _, _ = _account()

    def feature(*events):
        return [m.features[since] for m in stage.on_batch([(0, e) for e in events]) if type(m) is FeaturedTransaction]

    assert feature(_tx(1, D0), _tx(2, D0 + H)) == [-1.0, -1.0]
    stage.on_batch([(0, Verdict("a-1", "t-1", "c-1", D0 + 4 * H, True)),
                    (0, Verdict("a-1", "t-2", "c-1", D0 + 4 * H, False))])
    assert feature(_tx(3, D0 + 5 * H), _tx(4, D0 + 6 * H), _tx(5, D0 + 2 * DAY)) == [-1.0, 0.0, 2.0]
    stage.on_batch([(0, Label("t-1", "c-1", D0 + 7 * DAY, True))])  # the chargeback, a duplicate
    assert stage.profile.known_frauds == [(int(D0 // DAY), D0 + 4 * H)]


def test_a_busy_card_reviewed_by_analysts_has_every_chargeback_settled():
    # decision 0066: a case answers the card's recent transactions too, so a busy compromised
    # card gets scores of verdicts before the first chargeback arrives (the published simulator:
    # up to 88 transactions of a card in 14 days); none of them may become a dead letter
    stage, stats, _ = _account()
    n = 90
    stage.on_batch([(0, _tx(i, D0 + i * 2 * H)) for i in range(n)])
    verdicts = [(0, Verdict(f"a-{i}", f"t-{i}", "c-1", D0 + i * 2 * H + 4 * H, True)) for i in range(n)]
    assert len(_joined(stage.on_batch(verdicts))) == n
    later = stage.on_batch([(0, Label(f"t-{i}", "c-1", D0 + i * 2 * H + 7 * DAY, True)) for i in range(n)])
    assert later == [] and stats.kinds == {"verdicts": n, "labels_duplicate": n}
    stage.on_batch([(0, _tx(n, D0 + 30 * DAY))])
    assert stage.on_eof() == []  # nothing left as an orphan


def test_a_fraud_chargeback_overturns_a_legitimate_verdict_once():
    stage, stats, _ = _account()
    stage.on_batch([(0, _tx(1, D0))])
    [legit] = _joined(stage.on_batch([(0, Verdict("a-1", "t-1", "c-1", D0 + 4 * H, False))]))
    assert legit.is_fraud is False and legit.keep  # await_labels keeps the features for a correction
    [fraud] = _joined(stage.on_batch([(0, Label("t-1", "c-1", D0 + 7 * DAY, True))]))
    assert fraud.is_fraud and not fraud.release
    assert stage.on_batch([(0, Label("t-1", "c-1", D0 + 7 * DAY + 60, True))]) == []  # a repeat: dropped
    assert stats.kinds == {"verdicts": 1, "labels_overturning_verdict": 1, "labels_duplicate": 1}


def test_a_legitimate_label_never_overturns_an_analysts_fraud():
    stage, stats, _ = _account()
    stage.on_batch([(0, _tx(1, D0))])
    stage.on_batch([(0, Verdict("a-1", "t-1", "c-1", D0 + 4 * H, True))])
    assert stage.on_batch([(0, Label("t-1", "c-1", D0 + 7 * DAY, False))]) == []
    assert stats.kinds["labels_duplicate"] == 1


def test_await_labels_learns_each_transaction_once_through_a_correction():
    config = PipelineConfig()
    bucket = PendingStage(config)
    from learners.messages import FeaturedTransaction
    from learners.features import FEATURE_NAMES

    tx = _tx(1, D0)
    bucket.on_batch([FeaturedTransaction(tx, tuple(0.5 for _ in FEATURE_NAMES), 0)])
    first = bucket.on_batch([JoinedLabel("t-1", D0, "m-1", D0 + 4 * H, False, True, "c-1", verdict=True, keep=True)])
    assert [e.is_fraud for e in first] == [False] and not bucket.done
    second = bucket.on_batch([JoinedLabel("t-1", D0, "m-1", D0 + 7 * DAY, True, True, "c-1")])
    assert [e.is_fraud for e in second] == [True] and bucket.done
    # the other way: the verdict stood, and the account releases the kept features
    bucket = PendingStage(config)
    bucket.on_batch([FeaturedTransaction(tx, tuple(0.5 for _ in FEATURE_NAMES), 0)])
    bucket.on_batch([JoinedLabel("t-1", D0, "m-1", D0 + 4 * H, False, True, "c-1", verdict=True, keep=True)])
    assert bucket.on_batch([JoinedLabel("t-1", D0, "m-1", D0 + 7 * DAY, False, True, "c-1", release=True)]) == []
    assert bucket.done


def test_frauds_only_a_legitimate_verdict_is_learned_then_and_not_again_at_the_timeout():
    stage, stats, config = _account("frauds")
    stage.on_batch([(0, _tx(1, D0)), (0, _tx(2, D0 + H))])
    [j] = _joined(stage.on_batch([(0, Verdict("a-1", "t-1", "c-1", D0 + 4 * H, False))]))
    assert learn_at(j, config) == D0 + 4 * H  # learned at the verdict
    fraud = _joined(stage.on_batch([(0, Verdict("a-2", "t-2", "c-1", D0 + 5 * H, True))]))[0]
    assert learn_at(fraud, config) == D0 + 5 * H  # verdicts are not delayed to the time-out (decision 0050)
    out = _joined(stage.on_batch([(0, _tx(3, D0 + 9 * DAY))]))  # past the 8-day time-out
    assert [(m.tx_id, m.is_fraud, m.release) for m in out] == [("t-1", False, True)]  # released, not inferred


def test_account_state_with_verdicts_stays_small_and_older_snapshots_load():
    acct = AccountProfile()
    for i in range(200):
        acct.observe(_tx(i, D0 + i * 3 * H))
    for i in range(200):
        acct.join_label(f"t-{i}", D0 + i * 3 * H + H, i % 2 == 0, "c-1", verdict=True)
    assert len(acct.verdicts) == AccountProfile.MAX_VERDICTS
    restored = AccountProfile(pickle.loads(pickle.dumps(acct.snapshot())))
    assert restored.snapshot() == acct.snapshot() and restored.verdict_for("t-199") is False
    assert restored.verdict_for("t-198") is True and restored.verdict_for("t-0") is None  # the oldest fell out
    verdict_bytes = len(pickle.dumps(acct.snapshot()[:12])) - len(pickle.dumps(acct.snapshot()[:11]))
    assert verdict_bytes <= 4 * AccountProfile.MAX_VERDICTS + 8
    old = acct.snapshot()[:11]  # saved before the verdicts
    assert AccountProfile.is_snapshot(old) and AccountProfile.is_snapshot(acct.snapshot())
    assert AccountProfile(old).verdicts.tolist() == []
