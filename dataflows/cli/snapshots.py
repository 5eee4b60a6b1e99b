"""``fraudflow snapshots``: list, read, compare and verify the model shards' signed exports.

    fraudflow snapshots list [DIR]
    fraudflow snapshots show NAME_OR_PATH [--dir DIR] [--plot PNG] [--json]
    fraudflow snapshots diff A B [--dir DIR]
    fraudflow snapshots verify [PATHS_OR_DIR ...]

DIR defaults to where the flow with the same settings writes its exports
(``FRAUDFLOW_SNAPSHOT_DIR``); the signing key comes from ``FRAUDFLOW_SNAPSHOT_KEY_FILE`` or
``FRAUDFLOW_SNAPSHOT_KEY``. Both are read with the flow's own :class:`dataflows.settings.Settings`
(:func:`dataflows.exports.signing_key`); the format is :mod:`learners.snapshot_format`, the
pages :mod:`learners.snapshot_render`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from dataflows.cli.common import positive_int
from dataflows.errors import FraudflowError
from learners import snapshot_format as fmt
from learners import snapshot_render as render

__all__ = ["register"]

_DIR_HELP = "exports directory (default: where the flow writes them, $FRAUDFLOW_SNAPSHOT_DIR)"
_KEY_SETTINGS = "FRAUDFLOW_SNAPSHOT_KEY_FILE or FRAUDFLOW_SNAPSHOT_KEY"
_KEY_NOTE = ("The signing key is read from FRAUDFLOW_SNAPSHOT_KEY_FILE (a file) or FRAUDFLOW_SNAPSHOT_KEY (the "
             "value); it is never printed.")


def _settings() -> Any:
    """The flow's settings (imported here: the other ``fraudflow`` commands do not pay for them)."""
    from dataflows.settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise FraudflowError(f"bad setting: {exc}") from None


def _directory(value: Optional[str]) -> Path:
    if value:
        return Path(value)
    directory = _settings().effective_snapshot_dir
    if not directory:
        raise FraudflowError("these settings write no exports (FRAUDFLOW_SNAPSHOT_DIR is 'off', or unset with "
                             "FRAUDFLOW_SOURCE=kafka); give the directory")
    return Path(directory)


def _existing_dir(directory: Path) -> Path:
    if not directory.is_dir():
        raise FraudflowError(f"no such directory: {directory} (exports go to $FRAUDFLOW_SNAPSHOT_DIR, see "
                             "`fraudflow settings`)")
    return directory


def _key() -> Optional[bytes]:
    from dataflows.exports import signing_key
    from dataflows.settings import SettingsError

    try:
        return signing_key(_settings().snapshots)
    except SettingsError as exc:
        raise FraudflowError(str(exc)) from None


def _key_or_none() -> tuple[Optional[bytes], str]:
    """(key, problem): a bad key setting is reported, not fatal, where only reading is asked."""
    try:
        return _key(), ""
    except FraudflowError as exc:
        return None, str(exc)


def resolve_export(name_or_path: str, directory: Path) -> Path:
    """An export's JSON path from a path (``.json`` or ``.model``), a name, or a unique name prefix."""
    given = Path(name_or_path)
    if given.is_file():
        return given.with_suffix(".json") if given.suffix == ".model" else given
    if given.is_dir():
        raise FraudflowError(f"{name_or_path} is a directory; give an export name or its .json file")
    stem = given.name[:-len(given.suffix)] if given.suffix in (".json", ".model") else given.name
    if given.parent != Path("."):
        directory = given.parent
    exact = directory / f"{stem}.json"
    if exact.is_file():
        return exact
    matches = sorted(p for p in directory.glob("*.json") if p.stem.startswith(stem)) if directory.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = ", ".join(p.stem for p in matches[:3])
        raise FraudflowError(f"{name_or_path!r} matches {len(matches)} exports in {directory} ({shown}"
                             f"{', ...' if len(matches) > 3 else ''}); give more of the name")
    raise FraudflowError(f"no export named {name_or_path!r} in {directory} "
                         f"(`fraudflow snapshots list {directory}` shows them)")


def _document(path: Path) -> dict:
    try:
        return fmt.read_document(path)
    except fmt.SnapshotError as exc:
        raise FraudflowError(str(exc)) from None


def _status_line(path: Path) -> str:
    key, problem = _key_or_none()
    result = fmt.verify(path, key)
    if result.ok:
        signature = (result.document or {}).get("signature") or {}
        return f"verification: OK (signature and model file check out; key {signature.get('key_id')})"
    if result.reason == fmt.NO_KEY:
        why = problem or f"set {_KEY_SETTINGS} to check it"
        return f"verification: not checked ({why})"
    return f"verification: FAILED - {result.reason}; do not load this model"


