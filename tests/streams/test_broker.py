import socket

from fleetcloak.streams.broker import EmbeddedBroker


def test_embedded_broker_starts_answers_and_stops():
    b = EmbeddedBroker().start()
    try:
        with socket.create_connection((b.host, b.port), timeout=2):
            pass
    finally:
        b.stop()
    try:
        socket.create_connection((b.host, b.port), timeout=1).close()
        still_listening = True
    except OSError:
        still_listening = False
    assert not still_listening


def test_tansu_is_recognised_by_its_cluster_id():
    from fleetcloak.streams.broker import is_tansu

    assert is_tansu("tansu_cluster")
    assert not is_tansu("xTN8tH1gWM-GUGBFrup4jA") and not is_tansu(None)


def test_a_killed_parent_leaves_no_broker_behind(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("from fleetcloak.streams.broker import EmbeddedBroker\n"
              "b = EmbeddedBroker().start(); print(b.port, flush=True)\n"
              "import time; time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    port = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return
        time.sleep(0.1)
    raise AssertionError("the broker outlived its SIGKILLed parent")
