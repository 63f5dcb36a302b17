"""The seam and the accounting, without a broker."""
from fleetcloak.streams.metrics import WorkerMetrics, summary_line
from fleetcloak.streams.seam import ControlSnapshot, Counts, Message, Pipeline, as_pipeline, passthrough_factory


def test_passthrough_copies_and_accounts():
    pipeline = as_pipeline(passthrough_factory("out")(ControlSnapshot({}, {}, {})))
    batch = [Message(b"v%d" % i, key=b"k", headers=[("h", b"1")], offset=i) for i in range(5)]
    result = pipeline.process(batch)
    assert result.outputs == [("out", b"k", b"v%d" % i, [("h", b"1")]) for i in range(5)]
    assert result.counts.received == 5 and result.counts.balanced()
    assert pipeline.topics[0].name == "out"


def test_counts_identity_and_metrics_labels():
    c = Counts(received=10)
    c.forwarded[("processor", "acme")] = 6
    c.copies[("controller", "acme")] = 4          # analytics copies stay outside the identity
    c.deadlettered["bad_crc"] = 1
    c.dropped[("too_old", "acme")] = 2
    assert not c.balanced() and c.accounted() == 9
    c.dropped[("future", "acme")] = 1
    assert c.balanced()
    m = WorkerMetrics()
    assert m.account(c)
    text = m.exposition().decode()
    assert 'fleetcloak_records_forwarded_total{route="processor",tenant="acme"} 6.0' in text
    assert 'fleetcloak_records_deadlettered_total{reason="bad_crc"} 1.0' in text
    assert 'fleetcloak_records_dropped_total{rule="too_old",tenant="acme"} 2.0' in text
    assert not m.account(Counts(received=1))      # an unbalanced batch is flagged
    assert "fleetcloak_accounting_imbalance_batches_total 1.0" in m.exposition().decode()
    line = summary_line(m.totals, 11, 10, 2.0, 0.5)
    assert "IMBALANCED by 1" in line and "forwarded=6" in line and "too_old/acme=2" in line


def test_pipeline_without_topics_is_wrapped():
    fn = lambda batch: None  # noqa: E731
    assert as_pipeline(fn).process is fn
    p = Pipeline(fn)
    assert as_pipeline(p) is p
