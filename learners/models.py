"""River models: the supervised classifiers selectable by settings, and the cold-start
anomaly detector, with per-feature reasons for a score.

>>> model = build_classifier("logreg", seed=1)
>>> model.predict_proba_one({"amount": 10.0}).get(True, 0.0)
0.5
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Protocol, runtime_checkable

from river import anomaly, base, compose, forest, linear_model, optim, preprocessing, tree

from learners.binning import StepFeatures
from learners.config import MODEL_KIND_NAMES

__all__ = [
    "ANOMALY_FEATURES",
    "MODEL_KINDS",
    "build_anomaly_detector",
    "build_classifier",
    "describe_model",
    "LearningHooks",
    "learning_hooks",
    "reasons_for",
]


def _logreg(seed: int) -> base.Classifier:
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.SGD(0.02), l2=1e-5, intercept_lr=0.02),
    )


def _binned_logreg(seed: int) -> base.Classifier:
    # AdaGrad: each indicator's step shrinks with its own gradient history, so a rare bin (an
    # amount above the 99.9th percentile, day 27 of a compromise) learns from its few examples
    # while the always-present standardised features settle (decision 0019).
    return compose.Pipeline(
        StepFeatures(),
        linear_model.LogisticRegression(optimizer=optim.AdaGrad(0.2), l2=1e-5, intercept_lr=0.02),
    )


def _hoeffding_tree(seed: int) -> base.Classifier:
    return tree.HoeffdingAdaptiveTreeClassifier(grace_period=300, max_depth=12, delta=1e-5, seed=seed)


def _arf(seed: int) -> base.Classifier:
    return forest.ARFClassifier(n_models=10, max_depth=12, grace_period=100, seed=seed)


def _amf(seed: int) -> base.Classifier:
    return forest.AMFClassifier(n_estimators=10, step=1.0, use_aggregation=True, dirichlet=0.5, seed=seed)


MODEL_KINDS: dict[str, Callable[[int], base.Classifier]] = {
    "logreg": _logreg,
    "binned_logreg": _binned_logreg,
    "hoeffding_tree": _hoeffding_tree,
    "arf": _arf,
    "amf": _amf,
}
assert set(MODEL_KINDS) == set(MODEL_KIND_NAMES), "learners.config.MODEL_KIND_NAMES names every model here"

# Account-behaviour signals: the unsupervised detector looks at how unusual a transaction
# is for its account, which needs no labels.
ANOMALY_FEATURES = (
    "log_amount",
    "acct_amount_log_ratio_median",
    "acct_amount_robust_z",
    "acct_log_secs_since_prev",
    "acct_new_terminal",
)


def build_classifier(kind: str, seed: int = 0) -> base.Classifier:
    try:
        factory = MODEL_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}") from None
    return factory(seed)


@runtime_checkable
class LearningHooks(Protocol):
    """What a model's first step implements to learn beyond River's ``learn_one(x, y)``
    (:class:`learners.binning.StepFeatures`): from unlabelled transactions (the model shard
    calls :meth:`observe` in event-time order while :attr:`wants_unlabelled`), and from each
    labelled example next to ``learn_one`` (:meth:`learn_label` while :attr:`wants_labels`)."""

    @property
    def wants_unlabelled(self) -> bool: ...

    def observe(self, x: dict) -> None: ...

    @property
    def wants_labels(self) -> bool: ...

    def learn_label(self, x: dict, is_fraud: bool) -> None: ...


def learning_hooks(model: Any) -> Optional[LearningHooks]:
    """The first step of a pipeline if it has :class:`LearningHooks`, else None; looked up
    once per model (built, restored or replaced), not per transaction.

    >>> learning_hooks(build_classifier("binned_logreg")) is not None
    True
    >>> learning_hooks(build_classifier("logreg")) is None
    True
    """
    first = next(iter(model.steps.values()), None) if isinstance(model, compose.Pipeline) else None
    return first if isinstance(first, LearningHooks) else None


def build_anomaly_detector(seed: int = 0) -> base.AnomalyDetector:
    """Half-space trees over min-max scaled account-behaviour features."""
    return compose.Pipeline(
        preprocessing.MinMaxScaler(),
        anomaly.HalfSpaceTrees(n_trees=15, height=8, window_size=250, seed=seed),
    )


def _linear_parts(model: Any) -> tuple[Any, Any] | None:
    """(transformer, logistic regression) of a linear pipeline, else None."""
    if isinstance(model, compose.Pipeline):
        steps = list(model.steps.values())
        if len(steps) == 2 and isinstance(steps[0], (preprocessing.StandardScaler, StepFeatures)) and isinstance(
            steps[1], linear_model.LogisticRegression
        ):
            return steps[0], steps[1]
    return None


def _readable(transformer: Any, feature: str) -> str:
    return transformer.readable(feature) if isinstance(transformer, StepFeatures) else feature


def reasons_for(model: Any, x: dict[str, float], score: Callable[[dict[str, float]], float], top: int = 5,
                means: dict[str, float] | None = None) -> list[tuple[str, float]]:
    """The features that pushed this score up, largest first.

    Linear models: each feature's contribution to the log-odds (weight x standardised
    value). Other models: how much the score drops when the feature is replaced by its
    running mean (occlusion), which needs ``means``; costs one prediction per feature, so
    it is only computed for alerts.
    """
    parts = _linear_parts(model)
    if parts is not None:
        scaler, lr = parts
        z = scaler.transform_one(x)
        contrib = [(_readable(scaler, name), lr._weights.get(name, 0.0) * value) for name, value in z.items()]
    else:
        base_score = score(x)
        contrib = []
        for name, mean in (means or {}).items():
            if name in x and x[name] != mean:
                contrib.append((name, base_score - score({**x, name: mean})))
    contrib = [(n, round(c, 4)) for n, c in contrib if c > 0 and math.isfinite(c)]
    contrib.sort(key=lambda nc: -nc[1])
    return contrib[:top]


def describe_model(model: Any) -> dict[str, Any]:
    """What a model has learned, as plain JSON: weights or feature importances."""
    parts = _linear_parts(model)
    if parts is not None:
        transformer, lr = parts
        scaler = transformer.scaler if isinstance(transformer, StepFeatures) else transformer
        weights = ((_readable(transformer, k), float(v)) for k, v in lr._weights.items())
        binned = isinstance(transformer, StepFeatures)
        cuts = {"learned_cuts": transformer.cuts or {}} if binned else {}
        return {
            "kind": "binned_logistic_regression" if binned else "logistic_regression",
            "intercept": lr.intercept,
            "weights": dict(sorted(weights, key=lambda kv: -abs(kv[1]))),
            "scaler_mean": {k: float(v) for k, v in scaler.means.items()},
            "scaler_std": {k: math.sqrt(float(v)) for k, v in scaler.vars.items()},
            "hyper_parameters": {
                "optimizer": type(lr.optimizer).__name__,
                "learning_rate": getattr(lr.optimizer, "learning_rate", None),
                "l2": lr.l2,
            },
            **cuts,  # where the labels said the fraud share jumps (empty until placed)
        }
    params = {k: v for k, v in model._get_params().items() if isinstance(v, (int, float, str, bool, type(None)))}
    out: dict[str, Any] = {"kind": type(model).__name__, "hyper_parameters": params}
    importances = _split_counts(model)
    if importances:
        total = sum(importances.values())
        out["feature_importances"] = dict(
            sorted(((k, v / total) for k, v in importances.items()), key=lambda kv: -kv[1])
        )
    return out


def _split_counts(model: Any) -> dict[str, float]:
    """Feature importance as the share of tree splits on each feature."""
    counts: dict[str, float] = {}
    trees = list(model) if isinstance(model, forest.ARFClassifier) else [model]
    for t in trees:
        t = getattr(t, "model", t)
        root = getattr(t, "_root", None)
        stack = [root] if root is not None else []
        while stack:
            node = stack.pop()
            feature = getattr(node, "feature", None)
            if feature is not None:
                counts[feature] = counts.get(feature, 0.0) + 1.0
            stack.extend(getattr(node, "children", None) or [])
    return counts
