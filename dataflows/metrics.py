"""Prometheus metrics and health endpoints of the flow (``FRAUDFLOW_METRICS_PORT``).

One HTTP server per process serves:

* ``GET /metrics`` — Prometheus text: the flow's metrics below, plus what bytewax and
  prometheus_client register globally (e.g. ``bytewax_kafka_consumer_lag``);
* ``GET /healthz`` — liveness: 200 while the input loop has polled recently (it polls even
  when the topics are quiet), 503 once it has been silent for ``liveness_timeout_s``;
* ``GET /readyz`` — readiness: 200 once the dataflow's input is running;
* ``POST /snapshots`` — ask every model shard of this process to export a snapshot now.

The metrics are read from :class:`dataflows.progress.RunStats` when scraped, so serving them
costs the hot path nothing but a histogram bucket increment per score.

==========================================  =====================================================
metric                                      meaning
==========================================  =====================================================
fraudflow_transactions_scored_total         transactions scored
fraudflow_labels_received_total             labels that reached their model shard
fraudflow_labels_learned_total{label}       labels the model learned from (fraud / legitimate);
                                            one shard's count when every shard learns every
                                            example (FRAUDFLOW_SHARD_EXAMPLES=all)
fraudflow_dead_letters_total{reason}        rejected input, by reason category
fraudflow_alerts_total                      alerts emitted
fraudflow_alerts_suppressed_total           alert candidates folded into an open alert (cool-down)
fraudflow_alerts_confirmed_total            alerts whose transaction a fraud label confirmed
fraudflow_feedback_total{kind}              analysts' verdicts joined (verdicts), later labels for
                                            an answered transaction dropped (labels_duplicate) or
                                            learned as a correction (labels_overturning_verdict);
                                            verdict examples learned at the label feed's time, in
                                            the first FRAUDFLOW_VERDICT_WARMUP_DAYS (verdicts_deferred)
fraudflow_score                             histogram of scores
fraudflow_pending_transactions              transactions whose features await their label
fraudflow_event_time_seconds                event time of the newest scored transaction
fraudflow_event_time_lag_seconds            wall clock minus that event time (live streams)
fraudflow_late_transactions_total           scored by an older model than their time allows
fraudflow_late_labels_total                 labels that arrived after their learning step
fraudflow_model_supervised{shard}           1 once the shard scores with the supervised model
fraudflow_model_average_precision{shard}    online quality over the shard's recent labels
fraudflow_model_auc_roc{shard}              online quality over the shard's recent labels
fraudflow_snapshot_exports_total            model snapshots written
fraudflow_rules_active{shard}               enabled rules in the shard's rule book (apply_rules)
fraudflow_rule_matches_total{rule,action}   transactions a rule matched (a tag rule: by its tag)
fraudflow_rule_alerts_total{rule}           alerts emitted carrying the rule (after the cool-down)
fraudflow_rule_allowed_alerts_total         alert candidates that allow rules suppressed
                                            (bad rules: fraudflow_dead_letters_total{reason="bad_rule"})
==========================================  =====================================================
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Optional

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from connectors.sources import last_poll
from dataflows.progress import SCORE_BUCKETS

__all__ = ["FlowCollector", "serve"]

log = logging.getLogger(__name__)


class FlowCollector:
    """A prometheus_client collector reading a RunStats at scrape time."""

    def __init__(self, stats: Any) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        stats = self.stats
        c = stats.counts()
        shards = stats.shard_items()

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield counter("fraudflow_transactions_scored", "Transactions scored", c["transactions_scored"])
        yield counter("fraudflow_labels_received", "Labels that reached a model shard", c["labels_received"])
        learned = CounterMetricFamily("fraudflow_labels_learned", "Labels the model learned from", labels=["label"])
        learned.add_metric(["fraud"], c["frauds_learned"])
        learned.add_metric(["legitimate"], c["labels_learned"] - c["frauds_learned"])
        yield learned
        dead = CounterMetricFamily("fraudflow_dead_letters", "Rejected input, by reason", labels=["reason"])
        for reason, n in sorted(stats.dead_by_reason().items()):
            dead.add_metric([reason], n)
        yield dead
        yield counter("fraudflow_alerts", "Alerts emitted", c["alerts"])
        yield counter("fraudflow_alerts_suppressed", "Alert candidates folded into an open alert",
                      c["alerts_suppressed_by_cooldown"])
        yield counter("fraudflow_alerts_confirmed", "Alerts confirmed by a fraud label", c["alerts_confirmed_fraud"])
        feedback = CounterMetricFamily("fraudflow_feedback", "Analysts' verdicts and the labels that followed them",
                                       labels=["kind"])
        for kind, n in sorted(c["feedback"].items()):
            feedback.add_metric([kind], n)
        yield feedback
        yield counter("fraudflow_late_transactions", "Transactions scored by an older model version than allowed",
                      c["late_transactions"])
        yield counter("fraudflow_late_labels", "Labels that arrived after their learning step", c["late_labels"])
        yield counter("fraudflow_snapshot_exports", "Model snapshots written", c["snapshot_exports"])
        buckets, total, count = stats.score_histogram()
        hist = HistogramMetricFamily("fraudflow_score", "Scores of transactions")
        cumulative, acc = [], 0
        for bound, n in zip(SCORE_BUCKETS, buckets):
            acc += n
            cumulative.append((str(bound), acc))
        cumulative.append(("+Inf", count))
        hist.add_metric([], cumulative, sum_value=total)
        yield hist
        yield GaugeMetricFamily("fraudflow_pending_transactions", "Transactions awaiting their label",
                                value=c["pending_transactions"])
        if c["event_ts"] is not None:
            yield GaugeMetricFamily("fraudflow_event_time_seconds", "Event time of the newest scored transaction",
                                    value=c["event_ts"])
            yield GaugeMetricFamily("fraudflow_event_time_lag_seconds", "Wall clock minus the newest event time",
                                    value=time.time() - c["event_ts"])
        supervised = GaugeMetricFamily("fraudflow_model_supervised", "1 once the shard uses the supervised model",
                                       labels=["shard"])
        ap = GaugeMetricFamily("fraudflow_model_average_precision", "Online AP over recent labels", labels=["shard"])
        auc = GaugeMetricFamily("fraudflow_model_auc_roc", "Online AUC over recent labels", labels=["shard"])
        for name, shard in shards:
            supervised.add_metric([name], 1.0 if shard.supervised else 0.0)
            quality = shard.online_quality()
            if quality["average_precision"] is not None:
                ap.add_metric([name], quality["average_precision"])
            if quality["auc_roc"] is not None:
                auc.add_metric([name], quality["auc_roc"])
        yield supervised
        yield ap
        yield auc
        books = GaugeMetricFamily("fraudflow_rules_active", "Enabled rules in the shard's rule book", labels=["shard"])
        for name, active in stats.rule_books():
            books.add_metric([name], active)
        yield books
        matches, rule_alerts = stats.rule_counts()
        matched = CounterMetricFamily("fraudflow_rule_matches", "Transactions a rule matched", labels=["rule", "action"])
        for (rule, action), n in sorted(matches.items()):
            matched.add_metric([rule, action], n)
        yield matched
        alerted = CounterMetricFamily("fraudflow_rule_alerts", "Alerts emitted carrying the rule", labels=["rule"])
        for rule, n in sorted(rule_alerts.items()):
            alerted.add_metric([rule], n)
        yield alerted
        yield counter("fraudflow_rule_allowed_alerts", "Alert candidates that allow rules suppressed",
                      c["rule_allowed"])


class _State:
    server: Optional[ThreadingHTTPServer] = None
    collector: Optional[FlowCollector] = None
    on_demand: list[Callable[[], None]] = []
    liveness_timeout_s = 300.0


def _handler() -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(REGISTRY), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/healthz":
                polled = last_poll()
                idle = time.monotonic() - polled if polled else None
                ok = polled == 0.0 or (idle is not None and idle < _State.liveness_timeout_s)
                self._reply(200 if ok else 503, b"ok\n" if ok else f"input silent for {idle:.0f}s\n".encode())
            elif path == "/readyz":
                ready = last_poll() > 0.0
                self._reply(200 if ready else 503, b"ready\n" if ready else b"starting\n")
            else:
                self._reply(404, b"not found\n")

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?", 1)[0] == "/snapshots":
                for request in list(_State.on_demand):
                    request()
                self._reply(202, b"snapshot requested\n")
            else:
                self._reply(404, b"not found\n")

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("metrics http: " + fmt, *args)

    return Handler


def serve(stats: Any, port: int, host: str = "0.0.0.0", liveness_timeout_s: float = 300.0,
          request_snapshot: Optional[Callable[[], None]] = None) -> Optional[int]:
    """Register ``stats`` and start the process's HTTP server once; returns the bound port."""
    if _State.collector is not None:  # a new flow in this process (tests) replaces the old one
        REGISTRY.unregister(_State.collector)
    _State.collector = FlowCollector(stats)
    REGISTRY.register(_State.collector)
    _State.on_demand = [request_snapshot] if request_snapshot is not None else []
    _State.liveness_timeout_s = liveness_timeout_s
    if _State.server is None:
        server = ThreadingHTTPServer((host, port), _handler())
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="fraudflow-metrics", daemon=True).start()
        _State.server = server
        log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", host, server.server_address[1])
    return _State.server.server_address[1]
