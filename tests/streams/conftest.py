"""Fixtures for the delivery tests: `fleetcloak worker` as a real subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest


class WorkerProcess:
    """A `fleetcloak worker` subprocess with its /health endpoint."""

    def __init__(self, broker: str, log_path, *args: str) -> None:
        from fleetcloak.streams.broker import free_port

        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "wb")
        cmd = [sys.executable, "-m", "fleetcloak.cli", "worker", "--broker", broker,
               "--metrics-port", str(self.port), "--metrics-host", "127.0.0.1", "-l", "info", *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read())
        except OSError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.read().decode()

    def wait_health(self, predicate, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            h = self.health()
            if h is not None and predicate(h):
                return h
            time.sleep(0.05)
        raise AssertionError(f"worker health never matched; last {self.health()}\n{self.log()[-3000:]}")

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        self._log.flush()
        return open(self.log_path, "rb").read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def worker_process(broker, tmp_path):
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        w = WorkerProcess(broker, tmp_path / f"worker{len(started)}.log", *args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


@pytest.fixture
def wait_until():
    def wait(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}")
    return wait
