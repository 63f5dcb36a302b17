"""Prometheus metrics and the accounting of every record's fate.

Labels are low-cardinality names chosen by fleetcloak: route, reason, rule, tenant slug,
topic and partition number. Never an IMEI, a driver id, a pseudonym or a key: a metric
label is an identifier store nobody audits.

Each worker owns a CollectorRegistry (not the process-global one), so several loops can
run in one process (tests, benches) without their counters colliding.
"""
from __future__ import annotations

import logging
from collections import Counter

from prometheus_client import CollectorRegistry, Counter as PCounter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from fleetcloak.streams.seam import Counts

log = logging.getLogger(__name__)

__all__ = ["WorkerMetrics", "CONTENT_TYPE_LATEST"]


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # Accounting, in the pipeline's unit (records): in = forwarded + deadlettered + dropped.
        self.records_in = PCounter("fleetcloak_records_in", "records entering the pipeline", registry=r)
        self.records_forwarded = PCounter("fleetcloak_records_forwarded", "records forwarded, by route and tenant",
                                          ["route", "tenant"], registry=r)
        self.records_deadlettered = PCounter("fleetcloak_records_deadlettered", "records dead-lettered, by reason",
                                             ["reason"], registry=r)
        self.records_dropped = PCounter("fleetcloak_records_dropped", "records dropped by a named rule",
                                        ["rule", "tenant"], registry=r)
        self.records_copied = PCounter("fleetcloak_records_copied",
                                       "extra copies of forwarded records on a second route (outside the identity)",
                                       ["route", "tenant"], registry=r)
        self.records_skipped = PCounter("fleetcloak_records_analytics_skipped",
                                        "forwarded records kept off the analytics route, by rule (outside the identity)",
                                        ["rule", "tenant"], registry=r)
        self.accounting_imbalance = PCounter("fleetcloak_accounting_imbalance_batches",
                                             "batches whose counts did not balance (a pipeline bug)", registry=r)
        # Transport, in Kafka messages.
        self.messages_consumed = PCounter("fleetcloak_messages_consumed", "raw messages consumed", registry=r)
        self.messages_produced = PCounter("fleetcloak_messages_produced", "output messages acknowledged by the broker",
                                          registry=r)
        self.batches = PCounter("fleetcloak_batches", "batches processed, delivered and committed", registry=r)
        self.batch_seconds = Histogram("fleetcloak_batch_seconds", "process + deliver + commit time per batch",
                                       buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                       registry=r)
        self.commit_failures = PCounter("fleetcloak_commit_failures",
                                        "commits refused after a rebalance (outputs delivered; records will be redelivered)",
                                        registry=r)
        self.revoked_dropped = PCounter("fleetcloak_revoked_records_dropped",
                                        "fetched records left unprocessed because their partition was revoked", registry=r)
        self.pipeline_builds = PCounter("fleetcloak_pipeline_builds", "pipeline (re)builds from the control plane",
                                        ["outcome"], registry=r)
        self.lag = Gauge("fleetcloak_consumer_lag", "high-watermark minus next offset, per owned partition",
                         ["topic", "partition"], registry=r)
        self.up = Gauge("fleetcloak_worker_up", "1 while the delivery loop runs", registry=r)
        self.totals = Counts()
        self.listeners: list = []  # called with each delivered batch's Counts (e.g. the drop auditor)

    def account(self, counts: Counts) -> bool:
        """Add a delivered batch's counts; return whether they balance."""
        self.totals.add(counts)
        for listener in self.listeners:
            listener(counts)
        self.records_in.inc(counts.received)
        for (route, tenant), n in counts.forwarded.items():
            self.records_forwarded.labels(route, tenant).inc(n)
        for reason, n in counts.deadlettered.items():
            self.records_deadlettered.labels(reason).inc(n)
        for (rule, tenant), n in counts.dropped.items():
            self.records_dropped.labels(rule, tenant).inc(n)
        for (route, tenant), n in counts.copies.items():
            self.records_copied.labels(route, tenant).inc(n)
        for (rule, tenant), n in counts.skipped.items():
            self.records_skipped.labels(rule, tenant).inc(n)
        if not counts.balanced():
            self.accounting_imbalance.inc()
            return False
        return True

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def summary_line(totals: Counts, consumed: int, produced: int, seconds: float, busy: float | None = None) -> str:
    """One line for the log at shutdown: the accounting and whether it balances."""
    def fmt(counter: Counter) -> str:
        items = sorted(((("/".join(k) if isinstance(k, tuple) else k).strip("/") or "-", v)
                        for k, v in counter.items()), key=lambda kv: -kv[1])
        return "{" + ", ".join(f"{k}={v}" for k, v in items) + "}"

    balance = "balanced" if totals.balanced() else f"IMBALANCED by {totals.received - totals.accounted()}"
    busy = seconds if busy is None else busy
    rate = consumed / busy if busy > 0 else 0.0
    return (f"summary: messages consumed={consumed} produced={produced} in {seconds:.1f}s, "
            f"{busy:.2f}s of it in batches ({rate:,.0f} msgs/s while busy); "
            f"records in={totals.received} forwarded={sum(totals.forwarded.values())} {fmt(totals.forwarded)} "
            f"deadlettered={sum(totals.deadlettered.values())} {fmt(totals.deadlettered)} "
            f"dropped={sum(totals.dropped.values())} {fmt(totals.dropped)}; {balance}")
