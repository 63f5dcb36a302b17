"""The worker's Faust app keeps the log level asked for (no DEBUG root behind a spinner)."""
from __future__ import annotations

import logging

import faust
import pytest

from fleetcloak.streams.app import QuietWorker


@pytest.fixture
def restored_root_logger():
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    yield root
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]


@pytest.mark.parametrize("level", ["warning", "error", "info"])
def test_the_root_logger_keeps_the_level_asked_for(restored_root_logger, level):
    # faust.Worker at warning/error sets the root to DEBUG for its spinner handler: every
    # debug call of aiokafka in the hot path then built a LogRecord to throw away
    app = faust.App("fleetcloak-log-test", broker="kafka://127.0.0.1:1")
    worker = QuietWorker(app, loglevel=level, quiet=True, redirect_stdouts=False)
    worker._setup_logging()
    root = restored_root_logger
    assert root.level == logging.getLevelName(level.upper())
    assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
    assert [type(h).__name__ for h in root.handlers] == ["StreamHandler"]
    assert worker.spinner is None