# -- commands ------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    directory = _existing_dir(_directory(args.dir))
    rows = fmt.list_exports(directory)
    if not rows:
        print(f"no model exports in {directory}")
        return 0
    print(render.render_list(rows), end="")
    print(f"{len(rows)} export(s) in {directory}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    path = resolve_export(args.export, _directory(args.dir))
    document = _document(path)
    status = _status_line(path)
    if args.json:
        print(json.dumps(document, indent=2))
        print(status, file=sys.stderr)
    else:
        print(status)
        print()
        print(render.render_show(document, top=args.top), end="")
    if args.plot:
        try:
            png = render.plot_export(document, args.plot, top=args.top)
        except fmt.SnapshotError as exc:
            raise FraudflowError(str(exc)) from None
        print(f"plot written to {png}", file=sys.stderr)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    directory = _directory(args.dir)
    path_a, path_b = resolve_export(args.a, directory), resolve_export(args.b, directory)
    print(render.diff_exports(_document(path_a), _document(path_b), top=args.top), end="")
    return 0


def _verify_targets(paths: list[str]) -> list[Path]:
    targets: list[Path] = []
    for raw in paths or [str(_directory(None))]:
        p = Path(raw)
        if p.is_dir():
            found = sorted(q for q in p.glob("*.json"))
            if not found:
                raise FraudflowError(f"no model exports (*.json) in {p}")
            targets += found
        elif p.is_file():
            targets.append(p.with_suffix(".json") if p.suffix == ".model" else p)
        else:
            raise FraudflowError(f"no such file or directory: {p}")
    return targets


def cmd_verify(args: argparse.Namespace) -> int:
    key = _key()
    failed = 0
    results = [fmt.verify(path, key) for path in _verify_targets(args.paths)]
    for result in results:
        if result.ok:
            key_id = ((result.document or {}).get("signature") or {}).get("key_id")
            print(f"OK      {result.path}  (signed with key {key_id})")
        else:
            failed += 1
            print(f"FAILED  {result.path}  {result.reason}")
    if failed:
        if any(r.reason == fmt.NO_KEY for r in results):
            print(f"no signing key: set {_KEY_SETTINGS}", file=sys.stderr)
        print(f"{failed} of {len(results)} export(s) failed verification", file=sys.stderr)
        return 1
    return 0


# -- wiring --------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    """Add ``fraudflow snapshots {list,show,diff,verify}`` to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "snapshots", help="list, read, compare and verify the model shards' signed exports",
        description="Each model shard exports what it has learned as two files: NAME.json (readable: weights or "
                    "feature importances, counts, recent quality, settings fingerprint, signature) and NAME.model "
                    "(the pickled model). NAME is SHARD-EVENTTIME-REASON, e.g. shard-0.0-20180808T120000Z-interval.",
        epilog=_KEY_NOTE)
    sub = parser.add_subparsers(dest="snapshots_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="one line per export: model, last event, labels learned, quality, signed",
                       description="List the exports in DIR sorted by shard then event time (files are read, not "
                                   "verified: use `snapshots verify` for that).")
    p.add_argument("dir", nargs="?", metavar="DIR", help=_DIR_HELP)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="what one export's model learned, as a readable page",
                       description="Print an export for people: model kind and hyper-parameters, event-time range, "
                                   "counts, recent quality, threshold, the top weights (with sign) or feature "
                                   "importances as a text bar chart, settings fingerprint and code version. The first "
                                   "line says whether the signature and model file check out.",
                       epilog="NAME_OR_PATH is a .json or .model file, an export name, or the start of one "
                              "(e.g. shard-0.0-20180808). " + _KEY_NOTE)
    p.add_argument("export", metavar="NAME_OR_PATH", help="export name (or unique prefix), or its .json/.model file")
    p.add_argument("--dir", metavar="DIR", help=_DIR_HELP)
    p.add_argument("--plot", metavar="PNG", help="also draw the top weights or importances as a bar chart here")
    p.add_argument("--json", action="store_true", help="print the JSON document instead (status on stderr)")
    p.add_argument("--top", type=positive_int, default=15, help="weights or importances to list (default %(default)s)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("diff", help="what changed between two exports",
                       description="Compare export A with export B: quality and counts, the weights or importances "
                                   "that moved most (sign flips flagged), features present in only one, changed "
                                   "hyper-parameters, threshold or settings fingerprint.")
    p.add_argument("a", metavar="A", help="older export: name (or unique prefix) or file")
    p.add_argument("b", metavar="B", help="newer export: name (or unique prefix) or file")
    p.add_argument("--dir", metavar="DIR", help=_DIR_HELP)
    p.add_argument("--top", type=positive_int, default=15, help="changes to list (default %(default)s)")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("verify", help="check signatures and model files; exit 1 if any fails",
                       description="Check each export's HMAC-SHA256 signature and its model file's SHA-256 "
                                   "(nothing is unpickled). Prints one line per file: OK, or FAILED with the reason "
                                   "(unsigned, signature mismatch, binary missing, binary sha256 mismatch, unreadable "
                                   "JSON, no signing key configured).",
                       epilog="Exit status: 0 all exports verified, 1 at least one failed, 2 bad input (no such "
                              "path, no exports, unusable key setting). " + _KEY_NOTE)
    p.add_argument("paths", nargs="*", metavar="PATHS_OR_DIR",
                   help="export .json files or directories (default: where the flow writes them, "
                        "$FRAUDFLOW_SNAPSHOT_DIR)")
    p.set_defaults(func=cmd_verify)
