"""Signed model exports: what a model shard learned, readable without Python, loadable safely.

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

The key comes from ``FRAUDFLOW_SNAPSHOT_KEY_FILE`` (a file, trailing newline stripped) or
``FRAUDFLOW_SNAPSHOT_KEY`` (the value), at least 16 bytes; it is never logged. Without a key,
exports are written unsigned (a warning is logged once) and cannot be loaded back.

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

__all__ = [
    "DEFAULT_DIR",
    "FORMAT",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "REASONS",
    "SNAPSHOT_DIR_ENV",
    "SnapshotError",
    "VerifyResult",
    "diff_exports",
    "export_name",
    "key_id",
    "list_exports",
    "load_model",
    "new_document",
    "plot_export",
    "read_document",
    "render_show",
    "signing_key_from_env",
    "snapshot_dir_from_env",
    "verify",
    "write_export",
]

log = logging.getLogger(__name__)

FORMAT = "fraudflow-snapshot/1"
_FORMAT_PREFIX = "fraudflow-snapshot/"
REASONS = ("interval", "shutdown", "on_demand")
KEY_ENV = "FRAUDFLOW_SNAPSHOT_KEY"
KEY_FILE_ENV = "FRAUDFLOW_SNAPSHOT_KEY_FILE"
SNAPSHOT_DIR_ENV = "FRAUDFLOW_SNAPSHOT_DIR"
DEFAULT_DIR = "fraudflow-output/snapshots"
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
_warned_unsigned = False


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


def signing_key_from_env(environ: Mapping[str, str] = os.environ) -> Optional[bytes]:
    """The signing key from ``FRAUDFLOW_SNAPSHOT_KEY_FILE`` or ``FRAUDFLOW_SNAPSHOT_KEY``, or None.

    Parameters
    ----------
    environ
        Where to look (the process environment by default).

    Returns
    -------
    bytes or None
        The key (a key file's trailing newline stripped), or None if neither variable is set.

    Raises
    ------
    SnapshotError
        The key file is unreadable, or the key is empty or shorter than 16 bytes. The message
        names the variable, never the key.
    """
    path = environ.get(KEY_FILE_ENV)
    if path:
        if environ.get(KEY_ENV):
            log.warning("both %s and %s are set; using the key file", KEY_FILE_ENV, KEY_ENV)
        try:
            key = Path(path).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise SnapshotError(f"{KEY_FILE_ENV}: cannot read the signing key file {path}: "
                                f"{exc.strerror or exc}") from None
        return _checked_key(key, f"{KEY_FILE_ENV} ({path})")
    if KEY_ENV in environ:
        return _checked_key(environ[KEY_ENV].encode(), KEY_ENV)
    return None


def _checked_key(key: bytes, source: str) -> bytes:
    if not key:
        raise SnapshotError(f"{source}: the snapshot signing key is empty")
    if len(key) < MIN_KEY_BYTES:
        raise SnapshotError(f"{source}: the snapshot signing key is {len(key)} bytes; use at least {MIN_KEY_BYTES} "
                            "(e.g. `openssl rand -hex 32`)")
    return key


def snapshot_dir_from_env(environ: Mapping[str, str] = os.environ) -> Path:
    """Where exports go: ``FRAUDFLOW_SNAPSHOT_DIR`` or ``fraudflow-output/snapshots``."""
    return Path(environ.get(SNAPSHOT_DIR_ENV) or DEFAULT_DIR)


# -- the document --------------------------------------------------------------------------
def rfc3339(event_ts: Optional[float]) -> Optional[str]:
    """UTC RFC 3339 with a ``Z`` to the second, or None for a missing or infinite time.

    >>> rfc3339(1533729600.0), rfc3339(float("-inf"))
    ('2018-08-08T12:00:00Z', None)
    """
    if event_ts is None or not math.isfinite(event_ts):
        return None
    return datetime.fromtimestamp(event_ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def new_document(*, shard: str, reason: str, kind: str, model: Any, features: Sequence[str],
                 counts: Mapping[str, int], quality: Optional[Mapping[str, Any]] = None,
                 threshold: float = 0.5, negative_sampling: float = 0.1, code_version: str = "",
                 settings_fingerprint: str = "", first_ts: Optional[float] = None,
                 last_ts: Optional[float] = None, built_to: Optional[float] = None) -> dict:
    """The document for :func:`write_export`, from what a model shard holds.

    ``model`` is described with :func:`learners.models.describe_model`; the model section's
    ``kind`` is the ``FRAUDFLOW_MODEL_KIND`` (``logreg``...) and ``name`` what River calls it.
    Times are POSIX seconds (infinite = none yet).
    """
    from learners.models import describe_model

    described = dict(describe_model(model))
    model_name = described.pop("kind", type(model).__name__)
    return {
        "shard": shard,
        "reason": reason,
        "event_time": {"first": rfc3339(first_ts), "last": rfc3339(last_ts), "built_to": rfc3339(built_to)},
        "model": {"kind": kind, "name": model_name, **described},
        "features": list(features),
        "counts": dict(counts),
        "quality": dict(quality) if quality else
        {"window_labels": 0, "window_frauds": 0, "average_precision": None, "auc_roc": None},
        "threshold": threshold,
        "negative_sampling": negative_sampling,
        "code_version": code_version or code_version_default(),
        "settings_fingerprint": settings_fingerprint,
    }


def code_version_default() -> str:
    """The installed fraudflow package version, or ``unknown``."""
    try:
        from importlib.metadata import version

        return f"fraudflow {version('fraudflow')}"
    except Exception:  # noqa: BLE001 - not installed as a package
        return "unknown"


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
        At least ``shard`` and ``reason`` (and usually what :func:`new_document` builds);
        ``format``, ``name``, ``created_at``, ``binary`` and ``signature`` are filled here.
    model
        Pickled with protocol 5.
    key
        Signing key, or None to write an unsigned export (logged once as a warning).

    Raises
    ------
    SnapshotError
        Bad shard or reason, a document that is not plain JSON, or a model that cannot be
        pickled. Disk errors (``OSError``) propagate.
    """
    global _warned_unsigned

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
        if not _warned_unsigned:
            log.warning("model exports are written unsigned (set %s or %s to sign them); "
                        "unsigned exports cannot be loaded back", KEY_FILE_ENV, KEY_ENV)
            _warned_unsigned = True
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
        return f" (set {KEY_FILE_ENV} or {KEY_ENV} to the key the exports were signed with)"
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


# -- reading for people --------------------------------------------------------------------
def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    return str(value)


def _signed(value: Optional[float], digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def model_values(document: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """(``"weights"`` or ``"feature_importances"``, feature -> value), or ``("", {})``."""
    model = document.get("model") or {}
    for field in ("weights", "feature_importances"):
        values = model.get(field)
        if isinstance(values, dict) and values:
            return field, {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
    return "", {}


def _top(values: Mapping[str, float], top: int) -> list[tuple[str, float]]:
    return sorted(values.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:top]


def _weight_bars(values: Mapping[str, float], model: Mapping[str, Any], top: int, width: int = 24) -> list[str]:
    rows = _top(values, top)
    scale = max((abs(v) for _, v in rows), default=0.0) or 1.0
    means, stds = model.get("scaler_mean") or {}, model.get("scaler_std") or {}
    label = max((len(n) for n, _ in rows), default=7)
    lines = [f"  {'feature':<{label}}  {'weight':>9}  {'mean':>10}  {'std':>10}  "
             f"{'<- towards legitimate':>{width}}|{'towards fraud ->':<{width}}".rstrip()]
    for name, value in rows:
        n = max(1, round(abs(value) / scale * width)) if value else 0
        bar = f"{'':>{width}}|{'#' * n:<{width}}" if value >= 0 else f"{'#' * n:>{width}}|{'':<{width}}"
        lines.append(f"  {name:<{label}}  {value:>+9.4f}  {_num(means.get(name)):>10}  {_num(stds.get(name)):>10}  "
                     f"{bar}".rstrip())
    return lines


def _importance_bars(values: Mapping[str, float], top: int, width: int = 40) -> list[str]:
    rows = _top(values, top)
    scale = max((v for _, v in rows), default=0.0) or 1.0
    label = max((len(n) for n, _ in rows), default=7)
    lines = [f"  {'feature':<{label}}  {'share':>7}"]
    for name, value in rows:
        lines.append(f"  {name:<{label}}  {value:>7.1%}  {'#' * max(1, round(value / scale * width))}")
    return lines


def _section(title: str, rows: Sequence[tuple[str, Any]]) -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [title, *(f"  {k:<{width}}  {v}".rstrip() for k, v in rows), ""]


def render_show(document: Mapping[str, Any], top: int = 15) -> str:
    """A plain-text page describing an export, for people who do not read Python.

    Parameters
    ----------
    document
        An export's JSON document.
    top
        How many weights or importances to list.
    """
    model = document.get("model") or {}
    times = document.get("event_time") or {}
    counts = document.get("counts") or {}
    quality = document.get("quality") or {}
    binary = document.get("binary") or {}
    signature = document.get("signature")
    params = model.get("hyper_parameters") or {}
    lines = [f"model export {document.get('name', '?')}", ""]
    lines += _section("where and when", [
        ("shard", document.get("shard", "?")),
        ("reason", document.get("reason", "?")),
        ("exported at", f"{document.get('created_at', '?')} (wall clock)"),
        ("events seen", f"{times.get('first') or 'n/a'} .. {times.get('last') or 'n/a'} (event time)"),
        ("labels learned to", f"{times.get('built_to') or 'n/a'} (labels released before this are in the model)"),
    ])
    names = [str(model[k]) for k in ("name", "family") if model.get(k) and model.get(k) != model.get("kind")]
    model_rows = [("kind", f"{model.get('kind', '?')}" + (f" ({', '.join(dict.fromkeys(names))})" if names else "")),
                  ("hyper-parameters", ", ".join(f"{k}={_num(v)}" for k, v in params.items()) or "n/a")]
    if "intercept" in model:
        intercept = model.get("intercept")
        average = f", probability {1.0 / (1.0 + math.exp(-intercept)):.3g}" if isinstance(intercept, float) and \
            abs(intercept) < 700 else ""
        model_rows.append(("intercept", f"{_signed(intercept)} (log-odds of fraud for a transaction with every "
                                        f"feature at its mean{average})"))
    model_rows.append(("features", f"{len(document.get('features') or [])}"))
    lines += _section("model", model_rows)
    lines += _section("counts", [(k.replace("_", " "), _num(v)) for k, v in counts.items()])
    ap, auc = quality.get("average_precision"), quality.get("auc_roc")
    lines += _section("quality on the recent labelled window", [
        ("labels", _num(quality.get("window_labels"))),
        ("frauds", _num(quality.get("window_frauds"))),
        ("average precision", _num(ap) if ap is not None else "n/a (no fraud in the window yet)"),
        ("AUC ROC", _num(auc) if auc is not None else "n/a"),
    ])
    lines += _section("decision", [
        ("alert threshold", f"{_num(document.get('threshold'))} (fraud probability)"),
        ("negative sampling", f"{_num(document.get('negative_sampling'))} (share of legitimate labels learned; "
                              "all of them at terminals with known frauds)"),
    ])
    field, values = model_values(document)
    if field == "weights":
        lines += [f"top {min(top, len(values))} of {len(values)} weights (change in the log-odds of fraud per "
                  "standard deviation of the feature; mean and std are the running standardisation)",
                  *_weight_bars(values, model, top), ""]
    elif field == "feature_importances":
        lines += [f"top {min(top, len(values))} of {len(values)} feature importances (share of tree splits on "
                  "the feature)", *_importance_bars(values, top), ""]
    else:
        lines += ["no weights or feature importances recorded for this model (no split yet, or not described)", ""]
    lines += _section("provenance", [
        ("code version", document.get("code_version") or "n/a"),
        ("settings fingerprint", document.get("settings_fingerprint") or "n/a"),
        ("format", document.get("format", "?")),
        ("binary", f"{binary.get('file', '?')} ({_num(binary.get('bytes'))} bytes, sha256 "
                   f"{str(binary.get('sha256', '?'))[:16]}...)"),
        ("signature", f"{signature.get('algorithm')} with key {signature.get('key_id')}"
         if isinstance(signature, dict) else "none (unsigned export)"),
    ])
    return "\n".join(lines).rstrip() + "\n"


def plot_export(document: Mapping[str, Any], png_path: str | Path, top: int = 15) -> Path:
    """Horizontal bar chart of the top weights (signed) or feature importances, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    field, values = model_values(document)
    if not values:
        raise SnapshotError(f"{document.get('name', 'export')}: no weights or feature importances to plot")
    rows = _top(values, top)[::-1]
    names = [n for n, _ in rows]
    numbers = [v for _, v in rows]
    fig = Figure(figsize=(8.0, 0.35 * len(rows) + 1.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if field == "weights":
        colours = ["tab:red" if v > 0 else "tab:blue" for v in numbers]
        ax.axvline(0, color="black", linewidth=0.8)
        xlabel = "weight: log-odds of fraud per std of the feature\n(red: towards fraud, blue: towards legitimate)"
    else:
        colours = ["tab:green"] * len(numbers)
        xlabel = "share of tree splits on the feature"
    ax.barh(names, numbers, color=colours)
    ax.set_xlabel(xlabel)
    model = document.get("model") or {}
    last = (document.get("event_time") or {}).get("last") or "n/a"
    ax.set_title(f"{document.get('name', '')}\n{model.get('kind', '?')}, events up to {last}", fontsize="medium")
    ax.grid(axis="x", alpha=0.3)
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _delta(a: Any, b: Any, digits: int = 4) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        change = b - a
        if isinstance(a, int) and isinstance(b, int):
            return f"{_num(a):>12} -> {_num(b):>12}  ({change:+,})"
        return f"{_num(a, digits):>12} -> {_num(b, digits):>12}  ({change:+.{digits}f})"
    return f"{_num(a):>12} -> {_num(b):>12}"


def diff_exports(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any], top: int = 15) -> str:
    """What changed from export A to export B, as plain text.

    Quality, counts, the weights or importances that moved most, features present in only
    one of them, and changed hyper-parameters or settings.
    """
    lines = [f"A: {doc_a.get('name', '?')}", f"B: {doc_b.get('name', '?')}", ""]
    ta, tb = doc_a.get("event_time") or {}, doc_b.get("event_time") or {}
    lines += _section("event time", [("last event", f"{ta.get('last') or 'n/a'} -> {tb.get('last') or 'n/a'}"),
                                     ("labels learned to", f"{ta.get('built_to') or 'n/a'} -> "
                                                           f"{tb.get('built_to') or 'n/a'}")])
    qa, qb = doc_a.get("quality") or {}, doc_b.get("quality") or {}
    lines += _section("quality on the recent labelled window",
                      [(label, _delta(qa.get(k), qb.get(k))) for k, label in (
                          ("average_precision", "average precision"), ("auc_roc", "AUC ROC"),
                          ("window_labels", "labels"), ("window_frauds", "frauds"))])
    ca, cb = doc_a.get("counts") or {}, doc_b.get("counts") or {}
    lines += _section("counts", [(k.replace("_", " "), _delta(ca.get(k), cb.get(k))) for k in {**ca, **cb}])
    lines += _settings_changes(doc_a, doc_b)
    lines += _value_changes(doc_a, doc_b, top)
    fa, fb = list(doc_a.get("features") or []), list(doc_b.get("features") or [])
    only_a, only_b = [f for f in fa if f not in fb], [f for f in fb if f not in fa]
    if only_a or only_b:
        lines += _section("features in only one export", [("only in A", ", ".join(only_a) or "-"),
                                                          ("only in B", ", ".join(only_b) or "-")])
    return "\n".join(lines).rstrip() + "\n"


def _settings_changes(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any]) -> list[str]:
    ma, mb = doc_a.get("model") or {}, doc_b.get("model") or {}
    rows = []
    for k in ("kind", "name"):
        if ma.get(k) != mb.get(k):
            rows.append((f"model {k}", f"{ma.get(k)} -> {mb.get(k)}"))
    pa, pb = ma.get("hyper_parameters") or {}, mb.get("hyper_parameters") or {}
    for k in {**pa, **pb}:
        if pa.get(k) != pb.get(k):
            rows.append((k, f"{_num(pa.get(k))} -> {_num(pb.get(k))}"))
    for k in ("threshold", "negative_sampling", "settings_fingerprint", "code_version"):
        if doc_a.get(k) != doc_b.get(k):
            before, after = _num(doc_a.get(k)) or "(none)", _num(doc_b.get(k)) or "(none)"
            rows.append((k.replace("_", " "), f"{before} -> {after}"))
    if "intercept" in ma or "intercept" in mb:
        if ma.get("intercept") != mb.get("intercept"):
            rows.append(("intercept", _delta(ma.get("intercept"), mb.get("intercept"))))
    return _section("hyper-parameters and settings", rows or [("unchanged", "")])


def _value_changes(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any], top: int) -> list[str]:
    field_a, va = model_values(doc_a)
    field_b, vb = model_values(doc_b)
    field = field_b or field_a
    if not field:
        return ["no weights or feature importances to compare", ""]
    if field_a and field_b and field_a != field_b:
        return [f"A has {field_a.replace('_', ' ')}, B has {field_b.replace('_', ' ')}: not comparable", ""]
    names = list(dict.fromkeys([*va, *vb]))
    moved = sorted(names, key=lambda n: (-abs(vb.get(n, 0.0) - va.get(n, 0.0)), n))[:top]
    label = max((len(n) for n in moved), default=7)
    pct = field == "feature_importances"
    lines = [f"{field.replace('_', ' ')} that moved most (top {len(moved)})",
             f"  {'feature':<{label}}  {'A':>9}  {'B':>9}  {'change':>9}"]
    for n in moved:
        a, b = va.get(n), vb.get(n)
        fmt = (lambda v: "-" if v is None else f"{v:.1%}") if pct else (lambda v: "-" if v is None else f"{v:+.4f}")
        change = (b or 0.0) - (a or 0.0)
        flag = "  sign flipped" if a is not None and b is not None and a * b < 0 else ""
        lines.append(f"  {n:<{label}}  {fmt(a):>9}  {fmt(b):>9}  "
                     f"{(f'{change:+.1%}' if pct else f'{change:+.4f}'):>9}{flag}")
    return [*lines, ""]
