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

__all__ = ["CUT_FEATURES", "DAY_COUNT_FEATURES", "QuantileBinner", "STEP_FEATURES", "StepFeatures", "TAIL_LEVELS",
           "supervised_cuts"]

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
        return _interval(name, self.edges[name], int(idx))


def _interval(name: str, cut: list[float], i: int) -> str:
    """Bin ``i`` of the sorted edges ``cut`` as a condition on ``name``."""
    if i == 0:
        return f"{name} <= {_fmt(cut[0])}"
    if i >= len(cut):
        return f"{name} > {_fmt(cut[-1])}"
    return f"{name} in ({_fmt(cut[i - 1])}, {_fmt(cut[i])}]"


def _entropy(p: np.ndarray | float) -> np.ndarray:
    """Binary entropy in bits of a fraud share ``p``."""
    p = np.clip(p, 1e-12, 1.0 - 1e-12)
    return -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))


def supervised_cuts(values: Sequence[float], is_fraud: Sequence[bool], max_depth: int = 4,
                    min_leaf: int = 20) -> list[float]:
    """Cut points where the fraud share changes, learned from labelled examples.

    Recursive binary splits that minimise class entropy, kept only while the split pays for
    itself under Fayyad and Irani's minimum-description-length rule (MDLP discretisation),
    at most ``max_depth`` levels deep; each cut sits at the edge of the gap between two
    observed values that lies toward the less fraudulent side (``<= cut`` is the left bin).
    Quantile edges of unlabelled traffic cannot place a cut at a fraud threshold: a tail
    quantile falls wherever the traffic puts it (222.9 on one seed, where frauds start above
    220). Here 20 legitimate amounts spread over 0-190 and 20 frauds over 230-420 give one cut
    between the two groups, right above the last legitimate amount (the fraud-richer side
    takes the gap), and nothing splits a single class:

    >>> supervised_cuts([10.0 * i for i in range(20)] + [230.0 + 10 * i for i in range(20)],
    ...                 [False] * 20 + [True] * 20, min_leaf=5)
    [190.0]
    >>> supervised_cuts([1.0, 2.0, 3.0], [False, False, False])
    []
    """
    order = np.argsort(np.asarray(values, dtype=float), kind="stable")
    v = np.asarray(values, dtype=float)[order]
    y = np.asarray(is_fraud, dtype=float)[order]
    cuts: list[float] = []

    def split(lo: int, hi: int, depth: int) -> None:
        n = hi - lo
        if depth == 0 or n < 2 * min_leaf:
            return
        ys, vs = y[lo:hi], v[lo:hi]
        frauds = float(ys.sum())
        if frauds == 0 or frauds == n:
            return
        left = np.arange(1, n)  # examples left of each candidate cut
        left_frauds = np.cumsum(ys)[:-1]
        allowed = (vs[1:] > vs[:-1]) & (left >= min_leaf) & (n - left >= min_leaf)
        if not allowed.any():
            return
        e_left, e_right = _entropy(left_frauds / left), _entropy((frauds - left_frauds) / (n - left))
        weighted = np.where(allowed, (left * e_left + (n - left) * e_right) / n, np.inf)
        i = int(np.argmin(weighted))
        k, whole = int(left[i]), float(_entropy(frauds / n))
        classes_left, classes_right = len(np.unique(ys[:k])), len(np.unique(ys[k:]))
        delta = math.log2(7.0) - (2 * whole - classes_left * e_left[i] - classes_right * e_right[i])
        if whole - weighted[i] <= (math.log2(n - 1) + delta) / n:
            return
        # The fraud-richer side reaches up to the other side's last value: with legitimate
        # examples sampled, the gap between the groups is wide, and a midpoint would leave the
        # frauds just past a sampled-away boundary on the legitimate side of the cut.
        right_richer = (frauds - left_frauds[i]) / (n - k) > left_frauds[i] / k
        cuts.append(float(vs[i]) if right_richer else float(np.nextafter(vs[i + 1], -np.inf)))
        split(lo, lo + k, depth - 1)
        split(lo + k, hi, depth - 1)

    split(0, len(v), max_depth)
    return sorted(cuts)


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
    "acct_days_since_known_fraud",
)


