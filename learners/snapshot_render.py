"""Signed model exports, for people: a text page, a listing, a diff and a bar chart.

Everything here reads an export's JSON document (or :func:`learners.snapshot_format.list_exports`
summaries) and returns text or writes a PNG; nothing verifies or loads a model (that is
:mod:`learners.snapshot_format`). A document shown here is untrusted unless it was verified.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from learners.snapshot_format import SnapshotError

__all__ = ["diff_exports", "model_values", "plot_export", "render_list", "render_show"]


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


def render_list(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per export summary (:func:`learners.snapshot_format.list_exports`), as a table."""
    header = ("name", "model", "last event", "labels learned", "frauds", "AP", "AUC", "signed")
    table = [header]
    for s in rows:
        if "error" in s:
            table.append((s["name"], "-", "-", "-", "-", "-", "-", s["error"]))
            continue
        table.append((s["name"], s["kind"] or "?", s["last"] or "n/a", _num(s["labels_learned"]),
                      _num(s["frauds_learned"]), _num(s["average_precision"], 3),
                      _num(s["auc_roc"], 3), f"key {s['key_id']}" if s["signed"] else "UNSIGNED"))
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    right = {3, 4, 5, 6}
    return "".join("  ".join(f"{cell:>{w}}" if i in right else f"{cell:<{w}}"
                             for i, (cell, w) in enumerate(zip(map(str, row), widths))).rstrip() + "\n"
                   for row in table)


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
