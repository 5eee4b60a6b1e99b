"""Argument types and helpers shared by the ``fraudflow`` commands."""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

__all__ = ["REVIEW_DAYS", "existing_file", "iso_date", "non_negative_days", "positive_hours", "positive_int"]

# the simulated analysts' case review (``--review-days`` of replay --analysts and investigate;
# decisions 0066, 0067): a case answers the card's transactions from this many days before the
# alert up to the verdict
REVIEW_DAYS = 3.0


def existing_file(path: str) -> str:
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {path}")
    return path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _number_of(text: str, unit: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of {unit}, got {text!r}") from None


def positive_hours(text: str) -> float:
    """A positive number of hours (``--delay-hours``)."""
    value = _number_of(text, "hours")
    if not 0 < value < 24 * 366:
        raise argparse.ArgumentTypeError(f"must be more than 0 and under a year, got {text}")
    return value


def non_negative_days(text: str) -> float:
    """A number of days, 0 or more and under a year (``--review-days``)."""
    value = _number_of(text, "days")
    if not 0 <= value < 366:
        raise argparse.ArgumentTypeError(f"must be 0 or more and under a year, got {text}")
    return value
