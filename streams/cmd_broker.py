"""`fleetcloak broker [--port P]`: run the embedded Tansu broker until SIGTERM/SIGINT.

Prints the bootstrap address as the only line on stdout (so a script can do
`BROKER=$(fleetcloak broker & ...)` or read the first line), and a human line on stderr.
"""
from __future__ import annotations

import signal
import sys
import threading


def add_arguments(p) -> None:
    p.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--log", default=None, help="write Tansu's own log to this file")


def run(args) -> int:
    from pathlib import Path

    from fleetcloak.streams.broker import BrokerError, EmbeddedBroker

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    broker = EmbeddedBroker(port=args.port, host=args.host, log_path=Path(args.log) if args.log else None)
    try:
        try:
            broker.start()
        except BrokerError as exc:
            print(f"fleetcloak broker: {exc}", file=sys.stderr)
            return 1
        print(broker.bootstrap, flush=True)
        print(f"fleetcloak broker: Tansu (memory storage, nothing kept across restarts) on {broker.bootstrap}; "
              "stop with Ctrl-C or SIGTERM", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            if broker._proc is None or broker._proc.poll() is not None:
                print("fleetcloak broker: tansu exited unexpectedly", file=sys.stderr)
                return 1
        print(f"fleetcloak broker: stopping ({signal.Signals(received[0]).name})", file=sys.stderr, flush=True)
        return 0
    finally:
        broker.stop()
        for s, h in previous.items():
            signal.signal(s, h)
