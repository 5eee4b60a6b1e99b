"""Transactions awaiting their label: feature vectors kept in hourly buckets.

A label arrives days after its transaction, and the model must learn the feature vector the
transaction was *scored* with. Keeping a week of feature vectors inside the model shard made
its state tens of megabytes, and Bytewax snapshots the whole state of every key touched in an
epoch: the shard was re-pickled every epoch (measured: 63.5 MB, 648 ms, with 30,000 cards).

So feature vectors live in their own keyed stage, one key per (model shard, hour of the
transaction): an epoch touches the current hour (new transactions) and the hours whose labels
are arriving, a few hundred kilobytes, and a bucket is discarded once every transaction in it
has its label.

>>> from learners.features import FEATURE_NAMES
>>> bucket = PendingBucket()
>>> bucket.add("t-1", tuple(float(i) for i in range(len(FEATURE_NAMES))))
[]
>>> [(e.tx_id, e.is_fraud) for e in bucket.label("t-1", 1523145600.0, True)]
[('t-1', True)]
>>> bucket.empty
True
"""

from __future__ import annotations

import struct
from typing import Optional

from learners.features import FEATURE_NAMES
from learners.messages import LabelledExample

__all__ = ["BUCKET_S", "VECTOR_BYTES", "PendingBucket", "pack", "unpack"]

BUCKET_S = 3600.0
_PACK = struct.Struct(f"<{len(FEATURE_NAMES)}f")
VECTOR_BYTES = _PACK.size  # a packed feature vector of this version


def pack(features: tuple[float, ...]) -> bytes:
    """Feature vector as float32 bytes (4 per feature: 120 bytes for 30 features)."""
    return _PACK.pack(*features)


def unpack(packed: bytes) -> tuple[float, ...]:
    return _PACK.unpack(packed)


def bucket_of(event_ts: float) -> int:
    return int(event_ts // BUCKET_S)


class PendingBucket:
    """One (shard, hour) bucket: feature vectors of its transactions until their labels come."""

    __slots__ = ("features", "orphans")

    def __init__(self, state: Optional[tuple] = None) -> None:
        if state is None:
            self.features: dict[str, bytes] = {}
            # labels that overtook their transaction: (label_ts, is_fraud[, keep[, feed_ts]])
            self.orphans: dict[str, tuple] = {}
        else:
            features, orphans = state
            self.features = dict(features)
            self.orphans = dict(orphans)

    def snapshot(self) -> tuple:
        return (tuple(self.features.items()), tuple(self.orphans.items()))

    @property
    def empty(self) -> bool:
        return not self.features and not self.orphans

    def add(self, tx_id: str, features: tuple[float, ...]) -> list[LabelledExample]:
        """Keep a scored transaction's features; a label that came first is joined now."""
        packed = pack(features)
        orphan = self.orphans.pop(tx_id, None)
        if orphan is not None:
            if len(orphan) > 2 and orphan[2]:
                self.features[tx_id] = packed
            return [LabelledExample(tx_id, orphan[0], orphan[1], packed, feed_ts=orphan[3] if len(orphan) > 3 else 0.0)]
        self.features[tx_id] = packed
        return []

    def label(self, tx_id: str, label_ts: float, is_fraud: bool, keep: bool = False,
              feed_ts: float = 0.0) -> list[LabelledExample]:
        """Join a label to its transaction's features (or hold it until they arrive); ``keep``:
        the features stay for a later correction (an analyst's legitimate verdict, which a
        chargeback may overturn) until :meth:`release`; ``feed_ts``: a verdict's (see
        :class:`~learners.messages.LabelledExample`).

        >>> bucket = PendingBucket()
        >>> _ = bucket.add("t-1", tuple(0.0 for _ in FEATURE_NAMES))
        >>> [e.is_fraud for e in bucket.label("t-1", 1.0, False, keep=True)], bucket.empty
        ([False], False)
        >>> [e.is_fraud for e in bucket.label("t-1", 2.0, True)], bucket.empty  # the chargeback corrects it
        ([True], True)
        """
        packed = self.features.get(tx_id) if keep else self.features.pop(tx_id, None)
        if packed is None:
            if feed_ts:
                self.orphans[tx_id] = (label_ts, is_fraud, keep, feed_ts)
            else:
                self.orphans[tx_id] = (label_ts, is_fraud, True) if keep else (label_ts, is_fraud)
            return []
        return [LabelledExample(tx_id, label_ts, is_fraud, packed, feed_ts=feed_ts)]

    def release(self, tx_id: str) -> None:
        """Drop the features kept for a transaction (its verdict stood: nothing more to learn)."""
        self.features.pop(tx_id, None)
        orphan = self.orphans.get(tx_id)
        if orphan is not None and len(orphan) > 2 and orphan[2]:
            del self.orphans[tx_id]
