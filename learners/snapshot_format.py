"""Signed model exports, the format: build, sign, write, verify, load and list them.

An export is two files in one directory:

* ``<name>.json``: the human-readable document (format ``fraudflow-snapshot/1``): shard,
  reason, event-time range, the model's weights or feature importances, counts, recent
  quality, settings fingerprint, the binary's SHA-256, and an HMAC-SHA256 signature;
* ``<name>.model``: the model itself, pickled (protocol 5).

``name`` is ``<shard>-<event time, compact>-<reason>``, e.g.
``shard-0.0-20180808T120000Z-interval``; writing the same name again replaces the export
(a replay after a crash re-exports the same model state under the same name).

The signature is HMAC-SHA256 with the signing key over the canonical JSON of the document
without its ``signature`` field (``json.dumps(doc, sort_keys=True, separators=(",", ":"))``).
The document carries the binary's SHA-256, so changing one byte of either file breaks
verification. :func:`load_model` verifies the signature and the binary's hash *before* it
unpickles anything: a pickle can run arbitrary code, so only a model signed with our key is
ever unpickled.

This module takes values: the key as bytes (at least 16, :func:`check_key`) or None for an
unsigned export, which is never loaded back; the directory as a path. Where they come from
(``FRAUDFLOW_SNAPSHOT_KEY_FILE``, ``FRAUDFLOW_SNAPSHOT_DIR``...) is the entry points' business
(:mod:`dataflows.exports`, :mod:`dataflows.cli.snapshots`). Text pages, diffs and plots of
exports are in :mod:`learners.snapshot_render`.

>>> doc = {"shard": "shard-0.0", "reason": "interval", "event_time": {"last": "2018-08-08T12:00:00Z"}}
>>> export_name(doc)
'shard-0.0-20180808T120000Z-interval'
>>> key_id(b"0123456789abcdef")
'9f9f5111'
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from connectors.events import format_ts

__all__ = [
    "FORMAT",
    "MIN_KEY_BYTES",
    "NO_KEY",
    "REASONS",
    "SnapshotError",
    "VerifyResult",
    "build_document",
    "canonical_json",
    "check_key",
    "export_name",
    "key_id",
    "list_exports",
    "load_model",
    "read_document",
    "verify",
    "write_export",
]

log = logging.getLogger(__name__)

FORMAT = "fraudflow-snapshot/1"
_FORMAT_PREFIX = "fraudflow-snapshot/"
REASONS = ("interval", "shutdown", "on_demand")
MIN_KEY_BYTES = 16
FILE_MODE = 0o640
PICKLE_PROTOCOL = 5
ALGORITHM = "HMAC-SHA256"

# verify() reasons
OK = "ok"
UNSIGNED = "unsigned"
SIGNATURE_MISMATCH = "signature mismatch (the JSON was changed or signed with another key)"
BINARY_MISSING = "binary missing"
BINARY_MISMATCH = "binary sha256 mismatch (the model file was changed)"
NOT_A_SNAPSHOT = "not a fraudflow snapshot"
UNREADABLE = "unreadable JSON"
NO_KEY = "no signing key configured"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DOC_ORDER = ("format", "name", "created_at", "shard", "reason", "event_time", "model", "features", "counts",
              "quality", "threshold", "negative_sampling", "code_version", "settings_fingerprint", "binary",
              "signature")


class SnapshotError(Exception):
    """An export cannot be written, trusted or used; the message says which and why."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`.

    Attributes
    ----------
    path
        The JSON document checked.
    ok
        True only if the signature and the binary's hash both check out with the key.
    reason
        ``"ok"`` or why not (one of the module's reason strings).
    document
        The parsed document, or None if it is not a readable fraudflow snapshot. Untrusted
        unless ``ok``.
    """

    path: Path
    ok: bool
    reason: str
    document: Optional[dict]


# -- keys ----------------------------------------------------------------------------------
def key_id(key: bytes) -> str:
    """First 8 hex digits of the key's SHA-256: names the key without revealing it."""
    return hashlib.sha256(key).hexdigest()[:8]


def check_key(key: bytes, source: str) -> bytes:
    """``key`` if it can sign exports (at least 16 bytes); ``source`` names where it came from.

    Raises
    ------
    SnapshotError
        The key is empty or too short; the message names ``source``, never the key.

    >>> check_key(b"0123456789abcdef", "test") == b"0123456789abcdef"
    True
    """
    if not key:
        raise SnapshotError(f"{source}: the snapshot signing key is empty")
    if len(key) < MIN_KEY_BYTES:
        raise SnapshotError(f"{source}: the snapshot signing key is {len(key)} bytes; use at least {MIN_KEY_BYTES} "
                            "(e.g. `openssl rand -hex 32`)")
    return key


# -- the document --------------------------------------------------------------------------
def rfc3339(event_ts: Optional[float]) -> Optional[str]:
    """UTC RFC 3339 as the events write it (:func:`connectors.events.format_ts`), or None for a
    missing or infinite time.

    >>> rfc3339(1533729600.0), rfc3339(1533729600.5), rfc3339(float("-inf"))
    ('2018-08-08T12:00:00Z', '2018-08-08T12:00:00.500000Z', None)
    """
    if event_ts is None or not math.isfinite(event_ts):
        return None
    return format_ts(event_ts)


def _parse_time(value: Any) -> Optional[datetime]:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc) if math.isfinite(value) else None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise SnapshotError(f"event time {value!r} is not RFC 3339") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _event_time(document: Mapping[str, Any]) -> dict:
    raw = document.get("event_time") or {}
    out = {}
    for field in ("first", "last", "built_to"):
        value = raw.get(field)
        out[field] = rfc3339(value) if isinstance(value, (int, float)) else value
    return out


