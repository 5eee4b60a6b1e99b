"""Quantile bins: a River transformer that lets a linear model learn non-linear effects.

Fraud signals are thresholds and ORs ("amount above what anyone normally spends", "this
terminal had confirmed frauds recently", "five times this card's habit"). A logistic
regression over one-hot *bins* of each feature — plus the standardised raw value — is an
additive model in log-odds with a step function per feature (a GAM): it learns such
thresholds from labels, at the cost of one weight lookup per feature.

Bin edges are quantiles of the first ``warmup`` labelled examples, with finer levels in the
tails where rare events live, then frozen (a deterministic feature space, so a replay and a
resumed run learn the same weights). Until then it passes standardised values only.

>>> binner = QuantileBinner(levels=(0.5,), warmup=4)
>>> for v in (1.0, 2.0, 3.0, 4.0):
...     binner.learn_one({"amount": v})
>>> sorted(binner.transform_one({"amount": 3.5}).items())
[('amount', 0.894...), ('amount#1', 1.0)]
"""

from __future__ import annotations

import bisect
import math
from array import array
from typing import Optional, Sequence

import numpy as np
from river import base, preprocessing

__all__ = ["DAY_COUNT_FEATURES", "QuantileBinner", "STEP_FEATURES", "StepFeatures", "TAIL_LEVELS"]

# Quantile levels of the bin edges: coarse in the middle, fine in both tails.
TAIL_LEVELS = (0.001, 0.01, 0.05, 0.15, 0.3, 0.5, 0.7, 0.85, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995,
               0.9998, 0.9999)


class QuantileBinner(base.Transformer):
    """Standardised value plus a one-hot quantile bin for every numeric feature."""

    def __init__(self, levels: Sequence[float] = TAIL_LEVELS, warmup: int = 20_000, keep_raw: bool = True) -> None:
        self.levels = tuple(levels)
        self.warmup = warmup
        self.keep_raw = keep_raw
        self._buffer: dict[str, array] = {}
        self._seen = 0
        self.edges: Optional[dict[str, list[float]]] = None
        self.means: dict[str, float] = {}
        self.stds: dict[str, float] = {}

    def learn_one(self, x: dict) -> None:
        if self.edges is not None:
            return
        for name, value in x.items():
            # array('d'), not a list: model versions are pickled every learning step while
            # the buffer fills (50,000 values per feature); an array pickles as one bytes run
            buffer = self._buffer.get(name)
            if buffer is None:
                buffer = self._buffer[name] = array("d")
            buffer.append(value)
        self._seen += 1
        if self._seen >= self.warmup:
            self._freeze()

    def _freeze(self) -> None:
        edges: dict[str, list[float]] = {}
        for name, values in self._buffer.items():
            arr = np.asarray(values, dtype=float)
            qs = np.unique(np.quantile(arr, self.levels))
            edges[name] = [float(q) for q in qs]
            self.means[name] = float(arr.mean())
            std = float(arr.std())
            self.stds[name] = std if std > 0 else 1.0
        self.edges = edges
        self._buffer = {}

    @property
    def frozen(self) -> bool:
        return self.edges is not None

    def transform_one(self, x: dict) -> dict:
        out: dict = {}
        edges, means, stds = self.edges, self.means, self.stds
        if edges is None:
            return dict(x) if self.keep_raw else {}
        for name, value in x.items():
            cut = edges.get(name)
            if cut is None:
                continue
            if self.keep_raw:
                out[name] = (value - means[name]) / stds[name]
            if cut:
                out[f"{name}#{bisect.bisect_right(cut, value)}"] = 1.0
        return out

    def bin_label(self, feature: str) -> str:
        """``amount#12`` -> ``amount > 212.4`` (for reasons and model inspection)."""
        name, _, idx = feature.partition("#")
        if not idx or self.edges is None or name not in self.edges:
            return feature
        cut, i = self.edges[name], int(idx)
        if i == 0:
            return f"{name} <= {_fmt(cut[0])}"
        if i >= len(cut):
            return f"{name} > {_fmt(cut[-1])}"
        return f"{name} in ({_fmt(cut[i - 1])}, {_fmt(cut[i])}]"


def _fmt(v: float) -> str:
    if v == 0 or (abs(v) >= 0.01 and abs(v) < 1e6):
        return f"{v:.4g}"
    return f"{v:.3e}" if math.isfinite(v) else str(v)


# Features whose effect on fraud is a threshold rather than a slope: an amount above what
# anyone normally spends, a spend far above the card's habit, a terminal whose confirmed frauds
# are recent (an ongoing compromise) or old (over).
STEP_FEATURES = (
    "amount",
    "log_amount",
    "acct_amount_robust_z",
    "acct_amount_log_ratio_median",
)

# Whole-day counts with a short, known range (-1: no known fraud): one indicator per value.
# Quantile edges cannot serve them: the edges freeze on the first days of traffic, before any
# label is released, when these features are -1 everywhere (edges were just [-1]); and how long
# a terminal compromise lasts is a step at one particular day that the model has to learn.
DAY_COUNT_FEATURES = (
    "term_days_since_first_known_fraud",
    "term_days_since_last_known_fraud",
    "term_known_fraud_days",
)


class StepFeatures(base.Transformer):
    """Every feature standardised (online, clipped), plus quantile bins of the step-like ones.

    The bin edges come from *unlabelled* transactions (:meth:`observe`, called by the model
    shard in event-time order): what normal traffic looks like, not the label sample, in which
    frauds are over-represented.
    """

    day_counts: tuple[str, ...] = ()  # models pickled before day-count indicators existed
    clip = 5.0  # and before standardised values were clipped

    def __init__(self, binned: tuple[str, ...] = STEP_FEATURES, levels: Sequence[float] = TAIL_LEVELS,
                 warmup: int = 50_000, day_counts: tuple[str, ...] = DAY_COUNT_FEATURES,
                 max_days: int = 40, clip: float = 5.0) -> None:
        self.binned = tuple(binned)
        self.clip = clip
        self.day_counts = tuple(day_counts)
        self.max_days = max_days
        self.levels = tuple(levels)
        self.warmup = warmup
        self.scaler = preprocessing.StandardScaler()
        self.binner = QuantileBinner(levels, warmup, keep_raw=False)

    def learn_one(self, x: dict) -> None:
        self.scaler.learn_one(x)

    @property
    def wants_unlabelled(self) -> bool:
        return not self.binner.frozen

    def observe(self, x: dict) -> None:
        """An unlabelled transaction: used for the bin edges until they are frozen."""
        self.binner.learn_one({k: x[k] for k in self.binned if k in x})

    def transform_one(self, x: dict) -> dict:
        # Standardised values are clipped at +-clip standard deviations. The scaler learns from
        # labelled examples, which are a label delay older than the transactions scored: while
        # windowed counts fill up after a start, a scored value can sit 50 deviations above every
        # example learned, and one weight times it put a whole hour's transactions at score 1.
        lim = self.clip
        out = {k: (lim if v > lim else -lim if v < -lim else v) for k, v in self.scaler.transform_one(x).items()}
        out.update(self.binner.transform_one({k: x[k] for k in self.binned if k in x}))
        for name in self.day_counts:
            value = x.get(name)
            if value is not None:
                out[f"{name}={min(int(value), self.max_days)}"] = 1.0
        return out

    def readable(self, feature: str) -> str:
        name, eq, value = feature.partition("=")
        if eq:
            if value == "-1":
                return f"{name}: none"
            return f"{name} >= {value}" if int(value) >= self.max_days else f"{name} = {value}"
        return self.binner.bin_label(feature)
