"""Features against hand-computed examples, event-time semantics, and state size."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from connectors.events import Transaction
from learners.features import (
    ACCOUNT_FEATURES, DAY, FEATURE_NAMES, TERMINAL_FEATURES, AccountProfile, TerminalProfile, transaction_features,
)

D0 = 1522540800.0  # 2018-04-01T00:00:00Z, a Sunday


def tx(i: int, ts: float, amount: float, terminal: str = "m-1", account: str = "c-1") -> Transaction:
    return Transaction(f"t-{i}", account, ts, amount, terminal)


def feat(values: tuple, name: str, names=ACCOUNT_FEATURES) -> float:
    return values[names.index(name)]


def test_transaction_features_weekend_and_night():
    monday_noon = D0 + DAY + 12 * 3600
    assert transaction_features(10.0, monday_noon)[2:] == (0.0, 0.0)
    saturday_3am = D0 + 6 * DAY + 3 * 3600
    assert transaction_features(10.0, saturday_3am)[2:] == (1.0, 1.0)
    assert transaction_features(10.0, D0 + DAY + 7 * 3600)[3] == 0.0  # 07:00 is day time
    assert transaction_features(0.0, D0)[1] == 0.0


def test_account_windows_count_and_mean_by_day():
    acct = AccountProfile()
    # day 0: 10, 20 ; day 3: 30 ; day 20: 40 ; then a transaction on day 25 of 50
    for i, (d, amount) in enumerate([(0, 10.0), (0, 20.0), (3, 30.0), (20, 40.0)]):
        acct.observe(tx(i, D0 + d * DAY + 3600, amount))
    f = acct.features(tx(9, D0 + 25 * DAY + 7200, 50.0))
    assert feat(f, "acct_nb_tx_1d") == 0.0 and feat(f, "acct_avg_amount_1d") == 0.0
    assert feat(f, "acct_nb_tx_7d") == 1.0 and feat(f, "acct_avg_amount_7d") == 40.0  # days 19..25
    assert feat(f, "acct_nb_tx_30d") == 4.0 and feat(f, "acct_avg_amount_30d") == 25.0  # days -4..25
    later = acct.features(tx(10, D0 + 33 * DAY, 50.0))  # day 33 window 4..33 drops day 0 and 3
    assert feat(later, "acct_nb_tx_30d") == 1.0 and feat(later, "acct_avg_amount_30d") == 40.0


def test_account_robust_amount_signals():
    acct = AccountProfile()
    amounts = [20.0, 22.0, 18.0, 21.0, 19.0]  # median 20, MAD 1
    for i, amount in enumerate(amounts):
        acct.observe(tx(i, D0 + i * 3600, amount))
    f = acct.features(tx(9, D0 + 10 * 3600, 100.0))
    assert feat(f, "acct_amount_log_ratio_median") == pytest.approx(math.log(101 / 21))
    # (100 - 20) / (1.4826 * 1 + 0.05 * 20 + 1) = 23.6, clipped at 20
    assert feat(f, "acct_amount_robust_z") == 20.0
    normal = acct.features(tx(10, D0 + 10 * 3600, 21.0))
    assert feat(normal, "acct_amount_robust_z") == pytest.approx(1 / 3.4826, rel=1e-6)


def test_robust_profile_is_not_taken_over_by_a_burst_of_fraud():
    acct = AccountProfile()
    for i in range(12):
        acct.observe(tx(i, D0 + i * 3600, 20.0 + (i % 3)))
    for i in range(12, 16):  # four stolen-card transactions at five times the habit
        acct.observe(tx(i, D0 + i * 3600, 105.0))
    f = acct.features(tx(99, D0 + 20 * 3600, 105.0))
    assert feat(f, "acct_amount_robust_z") > 10  # still far from the (robust) habit


def test_previous_transaction_and_new_terminal():
    acct = AccountProfile()
    first = acct.observe(tx(0, D0, 5.0, "m-1"))
    assert feat(first, "acct_log_secs_since_prev") == -1.0 and feat(first, "acct_new_terminal") == 1.0
    f = acct.observe(tx(1, D0 + 600, 5.0, "m-1"))
    assert feat(f, "acct_log_secs_since_prev") == pytest.approx(math.log1p(600))
    assert feat(f, "acct_new_terminal") == 0.0
    assert feat(acct.features(tx(2, D0 + 700, 5.0, "m-2")), "acct_new_terminal") == 1.0


def test_terminal_risk_counts_only_released_labels():
    term = TerminalProfile(delay_days=7)
    for i in range(4):
        term.observe(D0 + i * 3600)  # 4 transactions on day 0
    term.observe(D0 + 2 * DAY)  # 1 on day 2
    term.add_fraud(tx_ts=D0, label_ts=D0 + 7 * DAY)
    term.add_fraud(tx_ts=D0 + 2 * DAY, label_ts=D0 + 9 * DAY)

    def risk(t: float, w: int) -> float:
        return term.features(t)[TERMINAL_FEATURES.index(f"term_risk_{w}d")]

    at_day7 = D0 + 7 * DAY + 60
    assert risk(at_day7, 1) == 0.25  # window = day 0: 1 fraud of 4
    assert risk(at_day7, 7) == 0.25  # days -6..0
    at_day9 = D0 + 9 * DAY + 60
    assert risk(at_day9, 1) == 1.0  # day 2: 1 of 1
    assert risk(at_day9, 7) == 2 / 5  # days -4..2
    assert risk(D0 + 9 * DAY - 60, 7) == 0.25  # day 8: window ends on day 1; second label not known
    n7 = term.features(at_day9)[TERMINAL_FEATURES.index("term_nb_tx_7d")]
    assert n7 == 5.0
    since = term.features(at_day9)
    assert since[TERMINAL_FEATURES.index("term_days_since_first_known_fraud")] == 9.0
    assert since[TERMINAL_FEATURES.index("term_days_since_last_known_fraud")] == 7.0
    assert since[TERMINAL_FEATURES.index("term_known_fraud_days")] == 2.0  # day 0 and day 2
    term.add_fraud(tx_ts=D0 + 3600, label_ts=D0 + 7 * DAY + 3600)  # a second fraud on day 0
    assert term.features(at_day9)[TERMINAL_FEATURES.index("term_known_fraud_days")] == 2.0  # still two days
    assert term.features(at_day7)[TERMINAL_FEATURES.index("term_known_fraud_days")] == 1.0  # one known then


def test_label_arrival_order_does_not_change_terminal_features():
    early, late = TerminalProfile(7), TerminalProfile(7)
    early.add_fraud(tx_ts=D0, label_ts=D0 + 7 * DAY)  # label first (no look-ahead must hold)
    for t in (early, late):
        for i in range(3):
            t.observe(D0 + i * 600)
    late.add_fraud(tx_ts=D0, label_ts=D0 + 7 * DAY)
    for t_query in (D0 + 3 * DAY, D0 + 7 * DAY - 1, D0 + 7 * DAY, D0 + 8 * DAY):
        assert early.features(t_query) == late.features(t_query)


def test_label_join_and_orphans():
    acct = AccountProfile()
    assert acct.join_label("t-5", D0 + 7 * DAY, True) is None  # label before its transaction
    f, joined, expired = acct.on_transaction(tx(5, D0, 10.0, "m-7"), retention_s=8 * DAY)
    assert [(j.tx_id, j.terminal_id, j.is_fraud, j.tx_ts) for j in joined] == [("t-5", "m-7", True, D0)]
    assert acct.pending == [] and expired == []
    acct.on_transaction(tx(6, D0 + 60, 10.0, "m-8"), retention_s=8 * DAY)
    j = acct.join_label("t-6", D0 + 7 * DAY, False)
    assert j.terminal_id == "m-8" and not j.is_fraud


def test_stale_pending_and_orphans_expire():
    acct = AccountProfile()
    acct.join_label("t-unknown", D0, True)
    acct.on_transaction(tx(1, D0, 10.0), retention_s=DAY)
    _, _, expired = acct.on_transaction(tx(2, D0 + 2 * DAY, 10.0), retention_s=DAY)
    assert [o[0] for o in expired] == ["t-unknown"]
    assert [p[0] for p in acct.pending] == ["t-2"]  # t-1 waited longer than the retention


def test_snapshot_round_trip_and_size_per_account(small_stream):
    """Per-account state stays at or below 1 KB pickled (DESIGN: tens of millions of accounts)."""
    events, _ = small_stream
    profiles: dict[str, AccountProfile] = {}
    sizes = []
    for e in events:
        if isinstance(e, Transaction):
            p = profiles.setdefault(e.account_id, AccountProfile())
            p.on_transaction(e, retention_s=8 * DAY)
        else:
            profiles[e.account_id].join_label(e.tx_id, e.event_ts, e.is_fraud)
    for p in profiles.values():
        blob = pickle.dumps(p.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)
        sizes.append(len(blob))
        restored = AccountProfile(pickle.loads(blob))
        probe = tx(999, p.last_ts + 60, 42.0, "m-3")
        assert restored.features(probe) == p.features(probe)
    sizes.sort()
    assert sizes[len(sizes) // 2] <= 1024, f"median {sizes[len(sizes) // 2]} B"
    assert sizes[int(len(sizes) * 0.95)] <= 1024, f"p95 {sizes[int(len(sizes) * 0.95)]} B"


def test_feature_vector_has_unique_names():
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)


def test_frauds_only_feed_infers_legitimate_when_the_card_moves_on():
    acct = AccountProfile()
    acct.on_transaction(tx(1, D0, 10.0, "m-1"), retention_s=8 * DAY, infer_negatives=True)
    acct.on_transaction(tx(2, D0 + DAY, 10.0, "m-2"), retention_s=8 * DAY, infer_negatives=True)
    assert acct.join_label("t-2", D0 + 8 * DAY, True).is_fraud  # a fraud label came in time
    _, joined, _ = acct.on_transaction(tx(3, D0 + 9 * DAY, 10.0, "m-3"), retention_s=8 * DAY, infer_negatives=True)
    # t-1 waited 8 days without a fraud label: legitimate, known as of t-3's time
    assert [(j.tx_id, j.terminal_id, j.label_ts, j.is_fraud) for j in joined] == [("t-1", "m-1", D0 + 9 * DAY, None)]


def test_frauds_unexplained_by_their_card_count_as_a_point_of_compromise():
    # A card with a steady habit: a purchase at its usual amount, one at twenty times it, then
    # usual amounts the next day (that week had unusual spending) and nine days later (it had not).
    acct = AccountProfile()
    for i, amount in enumerate([20.0, 22.0, 18.0, 21.0, 19.0]):
        acct.on_transaction(tx(i, D0 + i * 3600, amount), retention_s=30 * DAY)
    unusual_7d = ACCOUNT_FEATURES.index("acct_nb_unusual_7d")
    f10, _, _ = acct.on_transaction(tx(10, D0 + DAY, 21.0, "m-shop"), retention_s=30 * DAY)
    f11, _, _ = acct.on_transaction(tx(11, D0 + DAY + 60, 400.0, "m-shop"), retention_s=30 * DAY)
    f12, _, _ = acct.on_transaction(tx(12, D0 + 2 * DAY, 20.0, "m-shop"), retention_s=30 * DAY)
    f13, _, _ = acct.on_transaction(tx(13, D0 + 9 * DAY, 20.0, "m-shop"), retention_s=30 * DAY)
    assert [f[unusual_7d] for f in (f10, f11, f12, f13)] == [0.0, 0.0, 1.0, 0.0]  # before each purchase
    new_high = ACCOUNT_FEATURES.index("acct_amount_new_high")
    assert [f[new_high] for f in (f10, f11, f12, f13)] == [0.0, 1.0, 0.0, 0.0]
    joined = [acct.join_label(f"t-{i}", D0 + 16 * DAY, True) for i in (10, 11, 12, 13)]
    # another card of the same habit: 23 is within it (robust z < 3) but above each recent amount
    other = AccountProfile()
    for i, amount in enumerate([20.0, 22.0, 18.0, 21.0, 19.0]):
        other.on_transaction(tx(20 + i, D0 + i * 3600, amount), retention_s=30 * DAY)
    f14, _, _ = other.on_transaction(tx(14, D0 + DAY, 23.0, "m-shop"), retention_s=30 * DAY)
    assert f14[new_high] == 1.0 and f14[ACCOUNT_FEATURES.index("acct_amount_robust_z")] < 3
    joined.append(other.join_label("t-14", D0 + 16 * DAY, True))
    assert [j.unexplained for j in joined] == [True, False, False, True, False]

    term = TerminalProfile(delay_days=7)
    for j in joined:
        term.add_fraud(j.tx_ts, j.label_ts, j.unexplained)
    f = term.features(D0 + 17 * DAY)
    assert f[TERMINAL_FEATURES.index("term_log_known_frauds_30d")] == pytest.approx(math.log1p(5))
    assert f[TERMINAL_FEATURES.index("term_log_unexplained_known_frauds_30d")] == pytest.approx(math.log1p(2))


def test_profiles_saved_before_the_unexplained_flag_restore():
    acct = AccountProfile()
    acct.on_transaction(tx(1, D0, 10.0, "m-7"), retention_s=8 * DAY)
    state = list(acct.snapshot())[:10]  # saved before the unusual-amount counts
    state[8] = tuple(p[:3] for p in state[8])  # and pending records were (tx_id, ts, terminal_id)
    old = AccountProfile(tuple(state))
    assert old.join_label("t-1", D0 + 7 * DAY, True).unexplained  # unknown: counted as unexplained
    f = old.features(tx(2, D0 + 600, 10.0, "m-7"))
    assert f[ACCOUNT_FEATURES.index("acct_nb_unusual_7d")] == 0.0
    assert AccountProfile(old.snapshot()).snapshot() == old.snapshot()
    d0 = int(D0 // DAY)
    # frauds were (day, label ts)
    term = TerminalProfile(delay_days=7, state=(d0, bytes(4 * 38), ((d0, D0 + 7 * DAY),)))
    f = term.features(D0 + 8 * DAY)
    assert f[TERMINAL_FEATURES.index("term_log_unexplained_known_frauds_30d")] == pytest.approx(math.log1p(1))


def test_describe_gives_the_habit_the_features_use():
    acct = AccountProfile()
    day0 = 1522540800.0
    amounts = [20.0, 22.0, 18.0, 35.0, 21.0, 19.5]
    for i, amount in enumerate(amounts):
        acct.observe(Transaction(f"t-{i}", "c-1", day0 + 86_400 * (i // 2) + 3600 * i, amount, "m-1"))
    held = acct.describe()
    assert [d["transactions"] for d in held["daily"]] == [2, 2, 2]
    assert sum(d["amount"] for d in held["daily"]) == pytest.approx(sum(amounts))
    assert held["amounts"] == amounts and held["transactions_seen"] == len(amounts)
    assert held["median"] == 20.5 and held["mad"] == 1.25
    probe = Transaction("t-9", "c-1", day0 + 3 * 86_400, 90.0, "m-2")
    z = acct.features(probe)[ACCOUNT_FEATURES.index("acct_amount_robust_z")]
    assert z == (90.0 - held["median"]) / held["robust_scale"]  # the very scale the feature divides by
    assert AccountProfile.is_snapshot(acct.snapshot())
    assert not AccountProfile.is_snapshot((1, b"", 2.0)) and not AccountProfile.is_snapshot(acct.snapshot()[:9])


# -- the card's last hour: the rules' velocity fields (decision 0063) -------------------------
H = 3600.0


def hour_then_learn(acct: AccountProfile, t: Transaction, lateness_s: float = H) -> tuple[float, float]:
    """What the account stage does per transaction: the last hour before it, then learn it."""
    before = acct.last_hour(t.event_ts)
    acct.on_transaction(t, retention_s=8 * DAY, lateness_s=lateness_s)
    return before


def test_last_hour_counts_the_history_before_the_transaction_not_itself():
    acct = AccountProfile()
    assert hour_then_learn(acct, tx(1, D0, 10.0)) == (0.0, 0.0)  # nothing before it, and not itself
    assert hour_then_learn(acct, tx(2, D0 + 600, 25.0)) == (1.0, 10.0)
    assert hour_then_learn(acct, tx(3, D0 + 600, 7.5)) == (2.0, 35.0)  # the same second, read before it: history
    assert acct.last_hour(D0 + 600) == (3.0, 42.5)
    assert "acct_nb_tx_1h" not in FEATURE_NAMES and "acct_sum_amount_1h" not in FEATURE_NAMES
    assert len(acct.features(tx(4, D0 + 900, 1.0))) == len(ACCOUNT_FEATURES)  # the model's inputs are unchanged


def test_last_hour_includes_exactly_one_hour_before_and_nothing_older():
    acct = AccountProfile()
    hour_then_learn(acct, tx(1, D0, 10.0))
    hour_then_learn(acct, tx(2, D0 + 1800, 20.0))
    assert acct.last_hour(D0 + H) == (2.0, 30.0)  # D0 is exactly one hour before: in
    assert acct.last_hour(D0 + H + 0.5) == (1.0, 20.0)  # half a second more: out
    assert hour_then_learn(acct, tx(3, D0 + H, 5.0)) == (2.0, 30.0)  # the same through the flow's path
    assert hour_then_learn(acct, tx(4, D0 + 1800 + H, 1.0)) == (2.0, 25.0)  # D0 + 1800 is an hour back: in
    assert hour_then_learn(acct, tx(5, D0 + DAY, 1.0)) == (0.0, 0.0)
    assert len(acct.hourly) == 2  # a day later only the latest is kept


def test_last_hour_out_of_order_within_the_lateness():
    acct = AccountProfile()
    hour_then_learn(acct, tx(1, D0, 10.0))
    hour_then_learn(acct, tx(2, D0 + 3000, 20.0))
    hour_then_learn(acct, tx(3, D0 + 4000, 40.0))  # the card's latest
    # 500 s late: counts D0 (more than an hour before the latest, still kept) and D0 + 3000,
    # not D0 + 4000 (later in event time, though read before it)
    assert hour_then_learn(acct, tx(4, D0 + 3500, 80.0)) == (2.0, 30.0)
    # the late one is kept in its place: the next transaction counts it
    assert hour_then_learn(acct, tx(5, D0 + 4100, 1.0)) == (3.0, 140.0)  # from D0 + 500: not D0
    assert list(acct.hourly[::2]) == sorted(acct.hourly[::2])
    # more than the lateness behind the latest: counted from what is kept, and not kept itself
    assert hour_then_learn(acct, tx(6, D0 + 4100 - 2 * H - 1, 1000.0)) == (0.0, 0.0)
    assert D0 + 4100 - 2 * H - 1 not in acct.hourly[::2]
    # a longer lateness keeps more
    slow = AccountProfile()
    for i, dt in enumerate([0.0, 3000.0, 4.5 * H]):
        hour_then_learn(slow, tx(i, D0 + dt, 10.0), lateness_s=4 * H)
    assert hour_then_learn(slow, tx(9, D0 + 3300, 1.0), lateness_s=4 * H) == (2.0, 20.0)


def test_last_hour_saturates_at_what_it_keeps():
    acct = AccountProfile()
    cap = AccountProfile.MAX_LAST_HOUR
    amounts = [float(i + 1) for i in range(cap + 8)]
    for i, amount in enumerate(amounts):  # one a minute: every one within the hour
        hour_then_learn(acct, tx(i, D0 + 60 * i, amount))
    n, total = acct.last_hour(D0 + 60 * len(amounts))
    assert n == cap and total == sum(amounts[-cap:])  # the count stays at the cap, the amount is the latest's
    assert len(acct.hourly) == 2 * cap
    held = len(pickle.dumps(acct.snapshot())) - len(pickle.dumps(acct.snapshot()[:12]))
    assert held <= 16 * cap + 8  # the most a card's last hour adds to its pickled state


def test_last_hour_survives_a_snapshot_and_older_snapshots_restore():
    acct = AccountProfile()
    for i, dt in enumerate([0.0, 1200.0, 2400.0]):
        hour_then_learn(acct, tx(i, D0 + dt, 10.0 * (i + 1)))
    restored = AccountProfile(pickle.loads(pickle.dumps(acct.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)))
    assert restored.snapshot() == acct.snapshot() and len(acct.snapshot()) == 14
    assert restored.last_hour(D0 + 3000) == acct.last_hour(D0 + 3000) == (3.0, 60.0)
    for n in (10, 11, 12):  # before the unusual-amount counts, the verdicts, the last hour
        old = acct.snapshot()[:n]
        assert AccountProfile.is_snapshot(old)
        profile = AccountProfile(old)
        assert profile.last_hour(D0 + 3000) == (0.0, 0.0)  # none kept: counted from the restart on
        assert profile.features(tx(9, D0 + 3000, 5.0)) == acct.features(tx(9, D0 + 3000, 5.0))
        assert hour_then_learn(profile, tx(9, D0 + 3000, 5.0)) == (0.0, 0.0)
        assert profile.last_hour(D0 + 3100) == (1.0, 5.0) and len(profile.snapshot()) == 14
    assert not AccountProfile.is_snapshot(acct.snapshot()[:12] + (b"\x00" * 15,))  # not (ts, amount) pairs


def test_a_cards_known_fraud_counts_for_its_later_transactions_once_known():
    """Decision 0068: acct_days_since_known_fraud is the days from the card's latest fraud whose
    label is older than two learning steps before the transaction; -1 without one in 30 days.
    It survives a snapshot, and an older snapshot (13 values) knows none."""
    since = ACCOUNT_FEATURES.index("acct_days_since_known_fraud")
    acct = AccountProfile(label_step_s=H)
    hour_then_learn(acct, tx(0, D0, 20.0))
    assert acct.features(tx(1, D0 + DAY, 20.0))[since] == -1.0
    acct.add_known_fraud(D0 + 2 * DAY, D0 + 9 * DAY)  # a chargeback 7 days after the fraud
    acct.add_known_fraud(D0, D0 + 3 * DAY + 4 * H)  # an older fraud, answered by an analyst

    def at(ts: float) -> float:
        return acct.features(tx(9, ts, 20.0))[since]

    assert at(D0 + 3 * DAY + 5 * H) == -1.0  # the verdict is not two steps old yet
    assert at(D0 + 3 * DAY + 6 * H) == 3.0  # then its fraud (day 0) is known
    assert at(D0 + 9 * DAY + 6 * H) == 7.0  # the later fraud (day 2), once its chargeback is known
    assert at(D0 + 32 * DAY + 6 * H) == 30.0 and at(D0 + 33 * DAY + 6 * H) == -1.0  # 30 days, then forgotten
    snap = acct.snapshot()
    restored = AccountProfile(pickle.loads(pickle.dumps(snap)), label_step_s=H)
    assert restored.snapshot() == snap and AccountProfile.is_snapshot(snap)
    assert restored.features(tx(9, D0 + 9 * DAY + 6 * H, 20.0))[since] == 7.0
    older = AccountProfile(snap[:13], label_step_s=H)
    assert older.features(tx(9, D0 + 9 * DAY + 6 * H, 20.0))[since] == -1.0 and older.known_frauds == []
    assert not AccountProfile.is_snapshot(snap[:13] + (b"x",))
    for i in range(10):  # one verdict answering ten frauds: the latest one is all that counts
        acct.add_known_fraud(D0 + 40 * DAY + i * H, D0 + 41 * DAY)
    acct.add_known_fraud(D0 + 39 * DAY, D0 + 46 * DAY)  # older and known later: never the latest known
    assert acct.known_frauds[-1] == (int((D0 + 40 * DAY) // DAY), D0 + 41 * DAY) and len(acct.known_frauds) == 3
    assert acct.describe()["known_frauds"] == acct.known_frauds


def test_known_frauds_give_the_same_feature_whatever_order_their_labels_come_in():
    """The flow may join a fraud label when it comes (a chargeback days later) or as soon as its
    transaction does (a label that came first): the feature is the same either way, and a
    card's state stays within a month of known frauds."""
    since = ACCOUNT_FEATURES.index("acct_days_since_known_fraud")
    rng = random.Random(7)
    frauds = []
    for _ in range(120):
        fraud_ts = D0 + rng.uniform(0, 70) * DAY
        frauds.append((fraud_ts, fraud_ts + rng.choice([4 * H, 7 * DAY, rng.uniform(0.1, 12) * DAY])))
    probes = sorted(D0 + rng.uniform(0, 90) * DAY for _ in range(400))

    def run(when: int) -> tuple[list[float], int]:
        acct = AccountProfile(label_step_s=H)
        events = sorted([(f[when], 0, f) for f in frauds] + [(t, 1, None) for t in probes])
        out, most = [], 0
        for i, (ts, kind, fraud) in enumerate(events):
            if kind == 0:
                acct.add_known_fraud(*fraud)
                most = max(most, len(acct.known_frauds))
            else:
                out.append(acct.features(tx(i, ts, 20.0))[since])
                acct.update(tx(i, ts, 20.0), acct.features(tx(i, ts, 20.0)))
        return out, most

    as_they_come, most = run(1)
    first, _ = run(0)
    assert as_they_come == first and any(v >= 0 for v in first) and any(v == -1 for v in first)
    assert most <= 32