def export_name(document: Mapping[str, Any]) -> str:
    """``<shard>-<last event time, compact>-<reason>`` (``built_to`` if no event yet, else ``unknown``)."""
    shard, reason = document.get("shard"), document.get("reason")
    if not isinstance(shard, str) or not _SAFE_NAME.match(shard):
        raise SnapshotError(f"snapshot shard {shard!r} is not a plain name (letters, digits, '.', '_', '-')")
    if reason not in REASONS:
        raise SnapshotError(f"snapshot reason {reason!r} is not one of {', '.join(REASONS)}")
    times = _event_time(document)
    when = _parse_time(times["last"]) or _parse_time(times["built_to"])
    compact = when.strftime("%Y%m%dT%H%M%SZ") if when else "unknown"
    return f"{shard}-{compact}-{reason}"


def build_document(*, shard: str, reason: str, kind: str, model: Any, features: Sequence[str],
                   counts: Mapping[str, int], quality: Mapping[str, Any], threshold: float,
                   negative_sampling: float, supervised: bool, seed: int, code_version: str,
                   settings_fingerprint: str, first_ts: float, last_ts: float, built_to: float,
                   model_name: str = "") -> dict:
    """The document for :func:`write_export`, from what a model shard holds.

    The model section is :func:`learners.models.describe_model` of ``model`` (weights or
    feature importances), with ``kind`` the ``FRAUDFLOW_MODEL_KIND`` it was built as (warm
    start checks it), ``name`` what the flow calls it in scores (``kind`` unless given),
    ``family`` what River calls it, and the ``seed`` among the hyper-parameters. Times are
    POSIX seconds (infinite: none yet).
    """
    from learners.models import describe_model

    described = describe_model(model)
    described["family"] = described.pop("kind")
    described["kind"] = kind
    described["name"] = model_name or kind
    described.setdefault("hyper_parameters", {})["seed"] = seed
    return {
        "shard": shard,
        "reason": reason,
        "event_time": {"first": rfc3339(first_ts), "last": rfc3339(last_ts), "built_to": rfc3339(built_to)},
        "model": described,
        "features": list(features),
        "counts": dict(counts),
        "quality": dict(quality),
        "threshold": threshold,
        "negative_sampling": negative_sampling,
        "supervised": supervised,
        "code_version": code_version,
        "settings_fingerprint": settings_fingerprint,
    }


