"""Model snapshot exports from the flow, and warm start from a verified export.

Each model shard writes a signed export (``learners.snapshots``) every
``FRAUDFLOW_SNAPSHOT_INTERVAL_HOURS`` of event time, at the end of a bounded input, and when
asked (``POST /snapshots`` on the metrics port). ``FRAUDFLOW_WARM_START`` names an export that
every shard starts from; it is verified (signature, model file checksum, model kind, feature
list) before anything is unpickled, and a bad file stops start-up with a message naming it.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

from connectors.events import format_ts
from dataflows.settings import Settings, SettingsError
from learners.features import FEATURE_NAMES
from learners.models import describe_model

__all__ = ["WarmStart", "code_version", "make_exporter", "signing_key", "warm_start"]

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version, plus the git commit when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("fraudflow")
    except PackageNotFoundError:
        base = "0+unknown"
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=2).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{base}+g{commit}" if commit else base


def signing_key(settings: Settings) -> Optional[bytes]:
    """The HMAC key from FRAUDFLOW_SNAPSHOT_KEY_FILE / FRAUDFLOW_SNAPSHOT_KEY (settings or env)."""
    from learners.snapshots import SnapshotError, signing_key_from_env

    environ = dict(os.environ)
    if settings.snapshot_key_file:
        environ["FRAUDFLOW_SNAPSHOT_KEY_FILE"] = settings.snapshot_key_file
    if settings.snapshot_key:
        environ["FRAUDFLOW_SNAPSHOT_KEY"] = settings.snapshot_key
    try:
        return signing_key_from_env(environ)
    except SnapshotError as exc:
        raise SettingsError(str(exc)) from None


def _ts(value: float) -> Optional[str]:
    return format_ts(value) if value not in (float("inf"), float("-inf")) else None


def export_document(shard: Any, settings: Settings, reason: str) -> dict[str, Any]:
    """The readable half of an export: what the shard's model is and has learned."""
    cfg = shard.config
    model = describe_model(shard.model)
    model["family"] = model.pop("kind")
    model["kind"] = cfg.kind  # what FRAUDFLOW_MODEL_KIND names: warm start checks it
    model["name"] = cfg.model_name
    model.setdefault("hyper_parameters", {})["seed"] = cfg.seed
    return {
        "shard": shard.name or "shard",
        "reason": reason,
        "event_time": {"first": _ts(shard.first_ts), "last": _ts(shard.last_ts), "built_to": _ts(shard.built_to)},
        "model": model,
        "features": list(FEATURE_NAMES),
        "counts": dict(shard.counts),
        "quality": shard.online_quality(),
        "threshold": cfg.threshold,
        "negative_sampling": cfg.negative_sampling,
        "supervised": shard.supervised,
        "code_version": code_version(),
        "settings_fingerprint": settings.fingerprint(),
    }


def make_exporter(settings: Settings, on_written: Callable[[], None]) -> Optional[Callable[[Any, str], None]]:
    """A ``(shard, reason)`` callback writing exports, or None when exports are off."""
    directory = settings.effective_snapshot_dir
    if not directory:
        return None
    from learners.snapshots import write_export

    key = signing_key(settings)  # None: learners.snapshots warns once that exports are unsigned

    def export(shard: Any, reason: str) -> None:
        if shard.name is None and shard.counts["scored"] == 0:
            return  # nothing learned, nothing to show
        try:
            path = write_export(directory, export_document(shard, settings, reason), shard.model, key)
        except OSError as exc:  # a full disk must not stop fraud scoring
            log.error("could not write a model snapshot to %s: %s", directory, exc)
            return
        on_written()
        log.debug("model snapshot %s (%s)", path, reason)

    return export


class WarmStart:
    """A verified export to start every shard's model from."""

    def __init__(self, model: Any, document: dict[str, Any], path: str) -> None:
        self.model = model
        self.document = document
        self.path = path

    def apply(self, shard: Any) -> None:
        shard.warm_start(copy.deepcopy(self.model), self.document)


def warm_start(settings: Settings) -> Optional[WarmStart]:
    """Load and verify FRAUDFLOW_WARM_START; any problem is a SettingsError naming it."""
    if not settings.warm_start:
        return None
    from learners.snapshots import SnapshotError, load_model

    try:
        model, document = load_model(settings.warm_start, signing_key(settings), expect_kind=settings.model_kind,
                                     expect_features=list(FEATURE_NAMES))
    except SnapshotError as exc:
        raise SettingsError(f"FRAUDFLOW_WARM_START: {settings.warm_start}: {exc}") from None
    log.info("warm start from %s (%s, %s labels learned)", settings.warm_start, document.get("shard"),
             document.get("counts", {}).get("labels_learned"))
    return WarmStart(model, document, settings.warm_start)
