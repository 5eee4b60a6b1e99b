"""What flows between the fraud flow's stages: one frozen type per kind of message.

Stages dispatch on the type (``type(m) is FeaturedTransaction``), never on a tag; dead
letters are :class:`connectors.events.DeadLetter` wherever they come from::

    source            -> (partition, Transaction | Label)
    account_profile   -> FeaturedTransaction (account features) | JoinedLabel | DeadLetter
    terminal_risk     -> FeaturedTransaction (the full vector)  | JoinedLabel (frauds) | DeadLetter
    await_labels      -> LabelledExample | UnsampledCount | DeadLetter
    score_then_learn  -> Scored | DeadLetter
    read_rules        -> RuleUpdate (to every model shard) | DeadLetter (a bad rule)
    apply_rules       -> Scored (rules applied: candidate, reasons, tags) | DeadLetter
    alert_policy      -> Alert | DeadLetter

msgspec structs, frozen and without garbage-collector tracking (like the events): the
cheapest typed values to build and to pickle across processes that were measured
(decision 0039).

>>> m = LabelledExample("t-1", 1522541276.0, True, b"")
>>> m.copy, type(m) is LabelledExample
(False, True)
"""

from __future__ import annotations

from typing import Any, Optional

import msgspec

__all__ = ["NO_LAST_HOUR", "FeaturedTransaction", "JoinedLabel", "LabelledExample", "RuleUpdate", "Scored",
           "UnsampledCount"]

NO_LAST_HOUR = (0.0, 0.0)  # ``last_hour`` (count, amount) of a card with nothing in the hour before


class FeaturedTransaction(msgspec.Struct, frozen=True, gc=False):
    """A transaction with its features so far: the account's after ``account_profile``, the
    whole vector (:data:`learners.features.FEATURE_NAMES`) after ``terminal_risk``;
    ``part``: the source partition it was read from (the shard's watermark); ``last_hour``:
    the card's transactions and amount in the hour before it
    (:meth:`learners.features.AccountProfile.last_hour`), for the rules only (decision 0063)."""

    tx: Any  # connectors.events.Transaction
    features: tuple
    part: int
    last_hour: tuple = NO_LAST_HOUR


class JoinedLabel(msgspec.Struct, frozen=True, gc=False):
    """A label joined to its transaction at the account stage (``is_fraud`` None: inferred
    legitimate, frauds-only feeds)."""

    tx_id: str
    tx_ts: float
    terminal_id: str
    label_ts: float
    is_fraud: Optional[bool]
    unexplained: bool = True  # a fraud here is unexplained by its card (unexplained_by_card)
    account_id: str = "?"
    verdict: bool = False  # an analyst's verdict (learned at label_ts in every label mode)
    keep: bool = False  # await_labels keeps the features after this example (a legitimate verdict a chargeback may correct)
    release: bool = False  # nothing to learn: await_labels drops the features it kept (see ``keep``)


class LabelledExample(msgspec.Struct, frozen=True, gc=False):
    """A label joined to the feature vector its transaction was scored with (float32,
    :func:`learners.pending.pack`), for the model shard to learn at ``label_ts``; ``copy``:
    another shard's example, learned here too but counted there (decision 0018); ``feed_ts``: an
    analyst's verdict's, when the label feed would have taught it (0: not a verdict; decision 0062)."""

    tx_id: str
    label_ts: float
    is_fraud: Optional[bool]
    packed: bytes
    copy: bool = False
    feed_ts: float = 0.0


class UnsampledCount(msgspec.Struct, frozen=True, gc=False):
    """``received`` examples of a shard left out of the negative sample at ``await_labels``
    (never learned, so they do not cross processes), ``implicit`` of them inferred legitimate."""

    received: int
    implicit: int


class Scored(msgspec.Struct, frozen=True, gc=False):
    """A transaction with its score; ``candidate``: at or over the threshold, an alert
    candidate for ``alert_policy`` (``reasons`` is set for candidates only). ``features``: the
    vector the model scored (:data:`learners.features.FEATURE_NAMES`), for the rules;
    ``tags``: what the tag rules wrote (``apply_rules``); ``last_hour``: the card's
    transactions and amount in the hour before it, for the rules (not a model input)."""

    tx: Any  # connectors.events.Transaction
    score: float
    threshold: float
    model: str
    reasons: Optional[list]
    candidate: bool
    features: tuple = ()
    tags: tuple = ()
    last_hour: tuple = NO_LAST_HOUR


class RuleUpdate(msgspec.Struct, frozen=True, gc=False):
    """A rule read from the rules topic, already validated once (``read_rules``), on its way
    to every model shard's rule book: ``spec`` is :meth:`learners.rules.Rule.spec` (the
    compiled rule itself holds closures, which do not cross processes), None deletes the rule
    (a tombstone). ``offset``: where it was read (the log names it)."""

    rule_id: str
    spec: Optional[dict]
    offset: int = -1
