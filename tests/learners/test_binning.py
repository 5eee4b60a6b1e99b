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