def _json_ready(value: Any) -> Any:
    """Plain JSON values: tuples to lists, numpy scalars to numbers, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy scalar
    if callable(item):
        return _json_ready(item())
    raise SnapshotError(f"snapshot document holds a {type(value).__name__}, which is not plain JSON")


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """The signed bytes: the document without ``signature``, keys sorted, no spaces."""
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _signature_value(document: Mapping[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical_json(document), hashlib.sha256).hexdigest()


def _ordered(document: Mapping[str, Any]) -> dict:
    head = {k: document[k] for k in _DOC_ORDER if k in document}
    return {**head, **{k: v for k, v in document.items() if k not in head}}


# -- writing -------------------------------------------------------------------------------
def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_export(directory: str | Path, document: Mapping[str, Any], model: object, key: Optional[bytes]) -> Path:
    """Write ``<name>.model`` then ``<name>.json`` into ``directory``; return the JSON's path.

    Parameters
    ----------
    directory
        Created if missing.
    document
        At least ``shard`` and ``reason`` (and usually what :func:`build_document` builds);
        ``format``, ``name``, ``created_at``, ``binary`` and ``signature`` are filled here.
    model
        Pickled with protocol 5.
    key
        Signing key (see :func:`check_key`), or None to write an unsigned export, which
        :func:`load_model` never loads.

    Raises
    ------
    SnapshotError
        Bad shard or reason, a document that is not plain JSON, or a model that cannot be
        pickled. Disk errors (``OSError``) propagate.
    """
    doc = _json_ready(document)
    doc.pop("signature", None)
    name = export_name(doc)
    doc.update(format=FORMAT, name=name, created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               event_time=_event_time(doc))
    try:
        blob = pickle.dumps(model, protocol=PICKLE_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - any pickling failure is the model's
        raise SnapshotError(f"{name}: the model cannot be pickled ({type(exc).__name__}: {exc})") from None
    doc["binary"] = {"file": f"{name}.model", "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    if key:
        doc["signature"] = {"algorithm": ALGORITHM, "key_id": key_id(key), "value": _signature_value(doc, key)}
    else:
        doc["signature"] = None
    text = json.dumps(_ordered(doc), indent=2, allow_nan=False) + "\n"

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / doc["binary"]["file"], blob)
    json_path = out / f"{name}.json"
    _write_atomic(json_path, text.encode())
    _fsync_dir(out)
    # periodic exports are routine (one a day of event time): only at DEBUG, the others at INFO
    log.log(logging.DEBUG if doc.get("reason") == "interval" else logging.INFO,
            "model export %s written (%s bytes, %s)", json_path, f"{len(blob):,}", "signed" if key else "unsigned")
    return json_path


# -- checking and loading ------------------------------------------------------------------
def read_document(json_path: str | Path) -> dict:
    """Parse an export's JSON document without checking it; raise SnapshotError if it is not one."""
    result = _parse(Path(json_path))
    if isinstance(result, str):
        raise SnapshotError(f"{json_path}: {result}")
    return result


def _parse(path: Path) -> dict | str:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return UNREADABLE
    if not isinstance(doc, dict) or not isinstance(doc.get("format"), str) or \
            not doc["format"].startswith(_FORMAT_PREFIX):
        return NOT_A_SNAPSHOT
    return doc


def _binary_path(path: Path, doc: Mapping[str, Any]) -> Optional[Path]:
    binary = doc.get("binary")
    if not isinstance(binary, dict):
        return None
    name = binary.get("file")
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or not isinstance(binary.get("sha256"), str):
        return None
    return path.parent / name


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(json_path: str | Path, key: Optional[bytes]) -> VerifyResult:
    """Check an export's signature, then its binary's SHA-256; never unpickles anything.

    Returns
    -------
    VerifyResult
        ``ok`` only if the document is signed with ``key`` and the binary matches it.
    """
    path = Path(json_path)
    doc = _parse(path)
    if isinstance(doc, str):
        return VerifyResult(path, False, doc, None)
    signature = doc.get("signature")
    if signature is None:
        return VerifyResult(path, False, UNSIGNED, doc)
    if key is None:
        return VerifyResult(path, False, NO_KEY, doc)
    value = signature.get("value") if isinstance(signature, dict) else None
    try:
        expected = _signature_value(doc, key)
    except (TypeError, ValueError):
        return VerifyResult(path, False, NOT_A_SNAPSHOT, doc)
    if not isinstance(value, str) or signature.get("algorithm") != ALGORITHM or \
            not hmac.compare_digest(expected, value):
        return VerifyResult(path, False, SIGNATURE_MISMATCH, doc)
    binary = _binary_path(path, doc)
    if binary is None:
        return VerifyResult(path, False, NOT_A_SNAPSHOT, doc)
    try:
        actual = _sha256_file(binary)
    except FileNotFoundError:
        return VerifyResult(path, False, BINARY_MISSING, doc)
    except OSError:
        return VerifyResult(path, False, BINARY_MISSING, doc)
    if not hmac.compare_digest(actual, doc["binary"]["sha256"]):
        return VerifyResult(path, False, BINARY_MISMATCH, doc)
    return VerifyResult(path, True, OK, doc)


def _hint(reason: str) -> str:
    if reason == NO_KEY:
        return " (give the key the exports were signed with)"
    if reason == UNSIGNED:
        return " (exported without a signing key; unsigned models are never loaded)"
    return ""


