"""``fraudflow settings``: every ``FRAUDFLOW_*`` setting with its default and meaning."""

from __future__ import annotations

import argparse
import logging
from dataclasses import MISSING, fields
from datetime import date
from typing import Any

__all__ = ["register"]

log = logging.getLogger("fraudflow")


def cmd_settings(args: argparse.Namespace) -> int:
    from dataflows.settings import PREFIX, Settings

    for f in fields(Settings):
        default = "" if f.default is MISSING else f.default
        if isinstance(default, date):
            default = default.isoformat()
        name = PREFIX + f.name.upper() if f.name != "kafka_options" else PREFIX + "KAFKA_OPT_*"
        print(f"{name:40s} default {default!s:32s} {f.metadata.get('help', '')}")
    return 0



def register(sub: Any) -> None:
    p = sub.add_parser("settings", help="list every FRAUDFLOW_* setting with its default and meaning")
    p.set_defaults(func=cmd_settings)
