"""The one error a fraudflow command reports to its user: one line, exit status 2.

Raise :class:`FraudflowError` (or a subclass) for a problem the user can fix: a missing file,
an unknown account, a bad setting. The command line (``dataflows.cli.main``) prints its
message after the command's name and exits 2; anything else is a bug and keeps its traceback.
This module imports nothing, so any layer can raise it without importing the command line.
"""

from __future__ import annotations

__all__ = ["FraudflowError"]


class FraudflowError(Exception):
    """A problem with the user's input or environment; the message is one line naming it."""