def _feature_mismatch(name: str, found: Sequence[str], expected: Sequence[str]) -> str:
    missing = [f for f in expected if f not in found]
    extra = [f for f in found if f not in expected]
    if not missing and not extra:
        return f"{name}: snapshot features are in a different order from this flow's"
    parts = []
    if missing:
        parts.append(f"lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if extra:
        parts.append(f"has unknown {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    return f"{name}: snapshot features do not match this flow's: it {' and '.join(parts)}"


def load_model(json_path: str | Path, key: Optional[bytes], expect_kind: Optional[str] = None,
               expect_features: Optional[Sequence[str]] = None) -> tuple[object, dict]:
    """Verify an export, check it fits this flow, and only then unpickle its model.

    Parameters
    ----------
    json_path
        The export's ``.json`` document.
    key
        The signing key; unsigned exports are refused.
    expect_kind
        ``FRAUDFLOW_MODEL_KIND`` of the flow that will use the model, or None to accept any.
    expect_features
        The flow's feature names, in order, or None to accept any.

    Returns
    -------
    tuple
        ``(model, document)``.

    Raises
    ------
    SnapshotError
        For every failure (verification, format, kind, features, unpickling); a pickle
        exception never escapes.
    """
    path = Path(json_path)
    result = verify(path, key)
    if not result.ok:
        raise SnapshotError(f"{path.name}: {result.reason}{_hint(result.reason)}")
    doc = result.document
    assert doc is not None
    if doc["format"] != FORMAT:
        raise SnapshotError(f"{path.name}: snapshot format {doc['format']!r} is not supported (this version "
                            f"reads {FORMAT!r})")
    model_section = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    kind = model_section.get("kind")
    if expect_kind is not None and kind != expect_kind:
        raise SnapshotError(f"{path.name}: snapshot model kind {kind!r} does not match FRAUDFLOW_MODEL_KIND "
                            f"{expect_kind!r}")
    features = doc.get("features")
    if expect_features is not None and (not isinstance(features, list) or features != list(expect_features)):
        raise SnapshotError(_feature_mismatch(path.name, features if isinstance(features, list) else [],
                                              list(expect_features)))
    binary = _binary_path(path, doc)
    assert binary is not None
    try:
        blob = binary.read_bytes()
    except OSError:
        raise SnapshotError(f"{path.name}: {BINARY_MISSING}") from None
    # Hash the very bytes we unpickle: the file may have been replaced since verify().
    if not hmac.compare_digest(hashlib.sha256(blob).hexdigest(), doc["binary"]["sha256"]):
        raise SnapshotError(f"{path.name}: {BINARY_MISMATCH}")
    try:
        model = pickle.loads(blob)
    except Exception as exc:  # noqa: BLE001 - signed but not loadable here (e.g. another River version)
        raise SnapshotError(f"{path.name}: the signed model could not be unpickled "
                            f"({type(exc).__name__}: {exc})") from None
    log.info("loaded model export %s (kind %s, key %s)", path.name, kind, doc["signature"].get("key_id"))
    return model, doc


# -- listing -------------------------------------------------------------------------------
def _natural(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def list_exports(directory: str | Path) -> list[dict]:
    """One summary per export in ``directory``, sorted by shard then event time (not verified).

    Files that are not fraudflow snapshots are skipped; unreadable ones are listed last with
    an ``error``.
    """
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        doc = _parse(path)
        if doc == NOT_A_SNAPSHOT:
            log.debug("skipping %s: not a fraudflow snapshot", path)
            continue
        if isinstance(doc, str):
            out.append({"name": path.stem, "path": str(path), "error": doc})
            continue
        out.append(_summary(path, doc))
    return sorted(out, key=lambda s: ("error" in s, _natural(s.get("shard") or ""), s.get("last") or "",
                                      s["name"]))


def _summary(path: Path, doc: Mapping[str, Any]) -> dict:
    model = doc.get("model") or {}
    counts = doc.get("counts") or {}
    quality = doc.get("quality") or {}
    times = doc.get("event_time") or {}
    signature = doc.get("signature")
    return {
        "name": doc.get("name") or path.stem,
        "path": str(path),
        "shard": doc.get("shard"),
        "reason": doc.get("reason"),
        "first": times.get("first"),
        "last": times.get("last"),
        "built_to": times.get("built_to"),
        "created_at": doc.get("created_at"),
        "kind": model.get("kind"),
        "scored": counts.get("scored"),
        "labels_learned": counts.get("labels_learned"),
        "frauds_learned": counts.get("frauds_learned"),
        "average_precision": quality.get("average_precision"),
        "auc_roc": quality.get("auc_roc"),
        "signed": isinstance(signature, dict),
        "key_id": signature.get("key_id") if isinstance(signature, dict) else None,
    }
