"""Model snapshot exports from the flow, and warm start from a verified export.

Each model shard writes a signed export (:mod:`learners.snapshot_format`) every
``FRAUDFLOW_SNAPSHOT_INTERVAL_HOURS`` of event time, at the end of a bounded input, and when
asked (``POST /snapshots`` on the metrics port). ``FRAUDFLOW_WARM_START`` names an export that
every shard starts from; it is verified (signature, model file checksum, model kind, feature
list) before anything is unpickled, and a bad file stops start-up with a message naming it.

This is where the snapshot settings are read: :func:`signing_key` turns
``FRAUDFLOW_SNAPSHOT_KEY_FILE`` / ``FRAUDFLOW_SNAPSHOT_KEY`` into key bytes for the flow and for
``fraudflow snapshots``; the format itself only takes values.
"""

from __future__ import annotations

import copy
import logging
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

from dataflows.settings import Settings, SettingsError, SnapshotSettings
from learners.features import FEATURE_NAMES
from learners.snapshot_format import SnapshotError, build_document, check_key, load_model, write_export

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


def signing_key(snapshots: SnapshotSettings) -> Optional[bytes]:
    """The HMAC key of ``FRAUDFLOW_SNAPSHOT_KEY_FILE`` (trailing newline stripped) or
    ``FRAUDFLOW_SNAPSHOT_KEY`` (the settings' ``snapshots`` section), or None when neither is set.

    Raises
    ------
    SettingsError
        The key file is unreadable, or the key is empty or shorter than 16 bytes. The message
        names the setting, never the key.
    """
    path = snapshots.key_file
    if path:
        if snapshots.key:
            log.warning("both FRAUDFLOW_SNAPSHOT_KEY_FILE and FRAUDFLOW_SNAPSHOT_KEY are set; using the key file")
        try:
            key = Path(path).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise SettingsError(f"FRAUDFLOW_SNAPSHOT_KEY_FILE: cannot read the signing key file {path}: "
                                f"{exc.strerror or exc}") from None
        source = f"FRAUDFLOW_SNAPSHOT_KEY_FILE ({path})"
    elif snapshots.key:
        key, source = snapshots.key.encode(), "FRAUDFLOW_SNAPSHOT_KEY"
    else:
        return None
    try:
        return check_key(key, source)
    except SnapshotError as exc:
        raise SettingsError(str(exc)) from None


def export_document(shard: Any, settings_fingerprint: str, reason: str) -> dict[str, Any]:
    """The readable half of an export: what the shard's model is and has learned, under the
    settings of that fingerprint (:meth:`Settings.fingerprint`)."""
    cfg = shard.config
    return build_document(
        shard=shard.name or "shard", reason=reason, kind=cfg.kind, model_name=cfg.model_name, model=shard.model,
        features=FEATURE_NAMES, counts=shard.counts, quality=shard.online_quality(), threshold=cfg.threshold,
        negative_sampling=cfg.negative_sampling, supervised=shard.supervised, seed=cfg.seed,
        code_version=code_version(), settings_fingerprint=settings_fingerprint, first_ts=shard.first_ts,
        last_ts=shard.last_ts, built_to=shard.built_to)


def make_exporter(settings: Settings, on_written: Callable[[], None]) -> Optional[Callable[[Any, str], None]]:
    """A ``(shard, reason)`` callback writing exports, or None when exports are off."""
    directory = settings.effective_snapshot_dir
    if not directory:
        return None
    key = signing_key(settings.snapshots)
    fingerprint = settings.fingerprint()
    if key is None:
        log.warning("model exports are written unsigned (set FRAUDFLOW_SNAPSHOT_KEY_FILE or FRAUDFLOW_SNAPSHOT_KEY "
                    "to sign them); unsigned exports cannot be loaded back")

    def export(shard: Any, reason: str) -> None:
        if shard.name is None and shard.counts["scored"] == 0:
            return  # nothing learned, nothing to show
        try:
            path = write_export(directory, export_document(shard, fingerprint, reason), shard.model, key)
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


def warm_start(snapshots: SnapshotSettings, model_kind: str) -> Optional[WarmStart]:
    """Load and verify FRAUDFLOW_WARM_START (of the ``snapshots`` section) for a model of
    ``model_kind``; any problem is a SettingsError naming it."""
    path = snapshots.warm_start
    if not path:
        return None
    key = signing_key(snapshots)
    try:
        model, document = load_model(path, key, expect_kind=model_kind,
                                     expect_features=list(FEATURE_NAMES))
    except SnapshotError as exc:
        where = "" if key else "; the key comes from FRAUDFLOW_SNAPSHOT_KEY_FILE or FRAUDFLOW_SNAPSHOT_KEY"
        raise SettingsError(f"FRAUDFLOW_WARM_START: {path}: {exc}{where}") from None
    log.info("warm start from %s (%s, %s labels learned)", path, document.get("shard"),
             document.get("counts", {}).get("labels_learned"))
    return WarmStart(model, document, path)
