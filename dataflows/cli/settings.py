"""``fraudflow settings``: every ``FRAUDFLOW_*`` setting with its default and meaning, by section."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from datetime import date
from typing import Any

__all__ = ["register"]

log = logging.getLogger("fraudflow")


def cmd_settings(args: argparse.Namespace) -> int:
    from dataflows.settings import KAFKA_OPT_PREFIX, Settings, variables

    section_doc = {f.name: (f.default_factory.__doc__ or "").strip().splitlines()[0]  # type: ignore[misc]
                   for f in fields(Settings)}
    section = None
    for var in variables():
        if var.section != section:
            print(f"{'' if section is None else chr(10)}[{var.section}]  {section_doc[var.section]}")
            section = var.section
        default = var.default
        if isinstance(default, date):
            default = default.isoformat()
        elif isinstance(default, dict):
            default = ""
        name = var.variable if var.flat != "kafka_options" else KAFKA_OPT_PREFIX + "*"
        print(f"{name:40s} default {default!s:32s} {var.field.metadata.get('help', '')}")
    return 0



def register(sub: Any) -> None:
    p = sub.add_parser("settings", help="list every FRAUDFLOW_* setting with its default and meaning, by section")
    p.set_defaults(func=cmd_settings)
