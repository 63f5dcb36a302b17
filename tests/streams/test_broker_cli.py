"""`fleetcloak broker`: prints the bootstrap, answers, stops Tansu on SIGTERM/SIGINT."""
import signal
import socket
import subprocess
import sys

import pytest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_broker_command_prints_bootstrap_and_stops_cleanly(sig):
    proc = subprocess.Popen([sys.executable, "-m", "fleetcloak.cli", "broker"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        host, port = line.rsplit(":", 1)
        assert host == "127.0.0.1"
        socket.create_connection((host, int(port)), timeout=2).close()
        proc.send_signal(sig)
        assert proc.wait(15) == 0
        assert proc.stdout.read() == ""  # the address is the only line on stdout
        assert "stopping" in proc.stderr.read()
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=1).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
