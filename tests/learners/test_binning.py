"""Quantile bins and day-count indicators of the binned logistic regression."""

from __future__ import annotations

from learners.binning import StepFeatures


def _x(**values) -> dict:
    return {"amount": 10.0, "term_days_since_first_known_fraud": -1.0, "term_days_since_last_known_fraud": -1.0,
            "term_known_fraud_days": 0.0, **values}


def test_day_counts_get_one_indicator_per_day_from_the_first_transaction():
    # Before the quantile edges freeze (no labels released yet, every day count is -1), the
    # day counts already have their indicators: edges learned then would be just [-1].
    steps = StepFeatures(warmup=1000)
    for _ in range(10):
        steps.observe(_x())
    assert not steps.binner.frozen
    z = steps.transform_one(_x(term_days_since_first_known_fraud=27.0, term_days_since_last_known_fraud=7.0))
    assert z["term_days_since_first_known_fraud=27"] == 1.0
    assert z["term_days_since_last_known_fraud=7"] == 1.0
    assert "term_days_since_first_known_fraud=28" not in z
    assert steps.transform_one(_x())["term_days_since_first_known_fraud=-1"] == 1.0
    # a long count shares the last indicator
    assert "term_known_fraud_days=40" in steps.transform_one(_x(term_known_fraud_days=55.0))


def test_day_count_indicators_read_as_conditions():
    steps = StepFeatures()
    assert steps.readable("term_days_since_first_known_fraud=28") == "term_days_since_first_known_fraud = 28"
    assert steps.readable("term_days_since_first_known_fraud=-1") == "term_days_since_first_known_fraud: none"
    assert steps.readable("term_known_fraud_days=40") == "term_known_fraud_days >= 40"


def test_a_model_pickled_before_day_counts_existed_still_transforms():
    steps = StepFeatures()
    del steps.__dict__["day_counts"]  # what unpickling an older model gives
    assert not any("=" in k for k in steps.transform_one(_x(term_days_since_first_known_fraud=3.0)))


def test_standardised_values_are_clipped_at_five_deviations():
    # Counts learned while a window was still filling (labelled examples are a label delay
    # older than the transactions scored): 0 or 1 transactions, then a terminal with 40.
    steps = StepFeatures(warmup=1000)
    for i in range(200):
        steps.learn_one(_x(term_nb_tx_7d=float(i % 7 == 0)))
    z = steps.transform_one(_x(term_nb_tx_7d=40.0))
    assert z["term_nb_tx_7d"] == 5.0  # unclipped: (40 - 0.145) / 0.352 = 113
    assert steps.transform_one(_x(term_nb_tx_7d=-40.0))["term_nb_tx_7d"] == -5.0
    inside = steps.transform_one(_x(term_nb_tx_7d=1.0))["term_nb_tx_7d"]
    assert 2.0 < inside < 5.0  # values within the clip are the scaler's own
    assert inside == steps.scaler.transform_one(_x(term_nb_tx_7d=1.0))["term_nb_tx_7d"]


def test_a_model_pickled_before_clipping_clips_too():
    steps = StepFeatures()
    steps.learn_one(_x(term_nb_tx_7d=0.0))
    steps.learn_one(_x(term_nb_tx_7d=1.0))
    del steps.__dict__["clip"]
    assert steps.transform_one(_x(term_nb_tx_7d=1000.0))["term_nb_tx_7d"] == 5.0


def test_cuts_are_learned_from_labels_where_the_fraud_share_jumps():
    # Legitimate amounts spread up to 199; every amount above 215 is fraud. A quantile edge of
    # the traffic lands wherever the traffic puts it; the learned cut lands between the groups.
    steps = StepFeatures(warmup=1000, cut_frauds=40)
    for i in range(400):
        steps.learn_label(_x(amount=float(i % 200)), False)
        if i % 10 == 0:
            assert steps.wants_labels
            steps.learn_label(_x(amount=216.0 + i / 10), True)
    assert not steps.wants_labels and not steps._cut_labels  # placed, frozen, buffer gone
    assert steps.cuts["amount"] == [199.0]  # right above the last legitimate amount: the fraud-rich side takes the gap
    above, below = steps.transform_one(_x(amount=217.0)), steps.transform_one(_x(amount=150.0))
    assert above["amount~1"] == 1.0 and "amount~0" not in above
    assert below["amount~0"] == 1.0
    assert steps.readable("amount~1") == "amount > 199 (learned cut)"
    assert steps.readable("amount~0") == "amount <= 199 (learned cut)"


def test_the_model_shard_hands_labelled_examples_to_the_cuts():
    from river import compose, linear_model

    from learners.features import FEATURE_NAMES
    from learners.pending import pack
    from learners.scoring import ModelConfig, ModelShard

    shard = ModelShard(ModelConfig(warmup_frauds=0, negative_sampling=1.0, allowed_lateness_s=3600.0))
    shard.learner.model = compose.Pipeline(StepFeatures(warmup=10_000, cut_frauds=20),
                                           linear_model.LogisticRegression())
    amount = FEATURE_NAMES.index("amount")
    for i in range(300):
        values = [0.0] * len(FEATURE_NAMES)
        values[amount] = 300.0 + i if i % 10 == 0 else float(i % 150)
        shard._learn_example(i % 10 == 0, pack(tuple(values)))
    steps = shard.model.steps["StepFeatures"]
    assert steps.cuts["amount"] == [149.0]
    # the regression learns the transformed example: the cut's indicator after it is placed
    assert shard.model.steps["LogisticRegression"]._weights["amount~1"] > 0


def test_a_model_pickled_before_learned_cuts_keeps_its_feature_space():
    steps = StepFeatures(warmup=1000, cut_frauds=1)
    for name in ("cut_features", "cuts", "_cut_values", "_cut_labels"):
        del steps.__dict__[name]  # what unpickling an older model gives
    assert not steps.wants_labels
    steps.learn_label(_x(amount=500.0), True)
    assert not any("~" in k for k in steps.transform_one(_x(amount=500.0)))


def test_the_model_description_shows_the_learned_cuts():
    from learners.models import build_classifier, describe_model

    model = build_classifier("binned_logreg")
    steps = model.steps["StepFeatures"]
    assert describe_model(model)["learned_cuts"] == {}  # not placed yet
    steps.cut_frauds = 20
    for i in range(200):
        steps.learn_label(_x(amount=float(i % 100)), False)
        if i % 10 == 0:
            steps.learn_label(_x(amount=150.0 + i), True)
    model.learn_one(_x(amount=400.0), True)
    described = describe_model(model)
    assert described["learned_cuts"]["amount"] == [99.0]
    assert "amount > 99 (learned cut)" in described["weights"]