# Features that also get cuts learned from labels (:func:`supervised_cuts`): where the fraud
# share of an amount, or of a spend relative to the card's habit, jumps.
CUT_FEATURES = (
    "amount",
    "acct_amount_robust_z",
    "acct_amount_log_ratio_median",
)


class StepFeatures(base.Transformer):
    """Every feature standardised (online, clipped), plus quantile bins of the step-like ones,
    plus bins cut where the labels say the fraud share changes.

    The quantile edges come from *unlabelled* transactions (:meth:`observe`, called by the
    model shard in event-time order): what normal traffic looks like, not the label sample, in
    which frauds are over-represented. The supervised cuts come from the first labelled
    examples: once ``cut_frauds`` frauds are among them (or ``cut_examples`` examples are
    buffered), :func:`supervised_cuts` places them, and they are frozen like the edges.
    """

    day_counts: tuple[str, ...] = ()  # models pickled before day-count indicators existed
    clip = 5.0  # and before standardised values were clipped
    cut_features: tuple[str, ...] = ()  # and before supervised cuts: they keep their feature space
    cuts: Optional[dict[str, list[float]]] = None

    def __init__(self, binned: tuple[str, ...] = STEP_FEATURES, levels: Sequence[float] = TAIL_LEVELS,
                 warmup: int = 50_000, day_counts: tuple[str, ...] = DAY_COUNT_FEATURES,
                 max_days: int = 40, clip: float = 5.0, cut_features: tuple[str, ...] = CUT_FEATURES,
                 cut_frauds: int = 500, cut_examples: int = 100_000) -> None:
        self.binned = tuple(binned)
        self.clip = clip
        self.day_counts = tuple(day_counts)
        self.max_days = max_days
        self.levels = tuple(levels)
        self.warmup = warmup
        self.cut_features = tuple(cut_features)
        self.cut_frauds = cut_frauds
        self.cut_examples = cut_examples
        self.scaler = preprocessing.StandardScaler()
        self.binner = QuantileBinner(levels, warmup, keep_raw=False)
        self.cuts = None if self.cut_features else {}
        self._cut_values: dict[str, array] = {name: array("d") for name in self.cut_features}
        self._cut_labels = bytearray()

    def learn_one(self, x: dict) -> None:
        self.scaler.learn_one(x)

    @property
    def wants_labels(self) -> bool:
        return self.cuts is None and bool(self.cut_features)

    def learn_label(self, x: dict, is_fraud: bool) -> None:
        """A labelled example (called by the model shard next to ``learn_one``): buffered for
        the supervised cuts until they are placed. Kept apart from the river Pipeline's
        ``learn_one`` so that the scaler still learns an example before transforming it."""
        if not self.wants_labels:
            return
        # array('d') and a bytearray: model versions are pickled at every learning step while
        # this fills, and a typed buffer pickles as one run of bytes
        for name, values in self._cut_values.items():
            values.append(x.get(name, 0.0))
        self._cut_labels.append(bool(is_fraud))
        frauds = self._cut_labels.count(1)
        if frauds >= self.cut_frauds or len(self._cut_labels) >= self.cut_examples:
            labels = [bool(b) for b in self._cut_labels]
            self.cuts = {name: supervised_cuts(values, labels) for name, values in self._cut_values.items()}
            self._cut_values, self._cut_labels = {}, bytearray()

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
        if self.cuts:
            for name, cut in self.cuts.items():
                value = x.get(name)
                if cut and value is not None:
                    out[f"{name}~{bisect.bisect_right(cut, value)}"] = 1.0
        return out

    def readable(self, feature: str) -> str:
        name, tilde, idx = feature.partition("~")
        if tilde and self.cuts and name in self.cuts:
            return _interval(name, self.cuts[name], int(idx)) + " (learned cut)"
        name, eq, value = feature.partition("=")
        if eq:
            if value == "-1":
                return f"{name}: none"
            return f"{name} >= {value}" if int(value) >= self.max_days else f"{name} = {value}"
        return self.binner.bin_label(feature)
